"""Downstream evaluation, ``dmf evaluate``: Table 1, robustness, reconstruction, attention.

Public API (re-exported lazily, so importing a building block stays cheap):
:class:`EvaluateConfig`, :class:`TaskSpec`, :func:`evaluate`, :class:`EvaluateResult`,
:func:`load_tasks`.

Modules, one job each, in the order a run uses them:

- ``config``: the typed configuration (pydantic; the CLI's flags come from its fields).
- ``tasks`` / ``splits``: load a benchmark task; scaffold and random splits.
- ``features``: encode every task molecule once per modality (torch encoders in-process).
- ``taskdata``: one task's rows aligned with their features; feature matrices per row.
- ``learners`` / ``downstream``: rf, xgboost, logreg, mlp (+ auto); fit, grid on valid, score.
- ``metrics``: NaN-masked multi-task ROC-AUC / RMSE / MAE.
- ``protocol``: the rows of Table 1 and the removal patterns of Figure 2.
- ``table`` / ``robustness``: Table 1 (+ Figure 2 inference protocol), Figure 2 refit protocol.
- ``analyses``: Figures 3-5 (reconstruction cosine, attention).
- ``provenance``: pretraining-corpus overlap and encoders' training data (LEAKED rows).
- ``results`` / ``markdown`` / ``figures`` / ``report`` / ``outputs``: per-task results and
  every output file.
- ``run``: the workflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvaluateConfig", "EvaluateResult", "TaskSpec", "evaluate", "load_tasks"]


def __getattr__(name: str) -> Any:
    if name in ("EvaluateConfig", "TaskSpec"):
        from dmf_ray.pipelines.evaluate import config

        return getattr(config, name)
    if name in ("EvaluateResult", "evaluate", "load_tasks"):
        from dmf_ray.pipelines.evaluate import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
