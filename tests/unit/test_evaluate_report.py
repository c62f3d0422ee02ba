"""Per-task results, their statistics, and the report writer (every file, summary schema, LEAKED rows)."""

import csv
import json
import math

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.protocol import concat_rows, removal_patterns
from dmf_ray.pipelines.evaluate.report import FILES, write_report
from dmf_ray.pipelines.evaluate.results import TaskResult, mean_std, order_rows

MODS = ["ecfp", "maccs", "desc"]


def test_mean_std_and_row_order():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
    assert order_rows(["fusion", "a+b+c", "a+b", "b", "a"]) == ["b", "a", "a+b", "a+b+c", "fusion"]


def _result(task, metric, seeds=3, with_extras=True):
    rng = np.random.default_rng(len(task))
    r = TaskResult(task=task, metric=metric, split="scaffold",
                   invalid_smiles={"train": 3, "valid": 0, "test": 1},
                   n_molecules={"train": 80, "valid": 10, "test": 10}, scaffold_overlap=0)
    rows = MODS + ["+".join(c) for c in concat_rows(MODS)] + ["fusion"]
    for row in rows:
        for seed in range(seeds):
            test = {metric: float(rng.uniform(0.6, 0.9))}
            if metric == "rmse":
                test["mae"] = test["rmse"] * 0.8
            r.add_fit(row, {"test_metric": test[metric], "test": {**test, "n_tasks": 1, "n_tasks_scored": 1,
                                                                 f"{metric}_per_task": [test[metric]]},
                            "params": {"min_samples_leaf": 1, "n_estimators": 100}})
    if with_extras:
        for p in removal_patterns(MODS):
            for seed in range(seeds):
                r.add_robustness(p.name, "fusion", float(rng.uniform(0.5, 0.9)))
                r.add_robustness(p.name, "concat", float(rng.uniform(0.5, 0.9)))
        r.reconstruction_cosine = {m: float(rng.uniform(0.3, 0.9)) for m in MODS}
        r.attention = {"ecfp": 0.48, "maccs": 0.29, "desc": 0.23}
        r.attention_vs_mask_rate = {rate: {"ecfp": 0.5 - rate / 4, "maccs": 0.3, "desc": 0.2 + rate / 4}
                                    for rate in (0.0, 0.2, 0.4, 0.6)}
    return r


def test_write_report_produces_every_file_and_summary_schema(tmp_path):
    results = [_result("bbbp", "roc_auc"), _result("esol", "rmse", seeds=1, with_extras=False)]
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == set(FILES)
    for key, path in paths.items():
        assert path.is_file() and path.stat().st_size > 0, key
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads(paths["summary"].read_text())
    assert set(summary) == {"tasks"} and set(summary["tasks"]) == {"bbbp", "esol"}
    for name, t in summary["tasks"].items():
        assert set(t) == {"metric", "split", "rows", "robustness", "reconstruction_cosine", "attention", "learners",
                          "leaked", "best_row", "paper_protocol", "not_computed"}
        assert t["metric"] in ("roc_auc", "rmse") and t["split"] == "scaffold"
        assert list(t["rows"]) == ["ecfp", "maccs", "desc", "ecfp+maccs", "ecfp+desc", "maccs+desc",
                                   "ecfp+maccs+desc", "fusion"]
        for stats in t["rows"].values():
            assert set(stats) == {"mean", "std"} and all(isinstance(v, float) for v in stats.values())
        for pattern in t["robustness"].values():
            assert set(pattern) == {"fusion", "concat"} and all(isinstance(v, float) for v in pattern.values())
        assert all(isinstance(v, float) for v in t["reconstruction_cosine"].values())
        assert all(isinstance(v, float) for v in t["attention"].values())
    bbbp = summary["tasks"]["bbbp"]
    assert len(bbbp["robustness"]) == 7 and bbbp["attention"]["ecfp"] == 0.48
    assert bbbp["rows"]["fusion"]["mean"] == pytest.approx(np.mean(results[0].rows["fusion"]))
    assert bbbp["rows"]["fusion"]["std"] == pytest.approx(np.std(results[0].rows["fusion"], ddof=1))
    assert summary["tasks"]["esol"]["rows"]["ecfp"]["std"] == 0.0
    assert summary["tasks"]["esol"]["robustness"] == {}

    md = paths["report"].read_text()
    assert "| fusion |" in md and "bbbp (ROC-AUC ↑, scaffold)" in md and "±" in md
    assert "invalid SMILES" in md and "3/0/1" in md and "0 of 10" in md
    for fig in ("figure2", "figure3", "figure4", "figure5"):
        assert FILES[fig] in md
    with open(paths["scores"]) as fh:
        scores = list(csv.DictReader(fh))
    assert len([s for s in scores if s["task"] == "bbbp"]) == 8 * 3
    assert {s["metric"] for s in scores if s["task"] == "esol"} == {"rmse", "mae"}
    with open(paths["robustness"]) as fh:
        assert len(list(csv.DictReader(fh))) == 7 * 2 * 3


def test_nan_scores_become_null_and_bad_input_rejected(tmp_path):
    r = TaskResult(task="t", metric="roc_auc", split="provided", rows={"fusion": [float("nan")]})
    paths = write_report([r], tmp_path)
    assert json.loads(paths["summary"].read_text())["tasks"]["t"]["rows"]["fusion"] == {"mean": None, "std": None}
    with pytest.raises(ValueError, match="metric"):
        TaskResult(task="t", metric="accuracy", split="provided")
    with pytest.raises(ValueError, match="duplicate task"):
        write_report([r, r], tmp_path)
    with pytest.raises(ValueError, match="method"):
        r.add_robustness("-ecfp", "fused", 0.5)


def test_leaked_rows_are_marked_everywhere_and_never_best(tmp_path):
    r = TaskResult(task="bbbp", metric="roc_auc", split="provided")
    for row, value, learner in (("ecfp", 0.80, "rf"), ("chem", 0.95, "logreg"), ("ecfp+chem", 0.93, "xgboost"),
                                ("fusion", 0.90, "mlp")):
        r.add_fit(row, {"test_metric": value, "test": {"roc_auc": value}, "params": {}, "learner": learner})
    r.leaked = {"chem": "encoder 'chem' was trained on BBB_Martins", "ecfp+chem": "same", "fusion": "same"}
    r.paper = {"ecfp": [0.79], "fusion": [0.88]}
    r.not_computed = {"Figure 2": "skipped: --robustness none"}
    assert r.best_row() == "ecfp"  # 0.95 is leaked: left out of "best"
    paths = write_report([r], tmp_path)
    task = json.loads(paths["summary"].read_text())["tasks"]["bbbp"]
    assert task["best_row"] == "ecfp" and set(task["leaked"]) == {"chem", "ecfp+chem", "fusion"}
    assert task["learners"] == {"ecfp": "rf", "chem": "logreg", "ecfp+chem": "xgboost", "fusion": "mlp"}
    assert task["paper_protocol"]["fusion"] == {"mean": 0.88, "std": 0.0}
    assert task["not_computed"] == {"Figure 2": "skipped: --robustness none"}
    md = paths["report"].read_text()
    assert "| chem | 0.950 ± 0.000 · logreg LEAKED |" in md
    assert "| ecfp | **0.800 ± 0.000 · rf** |" in md  # the best non-leaked row in bold
    assert "## Paper protocol: XGBoost on frozen embeddings" in md and "| fusion | 0.880 ± 0.000 LEAKED |" in md
    assert "| bbbp | Figure 2 | skipped: --robustness none |" in md
    with open(paths["table1"]) as fh:
        rows = {row["row"]: row for row in csv.DictReader(fh)}
    assert rows["chem"]["leaked"].startswith("encoder 'chem'") and rows["chem"]["learner"] == "logreg"
    assert rows["ecfp"]["leaked"] == ""
    with open(paths["not_computed"]) as fh:
        assert list(csv.DictReader(fh)) == [{"task": "bbbp", "figure": "Figure 2", "why": "skipped: --robustness none"}]
    empty = write_report([r], tmp_path / "b", paper_reason="xgboost is not installed")
    assert "(not computed: xgboost is not installed)" in empty["report"].read_text()
