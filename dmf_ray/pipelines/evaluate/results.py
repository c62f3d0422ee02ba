"""Per-task results (:class:`TaskResult`), their statistics and the ``summary.json`` document.

The caller fills one :class:`TaskResult` per task (scores per seed, robustness under modality
removal, reconstruction cosine, attention, the learner per row, leakage flags, and why any
figure could not be computed); :mod:`dmf_ray.pipelines.evaluate.report` writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dmf_ray.pipelines.evaluate.metrics import HIGHER_IS_BETTER, PRIMARY_METRIC
from dmf_ray.pipelines.evaluate.protocol import FUSION

METRIC_LABELS = {"roc_auc": "ROC-AUC ↑", "rmse": "RMSE ↓"}
# fusion / concat: the Table 1 learners on degraded test features; finetuned: the fine-tuned
# fusion predictor on the same degraded molecules.
ROBUSTNESS_METHODS = ("fusion", "concat", "finetuned")


def floats(values: float | Iterable[float]) -> list[float]:
    """One number or an iterable of numbers as a list of Python floats."""
    if isinstance(values, (int, float, np.floating, np.integer)):
        return [float(values)]
    return [float(v) for v in values]


@dataclass
class TaskResult:
    """Everything the report needs for one task; fill it as results come in.

    - ``metric``: ``"roc_auc"`` or ``"rmse"`` (the primary test metric in ``rows``).
    - ``rows``: row name -> test metric, one value per seed.
    - ``robustness``: removal pattern name -> ``{"fusion": [...], "concat": [...]}`` test
      metric per seed, where ``concat`` is the concatenation of all modalities with the
      withheld blocks mean-imputed, ``fusion`` the fused vector from the remaining ones.
    - ``reconstruction_cosine``: modality -> mean cosine(decoder output, true embedding).
    - ``attention``: modality -> mean attention weight with all modalities present.
    - ``attention_vs_mask_rate``: mask rate -> modality -> mean attention weight.
    - ``extra_metrics``: other test metrics per row and seed, e.g. ``{"mae": {row: [...]}}``.
    - ``invalid_smiles``, ``n_molecules``: per split; ``scaffold_overlap``: test molecules
      whose scaffold occurs in train.
    - ``params``: row -> chosen downstream params per seed (for the CSV trail).
    - ``learners``: row -> the learner that produced each seed's score (``rf``, ``xgboost``...).
    - ``paper``: row -> test metric per seed under the paper's protocol (XGBoost on the frozen
      features), reported as its own table.
    - ``leaked``: row -> why the row is LEAKED (an encoder it uses was trained on this task's
      labels); leaked rows are marked everywhere and never count as "best".
    - ``not_computed``: figure or row -> why it has no number (every NaN explains itself).
    """

    task: str
    metric: str
    split: str
    rows: dict[str, list[float]] = field(default_factory=dict)
    robustness: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    reconstruction_cosine: dict[str, float] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)
    attention_vs_mask_rate: dict[float, dict[str, float]] = field(default_factory=dict)
    extra_metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    invalid_smiles: dict[str, int] = field(default_factory=dict)
    n_molecules: dict[str, int] = field(default_factory=dict)
    scaffold_overlap: int | None = None
    params: dict[str, list[dict]] = field(default_factory=dict)
    learners: dict[str, list[str]] = field(default_factory=dict)
    paper: dict[str, list[float]] = field(default_factory=dict)
    leaked: dict[str, str] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in PRIMARY_METRIC.values():
            raise ValueError(f"metric must be one of {list(PRIMARY_METRIC.values())}, got {self.metric!r}")

    @classmethod
    def for_task(cls, task, scaffold_overlap: bool = True) -> TaskResult:
        """Start a result from a loaded :class:`dmf_ray.pipelines.evaluate.tasks.Task`; each label
        column no learner can fit (``task.skipped_labels``) is in ``not_computed`` with its reason."""
        return cls(
            task=task.name,
            metric=PRIMARY_METRIC[task.kind],
            split=task.split_name,
            invalid_smiles=task.n_invalid_smiles,
            n_molecules=task.sizes,
            scaffold_overlap=task.scaffold_overlap() if scaffold_overlap else None,
            not_computed={f"label {c}": f"{why}: not fitted, left out of every row's mean"
                          for c, why in getattr(task, "skipped_labels", {}).items()},
        )

    def add_fit(self, row: str, fit: Mapping) -> None:
        """Record one seed of :func:`dmf_ray.pipelines.evaluate.downstream.fit_and_score` for ``row``."""
        self.rows.setdefault(row, []).append(float(fit["test_metric"]))
        for name, value in fit["test"].items():
            if name != self.metric and not name.endswith("_per_task") and not name.startswith("n_tasks"):
                self.extra_metrics.setdefault(name, {}).setdefault(row, []).append(float(value))
        self.params.setdefault(row, []).append(dict(fit.get("params", {})))
        self.learners.setdefault(row, []).append(str(fit.get("learner", "rf")))

    def learner_of(self, row: str) -> str:
        """The learner(s) of ``row``'s seeds, e.g. ``"xgboost"`` (``"rf/mlp"`` if seeds differ)."""
        return "/".join(dict.fromkeys(self.learners.get(row, []))) or "–"

    def best_row(self, rows: Iterable[str] | None = None) -> str | None:
        """The row with the best mean metric among ``rows`` (default: all), leaked rows left out."""
        means = {r: mean_std(self.rows[r])[0] for r in (self.rows if rows is None else rows)
                 if r in self.rows and r not in self.leaked}
        finite = {k: v for k, v in means.items() if math.isfinite(v)}
        if not finite:
            return None
        pick = max if HIGHER_IS_BETTER[self.metric] else min
        return pick(finite, key=finite.get)

    def add_robustness(self, pattern: str, method: str, value: float) -> None:
        """Record one seed's test metric for ``method`` (``"fusion"``/``"concat"``) under ``pattern``."""
        if method not in ROBUSTNESS_METHODS:
            raise ValueError(f"method must be one of {', '.join(ROBUSTNESS_METHODS)}, got {method!r}")
        self.robustness.setdefault(pattern, {}).setdefault(method, []).append(float(value))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for one value) over the finite values; NaN if none."""
    v = np.array([x for x in floats(values) if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def order_rows(names: Iterable[str]) -> list[str]:
    """Single modalities, then concatenations (fewest parts first), then fusion, then others."""
    names = list(dict.fromkeys(names))

    def key(item: tuple[int, str]):
        i, n = item
        if n == FUSION:
            return (2, 0, i)
        if n.startswith(FUSION):  # fusion-finetuned
            return (2, 1, i)
        if "+" in n:
            return (1, n.count("+"), i)
        return (0, 0, i)

    return [n for _, n in sorted(enumerate(names), key=key)]


def json_float(x: float) -> float | None:
    """``x`` as a float, or None for NaN/inf (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else None


def summary(results: Sequence[TaskResult]) -> dict:
    """The ``summary.json`` document (NaN written as ``null``)."""
    tasks = {}
    for r in results:
        rows = {}
        for row in order_rows(r.rows):
            m, s = mean_std(r.rows[row])
            rows[row] = {"mean": json_float(m), "std": json_float(s)}
        robustness = {
            p: {meth: json_float(mean_std(r.robustness[p].get(meth, []))[0]) for meth in ROBUSTNESS_METHODS
            if meth in r.robustness[p] or meth != "finetuned"}
            for p in r.robustness
        }
        paper = {row: dict(zip(("mean", "std"), map(json_float, mean_std(r.paper[row])))) for row in order_rows(r.paper)}
        tasks[r.task] = {
            "metric": r.metric,
            "split": r.split,
            "rows": rows,
            "learners": {row: r.learner_of(row) for row in order_rows(r.rows)},
            "leaked": dict(r.leaked),
            "best_row": r.best_row(),
            "paper_protocol": paper,
            "robustness": robustness,
            "reconstruction_cosine": {m: json_float(float(v)) for m, v in r.reconstruction_cosine.items()},
            "attention": {m: json_float(float(v)) for m, v in r.attention.items()},
            "not_computed": dict(r.not_computed),
        }
    return {"tasks": tasks}
