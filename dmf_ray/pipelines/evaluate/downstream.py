"""The downstream learner: one random forest recipe for every row of the comparison table.

Why a random forest: it is the learner of the reference numbers (``notes/baselines.md``),
needs no feature scaling (count fingerprints, 0/1 keys, descriptors and dense fused
vectors are all fed as they are), and is the fastest strong option measured on 2 cores.
On HIV (32,900 train rows, 2,048 log1p ECFP4 counts, 2 jobs, shared machine):

=============================================  ========  =========  ========
learner                                        fit (s)   valid AUC  test AUC
=============================================  ========  =========  ========
RF 100 trees, min_samples_leaf=1                     20      0.823     0.851
RF 100 trees, min_samples_leaf=3                     20      0.839     0.869
RF 300 trees, min_samples_leaf=3                     90      0.838     0.871
ExtraTrees 100 trees                                 72      0.829     0.837
HistGradientBoosting (early stopping)                19      0.810     0.826
LogisticRegression (C=0.1, balanced)                  4      0.776     0.848
=============================================  ========  =========  ========

Tox21 prefers ``min_samples_leaf=1`` (valid 0.855 vs 0.848) where HIV prefers 3, so that is
the grid for classification, picked on the valid split. For regression (ESOL, RMSE) the
choice that matters is ``max_features`` (0.33: 0.81, 0.6: 0.77 valid RMSE, sqrt: 0.94), so
that is the regression grid. One grid point is chosen per call, shared by all label columns
(picked by the mean valid metric over tasks), so a multi-task set does not overfit valid
per task.

Trees: ``n_estimators=None`` means 300 trees when the labelled training rows summed over
tasks are at most 20,000 (small sets: cheap, and less seed noise), else 100 (HIV, Tox21,
SIDER), where 300 trees gained only ~0.002 AUC for 3x the time. With the grid, one HIV call
takes about 45 s on 2 cores (0.75x one reference RF-300 fit timed in the same run), so
15 feature sets x 3 seeds is about 35 minutes; pass ``params=`` (e.g. the params chosen
for seed 0; a call then takes about 25-30 s) to skip the grid: about 25 minutes.

Multi-task labels: one model per label column, fitted on the rows where that label is
present. A classification label with a single class among its training rows cannot be
fitted: its predictions are NaN and the metrics skip it (it is listed in
``skipped_tasks``). NaN or infinite feature values are imputed with the train column mean
(0 for a column with no finite value); the counts are reported.
"""

from __future__ import annotations

import time

import numpy as np

from dmf_ray.pipelines.evaluate import metrics as _metrics

GRIDS: dict[str, list[dict]] = {
    "classification": [{"min_samples_leaf": 1}, {"min_samples_leaf": 3}],
    "regression": [{"max_features": 0.33}, {"max_features": 0.6}],
}
BASE_PARAMS: dict[str, dict] = {
    "classification": {"max_features": "sqrt", "min_samples_leaf": 1, "class_weight": "balanced"},
    "regression": {"max_features": 0.33, "min_samples_leaf": 1},
}
SMALL_TASK_ROWS = 20_000


def default_n_estimators(n_labelled_train_rows: int) -> int:
    """300 trees up to :data:`SMALL_TASK_ROWS` labelled training rows (all tasks), else 100."""
    return 300 if n_labelled_train_rows <= SMALL_TASK_ROWS else 100


def _labels(y, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"{name} must be [n] or [n, T] with n={n} rows, got shape {arr.shape}")
    return arr


def impute(X_train, *others) -> tuple[list[np.ndarray], list[int]]:
    """float32 copies with NaN/inf replaced by the finite train column mean (0 if none).

    Returns the imputed matrices (train first) and the number of replaced entries in each.
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


def _make_model(kind: str, params: dict, seed: int, n_jobs: int):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if kind == "classification" else RandomForestRegressor
    return cls(random_state=seed, n_jobs=n_jobs, **params)


def _fit_predict(kind, params, seed, n_jobs, X_train, y_train, X_eval) -> tuple[list[np.ndarray], list[int]]:
    """Predictions ``[n, T]`` for every matrix in ``X_eval``; NaN columns for unfittable tasks."""
    n_tasks = y_train.shape[1]
    preds = [np.full((X.shape[0], n_tasks), np.nan) for X in X_eval]
    skipped = []
    for t in range(n_tasks):
        rows = ~np.isnan(y_train[:, t])
        y = y_train[rows, t]
        if y.size == 0 or (kind == "classification" and np.unique(y).size < 2):
            skipped.append(t)
            continue
        model = _make_model(kind, params, seed, n_jobs).fit(X_train[rows], y)
        for P, X in zip(preds, X_eval):
            if X.shape[0] == 0:
                continue
            if kind == "classification":
                positive = int(np.flatnonzero(model.classes_ == 1.0)[0])
                P[:, t] = model.predict_proba(X)[:, positive]
            else:
                P[:, t] = model.predict(X)
    return preds, skipped


def fit_and_score(
    X_train,
    y_train,
    X_valid,
    y_valid,
    X_test,
    y_test,
    kind: str,
    seed: int = 0,
    *,
    params: dict | None = None,
    grid: list[dict] | None = None,
    n_estimators: int | None = None,
    n_jobs: int = 2,
    return_predictions: bool = False,
) -> dict:
    """Fit the downstream random forest, choose its grid point on valid, score on test.

    ``y_*`` are ``[n]`` or ``[n, T]`` float arrays with NaN for missing labels; ``kind`` is
    ``"classification"`` (labels 0/1) or ``"regression"``. ``params`` skips the grid and uses
    exactly these forest params (e.g. ``result["params"]`` of an earlier seed); ``grid``
    replaces :data:`GRIDS` (each entry updates :data:`BASE_PARAMS`).

    Returns ``{"metric", "test_metric", "valid_metric", "test", "valid", "params", "grid",
    "selected_on", "skipped_tasks", "n_imputed", "fit_seconds"}`` (+ ``"predictions"``), where
    ``test``/``valid`` are :func:`dmf_ray.pipelines.evaluate.metrics.score` dicts and ``params`` the
    chosen forest parameters (JSON-serialisable).
    """
    _metrics.check_kind(kind)
    started = time.perf_counter()
    (Xtr, Xva, Xte), replaced = impute(X_train, X_valid, X_test)
    ytr = _labels(y_train, Xtr.shape[0], "y_train")
    yva = _labels(y_valid, Xva.shape[0], "y_valid")
    yte = _labels(y_test, Xte.shape[0], "y_test")
    if not (ytr.shape[1] == yva.shape[1] == yte.shape[1]):
        raise ValueError(f"label columns differ: train {ytr.shape[1]}, valid {yva.shape[1]}, test {yte.shape[1]}")
    metric = _metrics.primary_metric(kind)
    if n_estimators is None:
        n_estimators = default_n_estimators(int((~np.isnan(ytr)).sum()))

    if params is not None:
        candidates, selected_on = [dict(params)], "given"
    else:
        candidates = [
            {**BASE_PARAMS[kind], "n_estimators": n_estimators, **g} for g in (grid or GRIDS[kind])
        ]
        selected_on = "valid"
    tried = []
    best = None
    for cand in candidates:
        (p_valid, p_test), skipped = _fit_predict(kind, cand, seed, n_jobs, Xtr, ytr, (Xva, Xte))
        valid_score = _metrics.score(yva, p_valid, kind)
        tried.append({"params": cand, "valid_metric": valid_score[metric]})
        if best is None or _metrics.is_better(valid_score[metric], best[1][metric], metric):
            best = (cand, valid_score, p_valid, p_test, skipped)
    assert best is not None
    chosen, valid_score, p_valid, p_test, skipped = best
    if selected_on == "valid" and all(np.isnan(t["valid_metric"]) for t in tried):
        selected_on = "default (valid split not scoreable)"
    test_score = _metrics.score(yte, p_test, kind)
    out = {
        "metric": metric,
        "test_metric": test_score[metric],
        "valid_metric": valid_score[metric],
        "test": test_score,
        "valid": valid_score,
        "params": chosen,
        "grid": tried,
        "selected_on": selected_on,
        "skipped_tasks": skipped,
        "n_imputed": dict(zip(("train", "valid", "test"), replaced)),
        "fit_seconds": time.perf_counter() - started,
    }
    if return_predictions:
        out["predictions"] = {"valid": p_valid, "test": p_test}
    return out
