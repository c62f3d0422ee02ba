"""Installing the optional extras must never change RDKit (molecule ids hang on its canonical
SMILES) nor torch: pip's resolver, asked for a dry run, must want neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_installing_the_extras_leaves_rdkit_and_torch_as_they_are(tmp_path):
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), ".[test,hf,graph]"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if run.returncode != 0:
        pytest.skip(f"pip could not resolve (no package index here?): {run.stderr.strip()[-300:]}")
    wanted = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert "rdkit" not in wanted, f"the extras would change RDKit to {wanted.get('rdkit')}"
    assert "torch" not in wanted, f"the extras would change torch to {wanted.get('torch')}"
    assert "cuik-molmaker-pin" not in wanted  # chemprop 2.3's helper that pins an older RDKit
