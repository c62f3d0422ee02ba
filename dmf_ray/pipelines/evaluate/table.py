"""Table 1 of one task (every single modality, every concatenation, fusion) and, under the
``inference`` robustness protocol, Figure 2 from the very same fitted learners.

Inference protocol: the learner of a Table 1 row is fitted on the complete train split and
scores, besides the real test split, degraded copies of it (modalities withheld): fusion
re-embeds the test molecules with those modalities marked absent, the concatenation leaves the
withheld blocks NaN and the learner imputes them with the train means. The copies are stacked
under the real test split, so one fit predicts them all (no refit).

Seeds: the fusion model is one fixed model; seeds vary the downstream learner (and the random
choices of ``random25``). The learner (for ``auto``) and its grid point are chosen on valid for
the first seed and reused for the others (``grid_every_seed`` redoes it per seed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmf_ray.pipelines.evaluate import downstream as _downstream
from dmf_ray.pipelines.evaluate.config import EvaluateConfig
from dmf_ray.pipelines.evaluate.protocol import FUSION, RemovalPattern, concat_rows, removal_mask
from dmf_ray.pipelines.evaluate.results import TaskResult, mean_std
from dmf_ray.pipelines.evaluate.taskdata import TaskData, block, fused

PAPER_LEARNER = "xgboost"


@dataclass
class TaskRun:
    """Everything one task's analyses share: data, the fusion model, settings, and the result to fill."""

    data: TaskData
    model: Any  # DynamicFusion
    config: EvaluateConfig
    seeds: list[int]
    result: TaskResult
    patterns: list[RemovalPattern]
    log: Callable[[str], None]
    chosen: dict[str, dict] = field(default_factory=dict)  # row -> {"learner", "params"} of the first seed
    paper_reason: str | None = None  # why the paper protocol cannot run (xgboost missing)

    @property
    def all_concat(self) -> str | None:
        """Name of the all-modality concatenation row (None with one modality)."""
        return "+".join(self.data.modalities) if len(self.data.modalities) > 1 else None

    def test_keep(self, pattern: RemovalPattern, seed: int) -> np.ndarray:
        """``[N, M]`` presence with ``pattern`` applied to the test rows only."""
        keep = self.data.present.copy()
        rows = self.data.split_of("test")
        keep[rows] = removal_mask(pattern, self.data.modalities, len(rows), seed, present=keep[rows])
        return keep


def table_rows(modalities: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(row name, modalities it concatenates) for every Table 1 row; fusion last, with ``()``."""
    rows = [(m, (m,)) for m in modalities]
    rows += [("+".join(c), c) for c in concat_rows(modalities)]
    return rows + [(FUSION, ())]


def fit_row(run: TaskRun, X: np.ndarray, seed: int, row: str, degraded: Sequence[np.ndarray] = (),
            learner: str | None = None) -> tuple[dict, list[float]]:
    """Fit the row's learner on ``X`` (``[N, d]``, all task rows) and score test plus each degraded
    test copy (``[n_test, d]`` each). Returns (the fit, the primary metric of each copy).

    The learner and grid point of the row's first seed are reused for later seeds unless
    ``grid_every_seed``; ``learner`` overrides the run's (the paper protocol's xgboost), with its
    own first-seed choice in ``run.chosen`` under ``"<learner>:<row>"``.
    """
    cfg, data = run.config, run.data
    key = row if learner is None else f"{learner}:{row}"
    previous = None if cfg.grid_every_seed else run.chosen.get(key)
    if previous is not None:
        learner, params = previous["learner"], previous["params"]
    else:
        learner, params = learner or cfg.learner, None
    X_train, X_valid, X_test = data.splits_of(X)
    y = data.labels
    if degraded:
        X_test = np.concatenate([X_test, *degraded], axis=0)
        y_test = np.concatenate([y["test"]] * (1 + len(degraded)), axis=0)
    else:
        y_test = y["test"]
    fit = _downstream.fit_and_score(
        X_train, y["train"], X_valid, y["valid"], X_test, y_test, data.task.kind, seed, learner=learner,
        params=params, n_estimators=cfg.n_estimators, n_jobs=cfg.n_jobs, return_predictions=bool(degraded))
    extra: list[float] = []
    if degraded:
        blocks = _downstream.score_stacked(y["test"], fit.pop("predictions")["test"], data.task.kind,
                                           1 + len(degraded))
        fit["test"], fit["test_metric"] = blocks[0], blocks[0][fit["metric"]]
        extra = [b[fit["metric"]] for b in blocks[1:]]
    run.chosen.setdefault(key, {"learner": fit["learner"], "params": fit["params"]})
    return fit, extra


def _degraded(run: TaskRun, method: str, seed: int, fixed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The test split under every removal pattern for ``method`` (fusion/concat); fixed patterns are
    the same for every seed, so they are computed once and kept in ``fixed``."""
    out = []
    rows = run.data.split_of("test")
    for p in run.patterns:
        if p.name in fixed:
            out.append(fixed[p.name])
            continue
        keep = run.test_keep(p, seed)
        X_p = (fused(run.model, run.data, keep, rows) if method == "fusion"
               else block(run.data, run.data.modalities, keep, rows))
        if p.random_fraction == 0:
            fixed[p.name] = X_p
        out.append(X_p)
    return out


def why_missing(fit: dict, kind: str) -> str | None:
    """Why a fit's test metric is NaN (None when it is a number)."""
    if math.isfinite(fit["test_metric"]):
        return None
    n_tasks = fit["test"]["n_tasks"]
    if len(fit["skipped_tasks"]) == n_tasks:
        return "no label column could be fitted: a single class (or no label) among its train rows"
    if kind == "classification":
        return "ROC-AUC undefined on test: no fitted label column has both classes among its test rows"
    return "no label column has a test label"


def run_table1(run: TaskRun) -> None:
    """Every Table 1 row over every seed (and, under ``inference``, Figure 2 from the same fits)."""
    data, cfg, result = run.data, run.config, run.result
    robust_here = cfg.robustness == "inference"
    for row, combo in table_rows(data.modalities):
        r0 = time.perf_counter()
        X = fused(run.model, data, data.present) if row == FUSION else block(data, combo, data.present)
        method = "fusion" if row == FUSION else ("concat" if row == run.all_concat else None)
        fixed: dict[str, np.ndarray] = {}
        for seed in run.seeds:
            degraded = _degraded(run, method, seed, fixed) if method and robust_here and run.patterns else []
            f0 = time.perf_counter()
            fit, extra = fit_row(run, X, seed, row, degraded)
            if time.perf_counter() - f0 > 15:  # large tasks: show progress within a row
                run.log(f"[{result.task}] {row} seed {seed}: {result.metric} {fit['test_metric']:.3f} "
                        f"({time.perf_counter() - f0:.0f} s)")
            result.add_fit(row, fit)
            reason = why_missing(fit, data.task.kind)
            if reason:
                result.not_computed.setdefault(f"Table 1: {row}", reason)
            for p, value in zip(run.patterns, extra):
                result.add_robustness(p.name, method, value)
        if cfg.paper_protocol and not run.paper_reason:
            _paper_row(run, X, row)
        m, s = mean_std(result.rows[row])
        flag = " LEAKED" if row in result.leaked else ""
        run.log(f"[{result.task}] {row:<24} {result.metric} {m:.3f} ± {s:.3f} ({result.learner_of(row)}, "
                f"{len(run.seeds)} seed(s), {time.perf_counter() - r0:.1f} s){flag}")


def _paper_row(run: TaskRun, X: np.ndarray, row: str) -> None:
    """The paper's protocol (XGBoost on the frozen features) for one row, every seed."""
    result = run.result
    if run.config.learner == PAPER_LEARNER:  # Table 1 is the paper's protocol already
        result.paper[row] = list(result.rows[row])
        return
    for seed in run.seeds:
        fit, _ = fit_row(run, X, seed, row, learner=PAPER_LEARNER)
        result.paper.setdefault(row, []).append(float(fit["test_metric"]))
