"""End to end through the standard tools: `ray start --head`, `ray job submit`, `ray stop`.

A separate head (own ports, own temp dir) next to the session's Ray; stopped even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from dmf_ray.store import INPUTS_TABLE, EmbeddingStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """`ray start --head` on free ports; every call runs the real `ray` CLI."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="dmfe2e-", dir="/tmp")  # short: Ray's socket paths
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # Clients need the token the head writes (Ray 2.60 starts local clusters with token auth).
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": self.address}
        self.env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)

    def start(self) -> None:
        subprocess.run(
            [
                str(BIN / "ray"), "start", "--head", "--num-cpus=2", f"--port={self.port}",
                "--node-ip-address=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1", f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                "--disable-usage-stats",
            ],
            check=True, env={**self.env, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=120,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.ray("job", "list", check=False).returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError("Ray head came up but its job API did not")

    def ray(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout, cwd=REPO)

    def submit(self, submission_id: str, *entrypoint: str, wait: bool = True) -> subprocess.CompletedProcess:
        args = ["job", "submit", f"--submission-id={submission_id}", "--working-dir", str(REPO)]
        if not wait:
            args.append("--no-wait")
        return self.ray(*args, "--", *entrypoint, check=False)

    def status(self, submission_id: str) -> str:
        done = self.ray("job", "status", submission_id, check=False)
        out = (done.stdout + done.stderr).lower()
        for word in ("succeeded", "failed", "stopped", "running", "pending"):
            if f"' {word}" in out or f"': {word}" in out:
                return word.upper()
        return out

    def wait(self, submission_id: str, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.status(submission_id)
            if state in {"SUCCEEDED", "FAILED", "STOPPED"}:
                return state
            time.sleep(2)
        raise TimeoutError(f"job {submission_id} still {self.status(submission_id)}")

    def logs(self, submission_id: str) -> str:
        return self.ray("job", "logs", submission_id, check=False).stdout

    def worker_processes(self) -> list[psutil.Process]:
        """Ray Data's task and actor workers of this head (found under its raylet, by its temp
        dir); not the job supervisor or other system actors."""
        raylets = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and "raylet" in p.info["cmdline"][0] and any(self.temp_dir in a for a in p.info["cmdline"])]
        workers = []
        for raylet in raylets:
            for child in raylet.children(recursive=True):
                try:
                    if child.name().startswith(("ray::MapWorker", "ray::MapBatches")):
                        workers.append(child)
                except psutil.NoSuchProcess:
                    pass
        return workers

    def stop(self) -> None:
        # `ray stop` would stop every Ray on the machine (the session's too); stop ours by its processes.
        procs = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and any(self.temp_dir in a for a in p.info["cmdline"])]
        for p in procs:
            for child in p.children(recursive=True):
                _kill(child)
        for p in procs:
            _kill(p)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill(proc: psutil.Process) -> None:
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


@pytest.fixture(scope="module")
def head():
    cluster = LocalHead()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def sample_library(tmp_path: Path, n: int) -> Path:
    import rdkit

    lines = (Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi").read_text().splitlines()[:n]
    path = tmp_path / "lib.smi"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_featurize_and_train_jobs_through_ray_job_submit(head, tmp_path):
    lib = sample_library(tmp_path, 600)
    store = tmp_path / "store"
    result = head.submit("dmf-featurize-e2e", "python", "jobs/featurize.py", str(lib), "--store", str(store), "--encoders", "ecfp,maccs")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert head.status("dmf-featurize-e2e") == "SUCCEEDED"
    info = EmbeddingStore.open(str(store)).info()
    assert info["inputs"] == 600 == info["stored_rows"] + info["failed"]
    assert info["modalities"]["ecfp"]["count"] == info["molecules"] > 500
    # Train on that store through a job too, then load the model it wrote.
    model = tmp_path / "model"
    result = head.submit(
        "dmf-train-e2e", "python", "jobs/train.py", "--store", str(store), "--out", str(model),
        "--epochs", "2", "--workers", "1", "--latent-dim", "32", "--batch-size", "128",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from dmf_ray.inference import FusionEmbedder

    embedder = FusionEmbedder(str(model))
    assert embedder.modalities == ["ecfp", "maccs"]
    assert len(embedder.card["metrics"]) and (model / "metrics.jsonl").read_text().count("\n") == 2
    (item,) = embedder.embed_smiles(["CCO"])
    assert item["error"] is None and len(item["embedding"]) == 32

    # The same id is refused by the job server: submission ids are unique.
    again = head.submit("dmf-featurize-e2e", "python", "jobs/featurize.py", "--help")
    assert again.returncode != 0


def test_featurize_job_survives_killed_workers(head, tmp_path):
    lib = sample_library(tmp_path, 3000)
    store = tmp_path / "store"
    job = ["python", "jobs/featurize.py", str(lib), "--store", str(store), "--encoders", "ecfp,maccs,rdkit2d", "--shard-rows", "100"]
    assert head.submit("dmf-featurize-kill", *job, wait=False).returncode == 0
    # Wait until part of the work is committed, then kill every task/actor worker of the job.
    commits = Path(store) / "_commits" / INPUTS_TABLE
    deadline = time.time() + 300
    while time.time() < deadline and len(list(commits.glob("*.json")) if commits.exists() else []) < 3:
        time.sleep(0.5)
    killed = head.worker_processes()
    assert killed, "no worker processes to kill"
    for proc in killed:
        _kill(proc)
    state = head.wait("dmf-featurize-kill")
    if state != "SUCCEEDED":
        # Ray could not recover in-job (e.g. the driver's own worker died): rerunning the same
        # command must finish exactly the missing shards.
        assert head.submit("dmf-featurize-kill-rerun", *job).returncode == 0, head.logs("dmf-featurize-kill-rerun")[-3000:]
    info = EmbeddingStore.open(str(store)).info()
    assert info["inputs"] == 3000 == info["stored_rows"] + info["failed"], json.dumps(info)[:2000]
    assert info["shards"] == 30
    for name in ("ecfp", "maccs", "rdkit2d"):
        ids = EmbeddingStore.open(str(store)).modality_table(name, ["mol_id"]).column("mol_id").to_pylist()
        assert len(ids) == len(set(ids)) == info["molecules"], name
