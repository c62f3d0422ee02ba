"""What `dmf train` takes (TrainConfig, a pydantic model that nests the model's FusionSettings and
the MaskSchedule), what it returns (TrainResult) and how it fails (TrainingError)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from dmf_ray.model import FusionSettings, MaskSchedule
from dmf_ray.model.fusion import LEGACY_SETTINGS
from dmf_ray.model.validation import ConfigModel, is_int

TRAIN_DIR = "_ray_train"
RUN_FILE = "run.json"
DATA_LOADING = ("auto", "driver", "distributed")

# Settings that change the trained model; the others (workers, CPUs, paths...) only change how
# it is computed, so a rerun that differs only in those may resume or reuse the result.
OPERATIONAL_SETTINGS = frozenset({"out", "workers", "use_gpu", "cpus_per_worker", "torch_threads", "max_failures",
                                  "worker_cache_mb", "data_loading", "storage_path", "fresh"})

# Settings added after models were first recorded: left out of the flat record while at these
# values, so a model trained before they existed is still recognised as the same model. The first
# two were added at the value that had been hard-coded; the model's own (LEGACY_SETTINGS) were added
# with new defaults, at the value old models were trained with.
_ADDED_LATER = {"std_floor": 1e-6, "mask_steps": 5, **LEGACY_SETTINGS}


class TrainConfig(ConfigModel):
    """Everything `dmf train` takes. Raises ConfigError (a ValueError) naming every problem.

    The model's hyperparameters are ``model`` (FusionSettings) and the masking curriculum
    ``masking`` (MaskSchedule); the modality names and dims come from the store."""

    store: str = Field(description="embedding store to train on (local path or URI)")
    out: str = Field(description="model directory to write (local path, or a URI such as s3://...)")
    modalities: list[str] | None = Field(
        None, description="modalities to fuse, in this order (default: all in the store)")
    epochs: int = Field(20, ge=1, strict=True, description="passes over the training split")
    workers: int | None = Field(
        None, ge=0, strict=True,
        description="Ray Train DDP workers (default: one per node, or one per GPU with use_gpu); "
                    "0 trains in-process (no checkpoints, no resume)")
    use_gpu: bool = Field(False, strict=True, description="one GPU per worker (DDP over nccl)")
    batch_size: int = Field(256, ge=1, strict=True, description="global batch size, split evenly over the workers")
    lr: float = Field(1e-3, gt=0, strict=True, allow_inf_nan=False, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, strict=True, allow_inf_nan=False, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, strict=True, allow_inf_nan=False,
                             description="max gradient norm (0 = no clipping)")
    val_fraction: float = Field(
        0.05, gt=0, lt=1, strict=True, allow_inf_nan=False,
        description="fraction of molecules (by a hash of mol_id) held out for validation")
    seed: int = Field(0, ge=0, strict=True, description="seed for initialisation, masking, dropout and shuffling")
    model: FusionSettings = Field(default_factory=FusionSettings,
                                  description="the fusion model's hyperparameters (latent size, widths, loss weights)")
    masking: MaskSchedule = Field(default_factory=MaskSchedule,
                                  description="the progressive masking schedule")
    cpus_per_worker: float | None = Field(
        None, gt=0, strict=True, allow_inf_nan=False,
        description="logical CPUs per worker (default: leave one CPU free for Ray Data, at most 1)")
    torch_threads: int | None = Field(
        None, ge=1, strict=True, description="intra-op threads per worker (default: the CPUs of a node / workers)")
    max_failures: int = Field(2, ge=0, strict=True, description="worker-group restarts from the last checkpoint")
    shuffle_buffer: int | None = Field(
        None, ge=0, strict=True,
        description="rows in each worker's local shuffle buffer while streaming from Ray Data "
                    "(default 4 batches; 0 = off)")
    worker_cache_mb: float = Field(
        1024, ge=0, strict=True, allow_inf_nan=False,
        description="keep each worker's shard in memory after its first epoch when it takes at most this many "
                    "MB, and shuffle it there (0 = stream every epoch from Ray Data)")
    data_loading: Literal["auto", "driver", "distributed"] = Field(
        "auto", description=f"one of {', '.join(DATA_LOADING)}: join on the driver (small stores) or with Ray Data")
    storage_path: str | None = Field(
        None, description=f"where Ray Train keeps checkpoints (default <out>/{TRAIN_DIR}; shared storage on a "
                          "multi-node cluster)")
    fresh: bool = Field(False, strict=True,
                        description="discard a finished model or an interrupted run in out and start over")

    @field_validator("modalities", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        # YAML and the CLI hand over a tuple or one name; the record and the card want a list.
        if isinstance(value, str):
            return [value]
        return list(value) if isinstance(value, tuple) else value

    @classmethod
    def cross_problems(cls, data: Mapping[str, Any]) -> list[str]:
        problems = []
        for name in ("store", "out"):
            v = data.get(name)
            if isinstance(v, str) and not v.strip():
                problems.append(f"{name}: must be a non-empty path, got {v!r}")
        mods = data.get("modalities")
        mods = [mods] if isinstance(mods, str) else list(mods) if isinstance(mods, (list, tuple)) else None
        if mods is not None:
            if not mods or not all(isinstance(m, str) and m.strip() for m in mods):
                problems.append(f"modalities: must be a non-empty list of names, got {mods!r}")
            dupes = sorted({str(m) for m in mods if mods.count(m) > 1})
            if dupes:
                problems.append(f"modalities: listed twice: {dupes}")
        workers, batch = data.get("workers"), data.get("batch_size", 256)
        if data.get("use_gpu") is True and workers == 0:
            problems.append("use_gpu needs workers >= 1 (workers=0 trains in the driver process)")
        if is_int(workers) and is_int(batch) and workers > 1 and batch < workers:
            problems.append(f"batch_size {batch} is the global batch: it must be >= workers ({workers})")
        return problems

    def flat_settings(self) -> dict[str, Any]:
        """Every setting as one flat JSON-able dict, the model's and the schedule's inline
        (``mask_`` before the schedule's names): what the model card and the run record hold."""
        flat = self.model_dump(exclude={"model", "masking"})
        flat.update(self.model.model_dump())
        flat.update({f"mask_{k}": v for k, v in self.masking.model_dump().items()})
        for key, value in _ADDED_LATER.items():
            if flat.get(key) == value:
                del flat[key]
        return flat

    def model_settings(self) -> dict[str, Any]:
        """flat_settings() without the operational ones: what makes two runs the same model."""
        return {k: v for k, v in self.flat_settings().items() if k not in OPERATIONAL_SETTINGS}


@dataclass
class TrainResult:
    model_dir: str
    metrics: dict[str, Any]  # the final epoch's metrics
    epochs_run: int  # epochs trained by this call (0 when the model was already complete)
    epochs_total: int
    resumed_from_epoch: int | None  # epochs already done when this call started, None if fresh
    worker_restarts: list[int]  # completed epochs a restarted worker group resumed from
    already_complete: bool
    n_train: int
    n_valid: int
    seconds: float
    metrics_file: str

    def summary(self) -> str:
        """'epochs 6/6 (3 in this run, resumed from epoch 3)': the model's epochs, then this call's."""
        if self.already_complete:
            detail = "already trained, nothing to do"
        else:
            detail = f"{self.epochs_run} in this run"
            if self.resumed_from_epoch:
                detail += f", resumed from epoch {self.resumed_from_epoch}"
            if self.worker_restarts:
                detail += f", worker restarts at epochs {self.worker_restarts}"
        return f"epochs {self.epochs_total}/{self.epochs_total} ({detail})"


class TrainingError(RuntimeError):
    """Ray Train gave up (worker failures beyond max_failures, or a bug in the loop)."""
