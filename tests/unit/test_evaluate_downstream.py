"""Downstream fits on small synthetic data (multi-task, NaN labels and features), every learner."""

import json
import math

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.downstream import default_n_estimators, fit_and_score, impute
from dmf_ray.pipelines.evaluate.learners import grid


def _data(n=240, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    logits = np.stack([X[:, 0] + X[:, 1], X[:, 2] - X[:, 3], X[:, 4]], axis=1)
    y = (logits > 0).astype(float)
    y[rng.random(y.shape) < 0.2] = np.nan  # 20% missing labels
    y[:, 2] = 1.0  # a task with one class in train: cannot be fitted
    y[-80:, 2] = (logits[-80:, 2] > 0)  # ... but both classes in valid/test
    return X, y, np.stack([X[:, 0] * 2 - X[:, 1], X[:, 2] ** 2], axis=1)


def _splits(X, Y):
    return X[:160], Y[:160], X[160:200], Y[160:200], X[200:], Y[200:]


def test_classification_multitask_masks_labels_and_skips_one_class_task():
    X, y, _ = _data()
    out = fit_and_score(*_splits(X, y), kind="classification", seed=0, n_estimators=30)
    assert out["metric"] == "roc_auc"
    assert out["skipped_tasks"] == [2]
    assert out["test"]["n_tasks"] == 3 and out["test"]["n_tasks_scored"] == 2
    assert math.isnan(out["test"]["roc_auc_per_task"][2])
    assert out["test_metric"] > 0.75 and out["valid_metric"] > 0.75
    assert out["selected_on"] == "valid" and len(out["grid"]) == len(grid("rf", "classification", 30))
    best = max(out["grid"], key=lambda g: g["valid_metric"])
    assert out["params"] == best["params"] and out["params"]["n_estimators"] == 30
    json.dumps(out["params"])  # recordable


def test_regression_and_given_params_skip_grid():
    X, _, y = _data(seed=1)
    out = fit_and_score(*_splits(X, y), kind="regression", seed=0, n_estimators=30, return_predictions=True)
    assert out["metric"] == "rmse" and out["test"]["n_tasks_scored"] == 2
    assert out["test_metric"] < np.nanstd(y[200:], axis=0).mean()  # beats predicting the mean
    assert out["predictions"]["test"].shape == (40, 2)
    again = fit_and_score(*_splits(X, y), kind="regression", seed=0, params=out["params"])
    assert again["selected_on"] == "given" and len(again["grid"]) == 1
    assert again["test_metric"] == pytest.approx(out["test_metric"])  # same seed, same params


def test_nan_and_inf_features_are_imputed_with_train_means():
    X, y, _ = _data(seed=2)
    X = X.copy()
    X[:40, :4] = np.nan  # a missing modality block
    X[5, 7] = np.inf
    X[:, 11] = np.nan  # a column with no value at all
    out = fit_and_score(*_splits(X, y[:, :2]), kind="classification", seed=1, n_estimators=20)
    assert math.isfinite(out["test_metric"])
    assert out["n_imputed"]["train"] == 40 * 4 + 1 + 160  # block + inf + empty column
    (Xtr, Xte), counts = impute(np.array([[1.0, np.nan], [3.0, np.nan]]), np.array([[np.nan, 5.0]]))
    np.testing.assert_array_equal(Xtr, [[1, 0], [3, 0]])
    np.testing.assert_array_equal(Xte, [[2, 5]])
    assert counts == [2, 1] and Xtr.dtype == np.float32


def test_input_checks_and_tree_rule():
    X, y, _ = _data()
    with pytest.raises(ValueError, match="features"):
        fit_and_score(X[:10], y[:10], X[:5, :3], y[:5], X[:5], y[:5], "classification")
    with pytest.raises(ValueError, match="rows"):
        fit_and_score(X[:10], y[:9], X[:5], y[:5], X[:5], y[:5], "classification")
    with pytest.raises(ValueError, match="kind"):
        fit_and_score(X[:10], y[:10], X[:5], y[:5], X[:5], y[:5], "ranking")
    assert default_n_estimators(1500) == 300 and default_n_estimators(33_000) == 100


@pytest.mark.parametrize("learner", ["rf", "xgboost", "logreg", "mlp"])
def test_every_learner_fits_multitask_and_regression(learner):
    if learner == "xgboost":
        pytest.importorskip("xgboost")
    X, y, reg = _data()
    out = fit_and_score(*_splits(X, y), kind="classification", seed=0, learner=learner, n_estimators=30, n_jobs=1)
    assert out["learner"] == learner and out["skipped_tasks"] == [2] and out["test_metric"] > 0.75
    assert len(out["grid"]) == len(grid(learner, "classification", 30))
    json.dumps(out["params"])
    out = fit_and_score(*_splits(X, reg), kind="regression", seed=0, learner=learner, n_estimators=30, n_jobs=1)
    assert out["test_metric"] < np.nanstd(reg[200:], axis=0).mean()  # beats predicting the mean


def test_auto_keeps_the_best_valid_learner_and_records_the_others():
    X, y, _ = _data()
    out = fit_and_score(*_splits(X[:, :6], y[:, :2]), kind="classification", seed=0, learner="auto",
                        n_estimators=30, n_jobs=1)
    cands = out["candidates"]
    assert set(cands) == {"rf", "xgboost", "logreg", "mlp"}
    scored = {k: v["valid_metric"] for k, v in cands.items() if "valid_metric" in v}
    assert out["learner"] == max(scored, key=scored.get) and out["valid_metric"] == scored[out["learner"]]
    with pytest.raises(ValueError, match="learner must be one of"):
        fit_and_score(*_splits(X, y), kind="classification", learner="svm")
