"""`dmf serve` as a user runs it: a process that starts its own local Ray, answers over HTTP on
127.0.0.1, and on SIGTERM (``kill PID``) or SIGINT to its process group (Ctrl-C in a terminal)
ends within seconds, leaving no process of its cluster behind (dashboard and runtime-env agents
included), no SIGABRT and no error text."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MARKER = "DMF_SERVE_TEST_MARKER"
BAD_TEXT = ("graceful_shutdown failed", "Traceback", "SIGABRT", "Aborted", "core dumped", "ERROR")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    import rdkit

    from dmf_ray.testing import save_random_model

    with open(os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")) as f:
        smiles = [line.split()[0] for line in f][:60]
    # ChemNet (fcd's shipped weights) beside a fingerprint: the served app runs the neural encoder
    # in a deployment of its own, as a user's model with a neural modality does.
    return save_random_model(tmp_path_factory.mktemp("lifecycle") / "model", smiles, ["ecfp", "chemnet"],
                             latent_dim=16, gate_hidden=16, attention_hidden=8, decoder_hidden=16)


# A SMILES longer than ChemNet reads (349 characters): served with ChemNet absent, not failed.
SMILES = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "C" * 360]


def assert_same_as_in_process(model_dir: str, served: list[dict]) -> None:
    import numpy as np

    from dmf_ray.inference import FusionEmbedder

    local = FusionEmbedder(model_dir).embed_smiles(SMILES)
    assert [r["modalities"] for r in served] == [r["modalities"] for r in local]
    assert served[2]["modalities"] == ["ecfp"] and served[2]["error"] is None
    assert list(served[2]["modality_errors"]) == ["chemnet"]  # why ChemNet is absent: too long
    for got, want in zip(served, local):
        np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_processes(marker: str) -> list[str]:
    """Processes (other than this one) whose environment carries ``marker``: the server and every
    process its Ray started, which inherit its environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"{MARKER}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120].decode(errors="replace")
                found.append(f"{entry.name} {command}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def wait_until(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_signal_ends_the_server_and_its_cluster(model_dir, tmp_path, how):
    marker = uuid.uuid4().hex
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH")}
    env.update({MARKER: marker, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    code = "import sys; from dmf_ray.cli import main; sys.exit(main())"
    with open(out, "w") as o, open(err, "w") as e:
        server = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", model_dir, "--port", str(port),
                                   "--max-heavy-atoms", "400"],  # room for the long chain of SMILES
                                  env=env, stdout=o, stderr=e, start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert server.poll() is None, f"server exited early: {err.read_text()[-3000:]}"
            try:
                return requests.get(url + "/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(healthy, 240), "server never became healthy"
        answer = requests.post(url + "/v1/embed", json={"smiles": SMILES}, timeout=60)
        assert answer.status_code == 200, answer.text
        if how == "sigterm":  # once is enough: the served numbers are those of the in-process embedder
            assert_same_as_in_process(model_dir, answer.json()["results"])
        assert marked_processes(marker), "the marker does not reach the server's processes"
        sent = time.monotonic()
        if how == "sigterm":
            server.send_signal(signal.SIGTERM)
        else:  # a terminal sends Ctrl-C's SIGINT to the whole foreground process group
            os.killpg(server.pid, signal.SIGINT)
        rc = server.wait(timeout=60)
        took = time.monotonic() - sent
        gone = wait_until(lambda: not marked_processes(marker), 15)
        left = marked_processes(marker)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        for line in marked_processes(marker):  # never leave our own strays on a shared machine
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass
    text = out.read_text() + err.read_text()
    print(f"{how}: exit {rc} after {took:.1f} s")
    assert rc == 0, text[-3000:]
    assert took < 30, f"stopping took {took:.1f} s"
    assert gone, f"left behind: {left}"
    for bad in BAD_TEXT:
        assert bad not in text, (bad, text[-3000:])
