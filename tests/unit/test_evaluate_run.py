"""``evaluate()`` end to end without Ray on a tiny three-file task and a tiny random model: a label
column that cannot be fitted is skipped with its reason (console, report.md, summary.json), the
recorded config, the timing table, and no encoder kept loaded afterwards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate import evaluate
from dmf_ray.pipelines.evaluate import features as _features
from dmf_ray.pipelines.evaluate.config import EvaluateConfig

RINGS = ["c1ccccc1", "c1ccncc1", "C1CCCCC1", "c1ccsc1", "C1CCNCC1", "c1ccoc1", "C1CCOC1", "c1ccc2ccccc2c1"]
SUBST = ["C", "O", "N", "CC", "Cl", "F", "OC"]


@pytest.fixture(scope="module")
def task_and_model(tmp_path_factory):
    from dmf_ray.testing import save_random_model

    root = tmp_path_factory.mktemp("evaluate-run")
    smiles = [f"{ring}{sub}" for ring in RINGS for sub in SUBST]  # 56 molecules
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, len(smiles))
    b = rng.integers(0, 2, len(smiles))
    parts = {"train": range(0, 36), "valid": range(36, 46), "test": range(46, 56)}
    for split, rows in parts.items():
        lines = ["smiles,a,b"]
        for i in rows:
            lines.append(f"{smiles[i]},{a[i] if i > 37 else i % 2},{0 if split == 'train' else b[i] if i < 50 else i % 2}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    model = save_random_model(root / "model", smiles[:36], ["ecfp", "maccs"], latent_dim=8)
    return root, model


def test_an_unfittable_label_column_is_skipped_and_explained(task_and_model, tmp_path):
    # Review #2: column b has only class 0 in train; the task is evaluated on a, b is explained.
    root, model = task_and_model
    files = ",".join(str(root / f"{s}.csv") for s in ("train", "valid", "test"))
    config = EvaluateConfig(model=model, tasks=[f"toy={files}"], out=str(tmp_path / "out"), seeds=1,
                            n_estimators=10, n_jobs=1, workers=1, paper_protocol=False, robustness="none",
                            finetune=True, finetune_epochs=1, mask_rates=[0.0])
    lines: list[str] = []
    result = evaluate(config, log=lines.append)
    why = "only class 0 in train: not fitted, left out of every row's mean"
    assert f"[toy] not computed: label b: {why}" in lines
    summary = json.loads((result.out / "summary.json").read_text())["tasks"]["toy"]
    assert summary["not_computed"]["label b"] == why
    assert all(summary["rows"][row]["mean"] is not None for row in ("ecfp", "maccs", "ecfp+maccs", "fusion",
                                                                     "fusion-finetuned"))
    report = (result.out / "report.md").read_text()
    assert "label b" in report and why in report
    # Review #14: the timing table has the fine-tuning column.
    header = next(line for line in report.splitlines() if line.startswith("| task | prepare"))
    row = next(line for line in report.splitlines() if line.startswith("| toy | ") and line.count("|") == 7)
    assert header == "| task | prepare | table1 | finetune | robustness | reconstruction_attention |"
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells[2].endswith(" s") and cells[3] == "–"  # finetune ran, robustness (refit) did not
    # Review #1: evaluation.json records the redacted config.
    details = json.loads((result.out / "evaluation.json").read_text())
    assert details["config"] == json.loads(json.dumps(config.recorded()))
    # Review #14: no encoder stays loaded in this process once evaluate() has returned.
    assert _features._ENCODERS == {}
