"""Fit a downstream learner on one feature matrix, choose its grid point on valid, score test.

The learners and their grids are in :mod:`dmf_ray.pipelines.evaluate.learners`. One grid point
is chosen per call, shared by all label columns (picked by the mean valid metric over label
columns), so a multi-task set does not overfit valid per column. ``learner="auto"`` fits every
available learner that way and keeps the one with the best valid metric (ties: the first in
:data:`~dmf_ray.pipelines.evaluate.learners.LEARNERS`).

Measured for the random forest (HIV, 32,900 train rows, 2,048 log1p ECFP4 counts, 2 jobs,
shared machine): 100 trees with ``min_samples_leaf=3`` valid 0.839 / test 0.869 ROC-AUC in 20 s;
300 trees 0.838 / 0.871 in 90 s; ExtraTrees 100 0.829 / 0.837; HistGradientBoosting 0.810 /
0.826; LogisticRegression (C=0.1, balanced, unscaled) 0.776 / 0.848. Tox21 prefers
``min_samples_leaf=1``, HIV 3: that is the forest's classification grid.

Multi-task labels: one model per label column, fitted on the rows where that label is present.
A classification label with a single class among its training rows cannot be fitted: its
predictions are NaN, the metrics skip it and it is listed in ``skipped_tasks``. NaN or infinite
feature values are imputed with the train column mean (0 for a column with no finite value);
the counts are reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmf_ray.pipelines.evaluate import learners as _learners
from dmf_ray.pipelines.evaluate import metrics as _metrics
from dmf_ray.pipelines.evaluate.learners import default_n_estimators

__all__ = ["default_n_estimators", "fit_and_score", "impute", "score_stacked"]


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"{name} must be [n] or [n, T] with n={n} rows, got shape {arr.shape}")
    return arr


def impute(X_train: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """float32 copies with NaN/inf replaced by the finite train column mean (0 if none).

    ``X_train`` ``[n, d]`` and each of ``others`` ``[k, d]``, any float dtype. Returns the imputed
    matrices (train first) and the number of replaced entries in each. Raises ValueError for a
    matrix that is not 2-d, has no columns, or has a different number of columns than train.
    """
    mats = [np.array(X, dtype=np.float32, copy=True) for X in (X_train, *others)]
    for name, X in zip(("X_train", "X_valid", "X_test"), mats):
        if X.ndim != 2:
            raise ValueError(f"{name} must be a 2-d feature matrix, got shape {X.shape}")
    d = mats[0].shape[1]
    if d == 0:
        raise ValueError("feature matrices have no columns")
    for name, X in zip(("X_valid", "X_test"), mats[1:]):
        if X.shape[1] != d:
            raise ValueError(f"{name} has {X.shape[1]} features, X_train has {d}")
    bad_train = ~np.isfinite(mats[0])
    with np.errstate(invalid="ignore"):
        sums = np.where(bad_train, 0.0, mats[0]).sum(axis=0, dtype=np.float64)
        counts = (~bad_train).sum(axis=0)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    replaced = []
    for X in mats:
        bad = ~np.isfinite(X)
        replaced.append(int(bad.sum()))
        if replaced[-1]:
            rows, cols = np.nonzero(bad)
            X[rows, cols] = means[cols]
    return mats, replaced


def _fit_predict(learner: str, kind: str, params: dict, seed: int, n_jobs: int, X_train: np.ndarray,
                 y_train: np.ndarray, X_eval: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """Predictions ``[n, T]`` float64 for every matrix in ``X_eval``; NaN columns for unfittable tasks."""
    n_tasks = y_train.shape[1]
    preds = [np.full((X.shape[0], n_tasks), np.nan) for X in X_eval]
    skipped = []
    for t in range(n_tasks):
        rows = ~np.isnan(y_train[:, t])
        y = y_train[rows, t]
        if y.size == 0 or (kind == "classification" and np.unique(y).size < 2):
            skipped.append(t)
            continue
        point = dict(params)
        if learner == "mlp" and kind == "classification" and np.bincount(y.astype(np.int64)).min() < 2:
            point["early_stopping"] = False  # its stratified hold-out needs 2 rows of each class
        target = y.astype(np.int64) if kind == "classification" else y  # xgboost wants integer classes
        model = _learners.build(learner, kind, point, seed, n_jobs).fit(X_train[rows], target)
        for P, X in zip(preds, X_eval):
            if X.shape[0] == 0:
                continue
            if kind == "classification":
                positive = int(np.flatnonzero(model.classes_ == 1)[0])
                P[:, t] = model.predict_proba(X)[:, positive]
            else:
                P[:, t] = model.predict(X)
    return preds, skipped


def _fit_one_learner(learner: str, kind: str, data: tuple, seed: int, params: dict | None,
                     n_estimators: int, n_jobs: int) -> dict[str, Any]:
    """Grid search of one learner on valid (or exactly ``params``); the winner's scores and predictions."""
    Xtr, ytr, Xva, yva, Xte, yte = data
    metric = _metrics.primary_metric(kind)
    if params is not None:
        candidates, selected_on = [dict(params)], "given"
    else:
        candidates, selected_on = _learners.grid(learner, kind, n_estimators), "valid"
    tried: list[dict] = []
    best = None
    for cand in candidates:
        (p_valid, p_test), skipped = _fit_predict(learner, kind, cand, seed, n_jobs, Xtr, ytr, (Xva, Xte))
        valid_score = _metrics.score(yva, p_valid, kind)
        tried.append({"params": cand, "valid_metric": valid_score[metric]})
        if best is None or _metrics.is_better(valid_score[metric], best[1][metric], metric):
            best = (cand, valid_score, p_valid, p_test, skipped)
    assert best is not None
    chosen, valid_score, p_valid, p_test, skipped = best
    if selected_on == "valid" and all(np.isnan(t["valid_metric"]) for t in tried):
        selected_on = "default (valid split not scoreable)"
    test_score = _metrics.score(yte, p_test, kind)
    return {"learner": learner, "metric": metric, "test_metric": test_score[metric],
            "valid_metric": valid_score[metric], "test": test_score, "valid": valid_score, "params": chosen,
            "grid": tried, "selected_on": selected_on, "skipped_tasks": skipped,
            "predictions": {"valid": p_valid, "test": p_test}}


def fit_and_score(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    kind: str,
    seed: int = 0,
    *,
    learner: str = "rf",
    params: dict | None = None,
    n_estimators: int | None = None,
    n_jobs: int = 2,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Fit ``learner`` (or every learner for ``"auto"``), choose the grid point on valid, score on test.

    ``X_*`` are ``[n, d]`` float matrices (NaN/inf imputed, :func:`impute`); ``y_*`` ``[n]`` or
    ``[n, T]`` float arrays with NaN for missing labels; ``kind`` is ``"classification"`` (labels
    0/1, metric ROC-AUC) or ``"regression"`` (RMSE). ``params`` skips the grid and uses exactly
    these learner params (e.g. ``result["params"]`` of an earlier seed; with ``"auto"`` give the
    concrete learner chosen then instead). ``n_estimators`` (rf, xgboost): None picks
    :func:`default_n_estimators` from the labelled training rows.

    Returns ``{"learner", "metric", "test_metric", "valid_metric", "test", "valid", "params",
    "grid", "selected_on", "skipped_tasks", "n_imputed", "fit_seconds"}`` (+ ``"predictions"``
    ``{"valid": [n, T], "test": [n, T]}``; + ``"candidates"`` for ``"auto"``: learner ->
    ``{"valid_metric", "test_metric", "params"}`` or ``{"error": reason}``), where ``test``/
    ``valid`` are :func:`dmf_ray.pipelines.evaluate.metrics.score` dicts. Raises ValueError for
    mismatched shapes, an unknown kind or learner; ImportError for xgboost when it is missing.
    """
    _metrics.check_kind(kind)
    _learners.check(learner)
    started = time.perf_counter()
    (Xtr, Xva, Xte), replaced = impute(X_train, X_valid, X_test)
    ytr = _labels(y_train, Xtr.shape[0], "y_train")
    yva = _labels(y_valid, Xva.shape[0], "y_valid")
    yte = _labels(y_test, Xte.shape[0], "y_test")
    if not (ytr.shape[1] == yva.shape[1] == yte.shape[1]):
        raise ValueError(f"label columns differ: train {ytr.shape[1]}, valid {yva.shape[1]}, test {yte.shape[1]}")
    if n_estimators is None:
        n_estimators = default_n_estimators(int((~np.isnan(ytr)).sum()))
    data = (Xtr, ytr, Xva, yva, Xte, yte)
    if learner != _learners.AUTO:
        out = _fit_one_learner(learner, kind, data, seed, params, n_estimators, n_jobs)
    else:
        out = _fit_auto(kind, data, seed, n_estimators, n_jobs)
    out["n_imputed"] = dict(zip(("train", "valid", "test"), replaced))
    out["fit_seconds"] = time.perf_counter() - started
    if not return_predictions:
        del out["predictions"]
    return out


def _fit_auto(kind: str, data: tuple, seed: int, n_estimators: int, n_jobs: int) -> dict[str, Any]:
    """Every available learner with its grid; the best valid metric wins (unavailable ones say why)."""
    best: dict[str, Any] | None = None
    candidates: dict[str, dict] = {}
    for name in _learners.LEARNERS:
        reason = _learners.available(name)
        if reason:
            candidates[name] = {"error": reason}
            continue
        fit = _fit_one_learner(name, kind, data, seed, None, n_estimators, n_jobs)
        candidates[name] = {"valid_metric": fit["valid_metric"], "test_metric": fit["test_metric"],
                            "params": fit["params"]}
        if best is None or _metrics.is_better(fit["valid_metric"], best["valid_metric"], fit["metric"]):
            best = fit
    assert best is not None  # rf is always available
    best["candidates"] = candidates
    best["selected_on"] = f"valid (auto: {best['selected_on']})"
    return best


def score_stacked(y_test: np.ndarray, predictions: np.ndarray, kind: str, n_blocks: int) -> list[dict]:
    """Score ``predictions`` ``[n_blocks * n, T]`` block by block against the same ``y_test`` ``[n, T]``.

    Used when degraded copies of the test split were stacked under it, so one fitted model
    predicted them all in one call. Returns one :func:`metrics.score` dict per block.
    """
    n = len(y_test)
    if len(predictions) != n_blocks * n:
        raise ValueError(f"predictions have {len(predictions)} rows, expected {n_blocks} x {n}")
    return [_metrics.score(y_test, predictions[k * n:(k + 1) * n], kind) for k in range(n_blocks)]
