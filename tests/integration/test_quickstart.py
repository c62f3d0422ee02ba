"""`dmf quickstart`, the README's main job: featurize -> train -> embed RDKit's own molecules,
offline, run as a user runs it (its own process and its own local Ray, output redirected)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dmf_ray.artifact import read_model_config
from dmf_ray.encoders import DEFAULT_ENCODERS
from dmf_ray.store import EmbeddingStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# What Ray prints when it is let onto the terminal: progress tables, worker-line prefixes,
# core-worker log lines, deprecation warnings.
RAY_NOISE = re.compile(r"Running Dataset|Total Progress|logging_progress|SplitCoordinator|\(\w+ pid=\d+\)|"
                       r"core_worker\.cc|DeprecationWarning|streaming_executor")


def run_dmf(*args: str, timeout: float = 900, ray_tmpdir: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if ray_tmpdir:
        env["RAY_TMPDIR"] = ray_tmpdir  # where the command's own Ray keeps its session and logs
    return subprocess.run([sys.executable, "-m", "dmf_ray.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_quickstart_is_quiet_and_accounts_for_every_molecule_rdkit_ships(tmp_path, ray_session):
    out = tmp_path / "dmf-quickstart"
    # A short path: Ray's socket paths live under it (107-byte limit).
    ray_tmp = tempfile.mkdtemp(prefix="dmfq", dir="/tmp")
    # The test session's Ray (ray_session) is a second local Ray on this host while it runs.
    done = run_dmf("quickstart", "--out", str(out), "--epochs", "1", "--num-cpus", "2", ray_tmpdir=ray_tmp)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # Ray Train's placement-group cleaner was told its cluster: with another Ray on the host it
    # used to raise "Found multiple active Ray instances" and stop watching.
    cleaner_errors = [str(p) for p in Path(ray_tmp).rglob("*.err") if "multiple active Ray" in p.read_text(errors="replace")]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not cleaner_errors, cleaner_errors

    # Only dmf's own lines: no ERROR line, no Ray progress table or worker lines, no ANSI codes
    # (the output is redirected here, as in a log file or CI).
    assert "ERROR" not in output, output
    assert not RAY_NOISE.search(output), output
    assert "\x1b[" not in output, repr(output)
    for marker in ("[1/3] featurize", "[2/3] train", "[3/3] embed", "done:", "epochs 1/1"):
        assert marker in output, output
    assert len(output.splitlines()) < 30, output

    info = EmbeddingStore.open(str(out / "store")).info()
    assert info["inputs"] > 4_900 and info["inputs"] == info["stored_rows"] + info["failed"]
    # The fingerprints and descriptors, and ChemNet: a pretrained neural modality shipped in fcd's wheel.
    assert set(info["modalities"]) == {*DEFAULT_ENCODERS, "chemnet"}
    assert all(m["count"] > 0.95 * info["molecules"] for m in info["modalities"].values())

    card = read_model_config(str(out / "model"))
    assert sorted(card["fusion"]["modalities"]) == sorted([*DEFAULT_ENCODERS, "chemnet"])

    # Every input row ends as a fused vector or as a row naming why it has none.
    fused = pq.read_table(out / "fused.parquet")
    failed = fused.filter(fused["error"].is_valid())
    assert fused.num_rows == info["inputs"] and failed.num_rows == info["failed"]
    assert all(failed["error"].to_pylist())

    # Other settings over a finished quickstart: refused at once (before Ray starts), one line.
    again = run_dmf("quickstart", "--out", str(out), "--epochs", "2", timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr
