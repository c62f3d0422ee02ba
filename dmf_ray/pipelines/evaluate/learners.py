"""The downstream learners of ``dmf evaluate``: one recipe per name, each with a small grid.

Every learner is a scikit-learn estimator (XGBoost through its scikit-learn wrapper), built
fresh for one label column by :func:`build` with one grid point of :func:`grid`; the grid
point is chosen on the valid split by :mod:`dmf_ray.pipelines.evaluate.downstream`.

=========  ==========================================  ==========================================
name       classification                              regression
=========  ==========================================  ==========================================
rf         RandomForestClassifier, balanced classes,   RandomForestRegressor;
           grid min_samples_leaf 1 | 3                 grid max_features 0.33 | 0.6
xgboost    XGBClassifier (hist), grid max_depth 3 | 6  XGBRegressor (hist), same grid
logreg     StandardScaler + LogisticRegression,        StandardScaler + Ridge,
           balanced, grid C 0.01 | 0.1 | 1             grid alpha 1 | 10 | 100
mlp        StandardScaler + MLPClassifier (256),       StandardScaler + MLPRegressor (256) on
           early stopping, grid alpha 1e-4 | 1e-2      standardised targets, same grid
=========  ==========================================  ==========================================

Why these: the random forest is the learner of the reference numbers and needs no scaling;
XGBoost on frozen embeddings is the paper's protocol (IBM fm4m); a linear model and a small MLP
suit dense embeddings, where forests are known to be weak, and need standardised inputs
(count fingerprints and descriptors span orders of magnitude). Grids are kept to 2-3 points so
``auto`` (every learner, the best on valid) stays affordable on 2 cores.

Sources: scikit-learn >= 1.3 (``sklearn.ensemble``, ``sklearn.linear_model``,
``sklearn.neural_network``, ``sklearn.preprocessing.StandardScaler``), xgboost >= 2.0
(``xgboost.XGBClassifier``/``XGBRegressor``, the ``[evaluate]`` extra).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

LEARNERS = ("rf", "xgboost", "logreg", "mlp")
AUTO = "auto"
LEARNER_CHOICES = (*LEARNERS, AUTO)
SMALL_TASK_ROWS = 20_000
XGBOOST_MISSING = "xgboost is not installed: pip install 'dmf-ray[evaluate]'"

_GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "rf": {"classification": [{"min_samples_leaf": 1}, {"min_samples_leaf": 3}],
           "regression": [{"max_features": 0.33}, {"max_features": 0.6}]},
    "xgboost": {"classification": [{"max_depth": 3}, {"max_depth": 6}],
                "regression": [{"max_depth": 3}, {"max_depth": 6}]},
    "logreg": {"classification": [{"C": 0.01}, {"C": 0.1}, {"C": 1.0}],
               "regression": [{"alpha": 1.0}, {"alpha": 10.0}, {"alpha": 100.0}]},
    "mlp": {"classification": [{"alpha": 1e-4}, {"alpha": 1e-2}],
            "regression": [{"alpha": 1e-4}, {"alpha": 1e-2}]},
}
_BASE: dict[str, dict[str, dict[str, Any]]] = {
    "rf": {"classification": {"max_features": "sqrt", "min_samples_leaf": 1, "class_weight": "balanced"},
           "regression": {"max_features": 0.33, "min_samples_leaf": 1}},
    "xgboost": {"classification": {"learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.5},
                "regression": {"learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.5}},
    "logreg": {"classification": {}, "regression": {}},
    "mlp": {"classification": {}, "regression": {}},
}


def default_n_estimators(n_labelled_train_rows: int) -> int:
    """Trees for rf and xgboost: 300 up to :data:`SMALL_TASK_ROWS` labelled training rows
    (summed over label columns), else 100 (300 gained ~0.002 ROC-AUC on HIV for 3x the time)."""
    return 300 if n_labelled_train_rows <= SMALL_TASK_ROWS else 100


def available(name: str) -> str | None:
    """None when learner ``name`` can run here, else the one-line reason it cannot.

    Raises ValueError for a name not in :data:`LEARNERS`.
    """
    check(name, allow_auto=False)
    if name == "xgboost" and importlib.util.find_spec("xgboost") is None:
        return XGBOOST_MISSING
    return None


def check(name: str, allow_auto: bool = True) -> None:
    """Raise ValueError naming the choices when ``name`` is not a learner."""
    choices = LEARNER_CHOICES if allow_auto else LEARNERS
    if name not in choices:
        raise ValueError(f"learner must be one of {', '.join(choices)}; got {name!r}")


def grid(name: str, kind: str, n_estimators: int) -> list[dict[str, Any]]:
    """The grid points of learner ``name`` for ``kind`` (``classification``/``regression``):
    full parameter dicts (JSON-serialisable) that :func:`build` accepts."""
    check(name, allow_auto=False)
    trees = {"n_estimators": n_estimators} if name in ("rf", "xgboost") else {}
    return [{**_BASE[name][kind], **trees, **point} for point in _GRIDS[name][kind]]


def build(name: str, kind: str, params: dict[str, Any], seed: int, n_jobs: int):
    """A fresh, unfitted estimator: learner ``name`` for ``kind`` with ``params`` (one grid point).

    Classification estimators expose ``predict_proba`` and ``classes_``; regression ones
    ``predict``. Raises ValueError for an unknown name, ImportError (with
    :data:`XGBOOST_MISSING`) when xgboost is asked for and not installed.
    """
    check(name, allow_auto=False)
    classify = kind == "classification"
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if classify else RandomForestRegressor
        return cls(random_state=seed, n_jobs=n_jobs, **params)
    if name == "xgboost":
        return _xgboost(classify, params, seed, n_jobs)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        from sklearn.linear_model import LogisticRegression, Ridge

        model = (LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed, **params)
                 if classify else Ridge(**params))
        return make_pipeline(StandardScaler(), model)
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    common = {"hidden_layer_sizes": (256,), "early_stopping": True, "max_iter": 200, "random_state": seed}
    if classify:
        return make_pipeline(StandardScaler(), MLPClassifier(**common, **params))
    from sklearn.compose import TransformedTargetRegressor

    # Targets standardised too: an MLP on raw log-solubility units trains slowly and unevenly.
    return TransformedTargetRegressor(make_pipeline(StandardScaler(), MLPRegressor(**common, **params)),
                                      transformer=StandardScaler())


def _xgboost(classify: bool, params: dict[str, Any], seed: int, n_jobs: int):
    # XGBoost's bundled libgomp spins its idle threads by default; on a shared 2-core machine a
    # 300-round fit on 200 x 2,048 features took 15-29 s with n_jobs=2 against 0.5 s with the
    # passive policy (load 2.7-4.6). The policy is read once, when that libgomp initialises (on
    # the first import of xgboost), so it is set just before; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import xgboost
    except ImportError as exc:
        raise ImportError(XGBOOST_MISSING) from exc
    cls = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
    return cls(tree_method="hist", random_state=seed, n_jobs=n_jobs, verbosity=0, **params)
