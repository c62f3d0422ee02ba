"""Forwarding a trial's epoch metrics to Ray Tune, with the downstream scores added when the search
has objective tasks. Imports Ray Tune: imported only inside a trial (run.run_trial)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from dmf_ray.model import DynamicFusion, FusionConfig
from dmf_ray.pipelines.tune.objective import ObjectiveData, objective_scores

SECONDS_KEY = "downstream/seconds"  # the time one report's scoring took (load, fuse, fit), in s


class DownstreamReport(TuneReportCallback):
    """Ray Train's TuneReportCallback (Ray 2.60, ``ray.tune.integration.ray_train``) that first
    scores the checkpoint of each report on the objective tasks (objective.objective_scores) and
    adds ``downstream/roc_auc``, ``downstream/roc_auc/<task>`` and ``downstream/seconds`` (the
    scoring's wall time) to rank 0's metrics.

    Runs in the trial's Ray Train controller. ``objective`` is ``[ObjectRef of ObjectiveData]``
    (a list, so the reference travels as itself and the data is fetched once per controller, not
    copied into each trial's arguments); ``fusion`` the trial's FusionConfig; ``load_checkpoint``
    the train workflow's ``(directory, device) -> (weights, optimizer, state)``."""

    def __init__(self, objective: list, fusion: FusionConfig, load_checkpoint: Callable[..., Any],
                 log: Callable[[str], None] | None = None):
        super().__init__()
        self._objective = objective
        self._fusion = fusion
        self._load_checkpoint = load_checkpoint
        self._log = log
        self._data: ObjectiveData | None = None
        self._model: DynamicFusion | None = None

    def scores(self, directory: str) -> dict[str, float]:
        """The downstream scores of the checkpoint in ``directory``."""
        import ray

        if self._data is None:
            self._data = ray.get(self._objective[0])
            self._model = DynamicFusion(self._fusion)
        weights = self._load_checkpoint(directory, "cpu")[0]
        self._model.load_state_dict(weights)
        return objective_scores(self._model, self._data)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics and checkpoint is not None:
            started = time.perf_counter()
            with checkpoint.as_directory() as directory:
                scores = self.scores(directory)
            seconds = time.perf_counter() - started
            metrics = [{**metrics[0], **scores, SECONDS_KEY: seconds}, *metrics[1:]]
            if self._log is not None:
                self._log(" ".join(f"{k.removeprefix('downstream/')} {v:.4f}" for k, v in scores.items())
                          + f" (scored in {seconds:.2f} s)")
        super().after_report(run_context, metrics, checkpoint)
