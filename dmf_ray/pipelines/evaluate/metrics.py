"""NaN-masked multi-task metrics.

Labels are ``[n, T]`` float arrays with NaN for a missing label. Each task is scored on the
rows where its label is present; the headline number is the unweighted mean over the tasks
that could be scored (MoleculeNet convention).

- classification: ROC-AUC (dmf_ray.model.metrics.roc_auc_per_column, shared with ``dmf
  finetune``); a task is scored only if both classes occur among its scored rows (otherwise
  ROC-AUC is undefined) and its predictions are not all NaN (the learner marks a task it
  could not fit that way).
- regression: RMSE and MAE per task, averaged over tasks.
"""

from __future__ import annotations

import numpy as np

KINDS = ("classification", "regression")
PRIMARY_METRIC = {"classification": "roc_auc", "regression": "rmse"}
HIGHER_IS_BETTER = {"roc_auc": True, "rmse": False, "mae": False}


def primary_metric(kind: str) -> str:
    """``"roc_auc"`` for classification, ``"rmse"`` for regression."""
    check_kind(kind)
    return PRIMARY_METRIC[kind]


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def is_better(a: float, b: float, metric: str) -> bool:
    """True if metric value ``a`` is strictly better than ``b`` (NaN is never better)."""
    if np.isnan(a):
        return False
    if np.isnan(b):
        return True
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def _as_2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [n] or [n, T], got shape {arr.shape}")
    return arr


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score(y_true, y_pred, kind: str) -> dict:
    """Score predictions against NaN-masked labels.

    Returns for classification ``{"roc_auc", "roc_auc_per_task", "n_tasks_scored",
    "n_tasks"}`` and for regression ``{"rmse", "mae", "rmse_per_task", "mae_per_task",
    "n_tasks_scored", "n_tasks"}``. Per-task lists hold NaN for tasks that were not scored;
    the averages are NaN when no task could be scored.
    """
    from dmf_ray.model.metrics import roc_auc_per_column

    check_kind(kind)
    yt, yp = _as_2d(y_true, "y_true"), _as_2d(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true shape {yt.shape} != y_pred shape {yp.shape}")
    n_tasks = yt.shape[1]
    per_task: dict[str, list[float]] = {"roc_auc": [], "rmse": [], "mae": []}
    for t in range(n_tasks):
        present = ~np.isnan(yt[:, t])
        pred_nan = np.isnan(yp[present, t])
        skip = not present.any() or pred_nan.all()
        if not skip and pred_nan.any():
            raise ValueError(
                f"task {t}: {int(pred_nan.sum())} NaN predictions for rows that have a label"
            )
        if kind == "regression":
            err = yp[present, t] - yt[present, t]
            per_task["rmse"].append(float("nan") if skip else float(np.sqrt(np.mean(err**2))))
            per_task["mae"].append(float("nan") if skip else float(np.mean(np.abs(err))))
    if kind == "classification":  # a skipped task's NaN predictions leave no row: NaN
        per_task["roc_auc"] = roc_auc_per_column(yt, yp)
    names = ["roc_auc"] if kind == "classification" else ["rmse", "mae"]
    out: dict = {}
    for m in names:
        out[m] = _mean(per_task[m])
    for m in names:
        out[f"{m}_per_task"] = per_task[m]
    out["n_tasks_scored"] = int(sum(not np.isnan(v) for v in per_task[names[0]]))
    out["n_tasks"] = int(n_tasks)
    return out
