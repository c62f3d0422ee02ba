"""Protocol helpers (concat rows, removal patterns/masks) and the report writer."""

import csv
import json
import math

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.report import (
    FILES,
    TaskResult,
    concat_rows,
    mean_std,
    order_rows,
    removal_mask,
    removal_patterns,
    write_report,
)

MODS = ["ecfp", "maccs", "desc"]


def test_concat_rows_every_combination_of_two_or_more():
    assert concat_rows(MODS) == [
        ("ecfp", "maccs"), ("ecfp", "desc"), ("maccs", "desc"), ("ecfp", "maccs", "desc")
    ]
    assert concat_rows(["a", "b"]) == [("a", "b")]
    assert len(concat_rows(list("abcd"))) == 2**4 - 4 - 1
    with pytest.raises(ValueError, match="duplicate"):
        concat_rows(["a", "a"])
    with pytest.raises(ValueError, match=r"'\+'"):
        concat_rows(["a+b", "c"])


@pytest.mark.parametrize("m, expected", [(2, 3), (3, 7), (4, 11), (5, 16)])
def test_removal_pattern_count(m, expected):
    patterns = removal_patterns([f"m{i}" for i in range(m)])
    assert len(patterns) == expected  # M singles + C(M,2) pairs when M>2 + random25
    assert patterns[-1].name == "random25" and patterns[-1].random_fraction == 0.25
    assert all(len(p.removed) < m for p in patterns)  # at least one modality always stays
    assert len({p.name for p in patterns}) == expected


def test_removal_pattern_names_and_mask():
    names = [p.name for p in removal_patterns(MODS)]
    assert names == ["-ecfp", "-maccs", "-desc", "-ecfp+maccs", "-ecfp+desc", "-maccs+desc", "random25"]
    pats = {p.name: p for p in removal_patterns(MODS)}
    keep = removal_mask(pats["-ecfp+desc"], MODS, n=5)
    assert keep.tolist() == [[False, True, False]] * 5
    present = np.ones((400, 3), dtype=bool)
    present[:50, 1] = False  # an encoder failed on some molecules
    keep = removal_mask(pats["random25"], MODS, n=400, seed=0, present=present)
    assert keep.any(axis=1).all()  # never all of a molecule's
    assert not (keep & ~present).any()  # never resurrects a missing entry
    assert (present.sum() - keep.sum()) == round(0.25 * present.sum())
    assert not np.array_equal(keep, removal_mask(pats["random25"], MODS, n=400, seed=1, present=present))
    with pytest.raises(ValueError, match="at least 2"):
        removal_patterns(["ecfp"])


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
        assert set(t) == {"metric", "split", "rows", "robustness", "reconstruction_cosine", "attention"}
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
