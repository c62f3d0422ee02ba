"""Installing the optional extras must never change RDKit (molecule ids hang on its canonical
SMILES) nor torch. Two dry runs of pip's resolver:

- into this environment: the extras must want neither a new RDKit nor a new torch;
- from scratch (``--ignore-installed``): with the [graph] extra the resolver must pick the RDKit
  it picks for RDKit alone. (Chemprop 2.3 fails this: its helper cuik-molmaker-pin pins an older
  RDKit, which is why the extra caps Chemprop below 2.3.) The first check alone could not fail
  here, where the extra is installed already and satisfied requirements are left as they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dry_run(tmp_path, *requirements: str, fresh: bool = False) -> dict[str, str]:
    report = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report)]
    if fresh:
        # From scratch, but with the installed torch's version: the resolver then never fetches
        # another torch (a CUDA build is gigabytes) and answers for this torch.
        import torch

        constraints = tmp_path / "constraints.txt"
        constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
        command += ["--ignore-installed", "-c", str(constraints)]
    run = subprocess.run(command + list(requirements),
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        pytest.skip(f"pip could not resolve (no package index here?): {run.stderr.strip()[-300:]}")
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_installing_the_extras_leaves_rdkit_and_torch_as_they_are(tmp_path):
    wanted = dry_run(tmp_path, ".[test,hf,graph]")
    assert "rdkit" not in wanted, f"the extras would change RDKit to {wanted.get('rdkit')}"
    assert "torch" not in wanted, f"the extras would change torch to {wanted.get('torch')}"


@pytest.mark.slow
def test_the_graph_extra_resolves_the_rdkit_that_rdkit_alone_resolves(tmp_path):
    alone = dry_run(tmp_path, "rdkit", fresh=True)["rdkit"]
    with_graph = dry_run(tmp_path, ".[graph]", fresh=True)
    assert with_graph.get("rdkit") == alone, f"[graph] picks RDKit {with_graph.get('rdkit')}, RDKit alone {alone}"
    assert "cuik-molmaker-pin" not in with_graph
