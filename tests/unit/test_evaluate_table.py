"""Table 1 fits of one task: degraded test copies scored by the same fit, seeds reuse the choice."""

from __future__ import annotations

import numpy as np
import pytest

from dmf_ray.modalities import ModalityBatch
from dmf_ray.pipelines.evaluate.config import EvaluateConfig
from dmf_ray.pipelines.evaluate.downstream import fit_and_score
from dmf_ray.pipelines.evaluate.results import TaskResult
from dmf_ray.pipelines.evaluate.table import TaskRun, fit_row, table_rows, why_missing
from dmf_ray.pipelines.evaluate.taskdata import TaskData
from dmf_ray.pipelines.evaluate.tasks import Task


def _run(learner="rf", **config):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(float)[:, None]
    task = Task("t", {s: [] for s in ("train", "valid", "test")},
                {"train": y[:200], "valid": y[200:250], "test": y[250:]}, ["y"], "classification", "provided")
    batch = ModalityBatch([f"m{i}" for i in range(300)], ["a"], {"a": X}, np.ones((300, 1), bool))
    data = TaskData(task, batch, {"train": slice(0, 200), "valid": slice(200, 250), "test": slice(250, 300)})
    cfg = EvaluateConfig(model="m", tasks=["t=x"], out="o", n_estimators=20, n_jobs=1, learner=learner, **config)
    run = TaskRun(data, None, cfg, [0, 1], TaskResult(task="t", metric="roc_auc", split="provided"), [],
                  lambda m: None)
    return run, X, y


def test_degraded_tests_stacked_under_test_are_scored_by_the_same_forest():
    run, X, y = _run()
    noisy = X[250:].copy()
    noisy[:, 0] = np.nan  # a withheld block: imputed with the train mean
    fit, extra = fit_row(run, X, 0, "a", [X[250:], noisy])
    plain = fit_and_score(X[:200], y[:200], X[200:250], y[200:250], X[250:], y[250:], "classification", 0,
                          n_estimators=20, n_jobs=1)
    assert fit["test_metric"] == pytest.approx(plain["test_metric"])
    assert fit["params"] == plain["params"]
    assert extra[0] == pytest.approx(plain["test_metric"])  # the undegraded copy scores the same
    assert extra[1] < extra[0] and "predictions" not in fit


def test_auto_chooses_on_the_first_seed_and_later_seeds_reuse_the_choice():
    pytest.importorskip("xgboost")
    run, X, _ = _run(learner="auto")
    first, _ = fit_row(run, X, 0, "a")
    assert set(first["candidates"]) == {"rf", "xgboost", "logreg", "mlp"}
    best = max(first["candidates"], key=lambda k: first["candidates"][k]["valid_metric"])
    assert first["learner"] == best == run.chosen["a"]["learner"]
    second, _ = fit_row(run, X, 1, "a")
    assert second["learner"] == best and second["selected_on"] == "given" and second["params"] == first["params"]


def test_rows_and_reasons():
    assert table_rows(["a", "b"]) == [("a", ("a",)), ("b", ("b",)), ("a+b", ("a", "b")), ("fusion", ())]
    nan = {"test_metric": float("nan"), "test": {"n_tasks": 2}, "skipped_tasks": [0, 1]}
    assert "could be fitted" in why_missing(nan, "classification")
    assert "both classes" in why_missing({**nan, "skipped_tasks": [0]}, "classification")
    assert why_missing({**nan, "test_metric": 0.7}, "classification") is None


def test_the_paper_row_reuses_its_own_first_seed_choice():
    # Review #13: the paper protocol goes through fit_row with its own key in run.chosen.
    pytest.importorskip("xgboost")
    run, X, _ = _run(learner="rf")
    fit_row(run, X, 0, "a")
    paper0, _ = fit_row(run, X, 0, "a", learner="xgboost")
    assert run.chosen["a"]["learner"] == "rf" and run.chosen["xgboost:a"]["learner"] == "xgboost"
    assert paper0["selected_on"] == "valid"
    paper1, _ = fit_row(run, X, 1, "a", learner="xgboost")
    assert paper1["learner"] == "xgboost" and paper1["selected_on"] == "given"
    assert paper1["params"] == paper0["params"]
    assert run.chosen["a"]["learner"] == "rf"  # Table 1's choice untouched
