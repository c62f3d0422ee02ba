"""Training settings (TrainConfig), the result of a run, and the command-line arguments that
build a TrainConfig (shared by `dmf train` and jobs/train.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dmf_ray.model import MASK_SCHEDULE_KINDS, FusionConfig, MaskSchedule

TRAIN_DIR = "_ray_train"
RUN_FILE = "run.json"
DATA_LOADING = ("auto", "driver", "distributed")


def _fusion_default(name: str):
    return FusionConfig.model_fields[name].default


def _schedule_default(name: str):
    return MaskSchedule.model_fields[name].default


# --------------------------------------------------------------------------------------------
# Config and result
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything `dmf train` takes. Fields starting with "_" are test hooks, never recorded."""

    store: str = field(metadata={"help": "embedding store to train on (local path or URI)"})
    out: str = field(metadata={"help": "model directory to write (local path, or a URI such as s3://...)"})
    modalities: list[str] | None = field(
        default=None, metadata={"help": "modalities to fuse, in this order (default: all in the store)"}
    )
    epochs: int = field(default=20, metadata={"help": "passes over the training split"})
    workers: int = field(
        default=2, metadata={"help": "Ray Train DDP workers; 0 runs in-process (no checkpoints, no resume)"}
    )
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker (DDP over nccl)"})
    latent_dim: int = field(default=_fusion_default("latent_dim"), metadata={"help": "fused vector dim"})
    batch_size: int = field(
        default=256, metadata={"help": "global batch size, split evenly over the workers"}
    )
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = no clipping)"})
    mask_p_start: float = field(
        default=_schedule_default("p_start"), metadata={"help": "masking probability at the start"}
    )
    mask_p_end: float = field(
        default=_schedule_default("p_end"), metadata={"help": "masking probability at the end"}
    )
    mask_kind: str = field(
        default=_schedule_default("kind"), metadata={"help": f"masking schedule, one of {MASK_SCHEDULE_KINDS}"}
    )
    val_fraction: float = field(
        default=0.05, metadata={"help": "fraction of molecules (by a hash of mol_id) held out for validation"}
    )
    seed: int = field(default=0, metadata={"help": "seed for initialisation, masking, dropout and shuffling"})
    gate_hidden: int = field(default=_fusion_default("gate_hidden"), metadata={"help": "gate MLP width"})
    attention_hidden: int = field(
        default=_fusion_default("attention_hidden"), metadata={"help": "attention scorer width"}
    )
    decoder_hidden: int = field(default=_fusion_default("decoder_hidden"), metadata={"help": "decoder MLP width"})
    dropout: float = field(default=_fusion_default("dropout"), metadata={"help": "dropout in gates and decoders"})
    align_weight: float = field(default=_fusion_default("align_weight"), metadata={"help": "lambda_a"})
    diversity_weight: float = field(default=_fusion_default("diversity_weight"), metadata={"help": "lambda_d"})
    entropy_weight: float = field(default=_fusion_default("entropy_weight"), metadata={"help": "lambda_e"})
    sparsity_weight: float = field(default=_fusion_default("sparsity_weight"), metadata={"help": "lambda_s"})
    cpus_per_worker: float | None = field(
        default=None,
        metadata={"help": "logical CPUs per worker (default: leave one CPU free for Ray Data, at most 1)"},
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "intra-op threads per worker (default: the CPUs of a node / workers)"}
    )
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts from the last checkpoint"})
    shuffle_buffer: int | None = field(
        default=None,
        metadata={"help": "rows in each worker's local shuffle buffer while streaming from Ray Data "
                          "(default 4 batches; 0 = off)"},
    )
    worker_cache_mb: float = field(
        default=1024,
        metadata={"help": "keep each worker's shard in memory after its first epoch when it takes at most "
                          "this many MB, and shuffle it there (0 = stream every epoch from Ray Data)"},
    )
    data_loading: str = field(
        default="auto",
        metadata={"help": f"one of {DATA_LOADING}: join on the driver (small stores) or with Ray Data"},
    )
    storage_path: str | None = field(
        default=None,
        metadata={"help": f"where Ray Train keeps checkpoints (default <out>/{TRAIN_DIR}; shared storage on a multi-node cluster)"},
    )
    fresh: bool = field(
        default=False, metadata={"help": "discard a finished model or an interrupted run in out and start over"}
    )
    _fail_at_epoch: int | None = field(
        default=None, metadata={"help": "test hook: the last rank exits once before this (1-based) epoch"}
    )
    _publish_to: str | None = field(
        default=None, metadata={"help": "set by train() for a remote out: the URI out stages for"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.modalities, (tuple, str)):
            self.modalities = [self.modalities] if isinstance(self.modalities, str) else list(self.modalities)
        self.validate()

    def validate(self) -> None:
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("store", "out"):
            v = getattr(self, name)
            need(isinstance(v, str) and bool(v.strip()), f"{name} must be a non-empty path, got {v!r}")
        if self.modalities is not None:
            mods = self.modalities
            need(isinstance(mods, list) and len(mods) > 0 and all(isinstance(m, str) and m for m in mods),
                 f"modalities must be a non-empty list of names, got {mods!r}")
            if isinstance(mods, list):
                dupes = sorted({m for m in mods if mods.count(m) > 1}, key=str)
                need(not dupes, f"modalities are listed twice: {dupes}")
        need(is_int(self.epochs) and self.epochs >= 1, f"epochs must be an int >= 1, got {self.epochs!r}")
        need(is_int(self.workers) and self.workers >= 0, f"workers must be an int >= 0, got {self.workers!r}")
        need(isinstance(self.use_gpu, bool), f"use_gpu must be true or false, got {self.use_gpu!r}")
        if self.use_gpu and self.workers == 0:
            problems.append("use_gpu needs workers >= 1 (workers=0 trains in the driver process)")
        for name in ("latent_dim", "batch_size", "gate_hidden", "attention_hidden", "decoder_hidden"):
            v = getattr(self, name)
            need(is_int(v) and v >= 1, f"{name} must be an int >= 1, got {v!r}")
        if is_int(self.batch_size) and is_int(self.workers) and self.workers > 1:
            need(self.batch_size >= self.workers,
                 f"batch_size {self.batch_size} is the global batch: it must be >= workers ({self.workers})")
        need(is_real(self.lr) and self.lr > 0, f"lr must be a number > 0, got {self.lr!r}")
        for name in ("weight_decay", "grad_clip", "align_weight", "diversity_weight", "entropy_weight",
                     "sparsity_weight"):
            v = getattr(self, name)
            need(is_real(v) and v >= 0, f"{name} must be a number >= 0, got {v!r}")
        need(is_real(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("mask_p_start", "mask_p_end"):
            v = getattr(self, name)
            need(is_real(v) and 0 <= v <= 1, f"{name} must be a probability in [0, 1], got {v!r}")
        need(self.mask_kind in MASK_SCHEDULE_KINDS, f"mask_kind must be one of {MASK_SCHEDULE_KINDS}, got {self.mask_kind!r}")
        need(is_real(self.val_fraction) and 0 < self.val_fraction < 1,
             f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        need(is_int(self.seed) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        if self.cpus_per_worker is not None:
            need(is_real(self.cpus_per_worker) and self.cpus_per_worker > 0,
                 f"cpus_per_worker must be a number > 0, got {self.cpus_per_worker!r}")
        if self.torch_threads is not None:
            need(is_int(self.torch_threads) and self.torch_threads >= 1,
                 f"torch_threads must be an int >= 1, got {self.torch_threads!r}")
        need(is_int(self.max_failures) and self.max_failures >= 0,
             f"max_failures must be an int >= 0, got {self.max_failures!r}")
        need(is_real(self.worker_cache_mb) and self.worker_cache_mb >= 0,
             f"worker_cache_mb must be a number >= 0, got {self.worker_cache_mb!r}")
        if self.shuffle_buffer is not None:
            need(is_int(self.shuffle_buffer) and self.shuffle_buffer >= 0,
                 f"shuffle_buffer must be an int >= 0, got {self.shuffle_buffer!r}")
        need(self.data_loading in DATA_LOADING, f"data_loading must be one of {DATA_LOADING}, got {self.data_loading!r}")
        if self._fail_at_epoch is not None:
            need(is_int(self._fail_at_epoch) and self._fail_at_epoch >= 1,
                 f"_fail_at_epoch must be an int >= 1, got {self._fail_at_epoch!r}")
        if problems:
            raise ValueError("invalid TrainConfig:\n  - " + "\n  - ".join(problems))

    def public_dict(self) -> dict[str, Any]:
        """The settings worth recording (test hooks left out)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def schedule(self) -> MaskSchedule:
        return MaskSchedule(p_start=self.mask_p_start, p_end=self.mask_p_end, kind=self.mask_kind)

    def fusion_config(self, modalities: list[str], dims: list[int]) -> FusionConfig:
        return FusionConfig(
            modalities=list(modalities), dims=list(dims), latent_dim=self.latent_dim,
            gate_hidden=self.gate_hidden, attention_hidden=self.attention_hidden,
            decoder_hidden=self.decoder_hidden, dropout=self.dropout,
            align_weight=self.align_weight, diversity_weight=self.diversity_weight,
            entropy_weight=self.entropy_weight, sparsity_weight=self.sparsity_weight,
        )


# Settings that change the trained model; the others (workers, CPUs, paths...) only change how
# it is computed, so a rerun that differs only in those may resume or reuse the result.
_OPERATIONAL = {"out", "workers", "use_gpu", "cpus_per_worker", "torch_threads", "max_failures",
                "worker_cache_mb", "data_loading", "storage_path", "fresh"}


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


class TrainingError(RuntimeError):
    """Ray Train gave up (worker failures beyond max_failures, or a bug in the loop)."""



# --------------------------------------------------------------------------------------------
# Command-line arguments (shared by `dmf train` and jobs/train.py)
# --------------------------------------------------------------------------------------------

_FLAG_NAMES = {"use_gpu": "gpu", "fresh": "overwrite"}
_HIDDEN = {"store", "out"}


def add_train_arguments(parser) -> None:
    """Add one flag per public TrainConfig field (help from the field's metadata)."""
    parser.add_argument("--store", required=True, help=_help("store"))
    parser.add_argument("--out", required=True, help=_help("out"))
    for f in fields(TrainConfig):
        if f.name.startswith("_") or f.name in _HIDDEN:
            continue
        flag = "--" + _FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.name == "modalities":
            parser.add_argument(flag, dest=f.name, type=_name_list, default=None, help=help_text + "; comma-separated")
        elif f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float,
                    "str | None": str}[str(f.type)]
            choices = {"mask_kind": MASK_SCHEDULE_KINDS, "data_loading": DATA_LOADING}.get(f.name)
            default = f.default
            if "default" not in help_text:
                help_text += f" (default: {default if default is not None else 'auto'})"
            parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=choices, help=help_text)


def _help(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(TrainConfig) if f.name == name)


def _name_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        import argparse

        raise argparse.ArgumentTypeError("give at least one modality")
    return items


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig) if not f.name.startswith("_")}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
