"""Fusion training with Ray Train. The public API:

    from dmf_ray.pipelines.train import TrainConfig, check_training, train

Modules: ``config`` (TrainConfig, TrainResult, TrainingError; ``dmf train``'s flags are generated
from its field descriptions by dmf_ray.cli), ``driver`` (check_training, train), ``outdir`` (what ``out`` holds,
resume, remote staging), ``data`` (store -> Ray Datasets, validation split), ``step`` (one
optimisation step, validation sums), ``worker`` (the per-worker loop) and ``checkpoints``
(checkpoint and metrics files)."""

from dmf_ray.files import METRICS_FILE
from dmf_ray.pipelines.train.checkpoints import read_metrics_file
from dmf_ray.pipelines.train.config import TRAIN_DIR, TrainConfig, TrainingError, TrainResult
from dmf_ray.pipelines.train.driver import FAIL_AT_EPOCH_ENV, TrainingCheck, check_training, resolve_workers, train

__all__ = ["FAIL_AT_EPOCH_ENV", "METRICS_FILE", "TRAIN_DIR", "TrainConfig", "TrainResult", "TrainingCheck",
           "TrainingError", "check_training", "read_metrics_file",
           "resolve_workers", "train"]
