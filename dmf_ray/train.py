"""Fitting DynamicFusion on an embedding store with Ray Train: split, normalise, DDP, checkpoints.

    train(TrainConfig(store="./store", out="./model", epochs=20, workers=2))

What happens, in order:

1. the store's chosen modalities are joined on mol_id into one Ray Dataset (``read_numpy`` on
   the driver when the dense data fits comfortably in memory, the distributed ``read_dataset``
   join otherwise), split by a hash of mol_id into training and validation (stable across runs,
   stores and worker counts), and materialised once, so no epoch repeats the join;
2. per-modality mean/std over the PRESENT rows of the training split, merged from per-block
   moments (bounded memory), are set on the model: they travel in its state dict;
3. a TorchTrainer runs ``_train_loop_per_worker`` on ``workers`` DDP ranks (gloo on CPU, nccl on
   GPU); each rank streams its shard from Ray Data in its first epoch and, when the shard fits
   ``worker_cache_mb``, keeps it in memory for the next ones; each step masks modalities with
   the progressive probability p(t) of MaskSchedule;
4. after every epoch, rank 0 writes a checkpoint (weights in safetensors, optimizer state,
   epoch, metrics history) and ``<out>/metrics.jsonl``; a dead worker makes Ray restart the
   group from the last checkpoint (FailureConfig), and rerunning the same call resumes an
   interrupted run (same RunConfig name and storage path);
5. the driver turns the final checkpoint into the model directory (``save_fusion_model``) with a
   card naming the encoders, the training settings, the metrics and the versions.

Layout of ``out``::

    model.safetensors, config.json   the model (artifact.py), written last
    metrics.jsonl                    one JSON object per epoch
    _ray_train/run.json              the settings of the run these checkpoints belong to
    _ray_train/run/checkpoint_*/     Ray Train checkpoints (model.safetensors, optimizer.pt,
                                     state.json); the last two are kept
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmf_ray import __version__, fsutil
from dmf_ray.remote import (CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, delete_files, is_remote, mirror_files, publish_model,
                               staging_dir, upload_file)
from dmf_ray.model import (
    MASK_SCHEDULE_KINDS,
    DynamicFusion,
    FusionConfig,
    MaskSchedule,
    fusion_losses,
    sample_training_mask,
)

TRAIN_DIR = "_ray_train"
RUN_FILE = "run.json"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"
DATA_LOADING = ("auto", "driver", "distributed")
LOSS_TERMS = ("total", "reconstruction", "alignment", "diversity", "entropy", "sparsity")
# "auto" loading reads the store on the driver below this many dense float32 bytes: the Ray Data
# join costs 15-25 s of fixed overhead on 2 cores even for 5k molecules, read_numpy 0.1 s.
DRIVER_LOAD_MAX_BYTES = 2 << 30
_SPLIT_PERSON = b"dmf-valsplit"  # blake2b personalisation: the split is independent of mol_id's own hash


def _fusion_default(name: str):
    return next(f.default for f in fields(FusionConfig) if f.name == name)


def _schedule_default(name: str):
    return next(f.default for f in fields(MaskSchedule) if f.name == name)


# --------------------------------------------------------------------------------------------
# Config and result
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything `dmf train` takes. Fields starting with "_" are test hooks, never recorded."""

    store: str = field(metadata={"help": "embedding store to train on (local path or URI)"})
    out: str = field(metadata={"help": "model directory to write (local path)"})
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
# Validation split, normalisation statistics
# --------------------------------------------------------------------------------------------


def split_unit(mol_id: str) -> float:
    """A number in [0, 1) fixed by mol_id alone (blake2b), so the split never depends on row order,
    the store, the worker count or the Python hash seed."""
    digest = hashlib.blake2b(str(mol_id).encode(), digest_size=8, person=_SPLIT_PERSON).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def validation_mask(mol_ids: Iterable[str], val_fraction: float) -> np.ndarray:
    """Bool [N]: the molecule belongs to the validation split."""
    ids = list(mol_ids)
    return np.fromiter((split_unit(i) < val_fraction for i in ids), dtype=bool, count=len(ids))


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per feature (float64), mergeable (Chan et al.)
    so statistics can be computed block by block in any order with bounded memory."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(0))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        # Population std; a constant feature gets 0 and the model floors it at std_floor.
        return np.sqrt(self.m2 / max(self.count, 1))


def scale_of(moments: Moments, eps: float = 1e-6) -> np.ndarray:
    """The std to normalise by: a feature constant over the training split gets 1, not ~0.

    A fingerprint bit never set in training has std 0; floored at FusionConfig.std_floor it would
    turn a molecule that does set it into a 1e6 input (and a 1e12 reconstruction error). With 1
    it stays (x - mean), the StandardScaler convention."""
    std = moments.std.copy()
    std[std < eps] = 1.0
    return std


def batch_moments(values: Mapping[str, np.ndarray], present: np.ndarray, modalities: Sequence[str]) -> dict[str, Moments]:
    """Moments of each modality over the rows where it is present."""
    present = np.asarray(present, dtype=bool)
    return {m: Moments.of(np.asarray(values[m])[present[:, j]]) for j, m in enumerate(modalities)}


def _block_moments(batch: dict[str, np.ndarray], modalities: list[str]) -> dict[str, np.ndarray]:
    # One output row per block: count [M], and mean/m2 [d_m] per modality.
    moments = batch_moments(batch, batch["present"], modalities)
    out: dict[str, np.ndarray] = {"count": np.array([[moments[m].count for m in modalities]], dtype=np.int64)}
    for m in modalities:
        out[f"mean__{m}"] = moments[m].mean[None, :]
        out[f"m2__{m}"] = moments[m].m2[None, :]
    return out


def dataset_moments(ds, modalities: list[str], dims: list[int]) -> dict[str, Moments]:
    """Per-modality moments of a Ray Dataset (columns = modalities + present), one small row per
    block merged on the driver: no block is ever held twice."""
    total = {m: Moments.empty(d) for m, d in zip(modalities, dims)}
    parts = ds.map_batches(_block_moments, batch_format="numpy", batch_size=None, fn_kwargs={"modalities": modalities})
    for part in parts.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(part["count"])):
            for j, m in enumerate(modalities):
                block = Moments(int(part["count"][i, j]), part[f"mean__{m}"][i], part[f"m2__{m}"][i])
                total[m] = total[m].merge(block)
    return total


# --------------------------------------------------------------------------------------------
# One training step and one validation batch (used by the Ray workers and by plain loops)
# --------------------------------------------------------------------------------------------


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build has it: on CPU the default per-tensor loop costs
    ~15x the fused kernel for this model (69 vs 5 ms a step at 4.3M parameters), as much as
    the forward and backward of a 128-sample batch."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _unwrap(model: torch.nn.Module) -> DynamicFusion:
    return model.module if hasattr(model, "module") else model  # DDP wraps the model


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Sequence[Tensor],
    present: Tensor,
    p: float,
    generator: torch.Generator | None = None,
    grad_clip: float = 0.0,
) -> tuple[dict[str, Tensor], Tensor]:
    """Mask with probability p, forward, Eq. 1 loss, backward, optimizer step.

    Returns the detached loss terms (no host sync: callers accumulate them on the device) and
    the bool [B, M] mask that was applied. `model` may be DDP-wrapped."""
    masked = sample_training_mask(present, p, generator)
    out = model(list(inputs), present, masked)
    losses = fusion_losses(_unwrap(model).config, out)
    # Zeroed in place, not set to None: under DDP with gradient_as_bucket_view the gradients are
    # views of the communication buckets, which None would throw away and reallocate every step.
    optimizer.zero_grad(set_to_none=False)
    losses["total"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}, masked


def _cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


@torch.no_grad()
def validation_sums(model: DynamicFusion, inputs: Sequence[Tensor], present: Tensor) -> dict[str, Tensor]:
    """Sums (so batches and ranks add up) for the validation metrics of one batch:

    attention      [M] sum of attention with every present modality visible, rows with input
    cos, cos_n     [M] leave-one-out reconstruction: hide modality m where it is present and
                   something else is, reconstruct it from the rest, cosine against the true
                   normalised vector; sum and count
    loss, loss_n   Eq. 1 total of those leave-one-out passes, weighted by their rows
    """
    was_training = model.training
    model.eval()
    try:
        inputs = list(inputs)
        M = len(inputs)
        full = model(inputs, present)
        sums = {
            "attention": full.attention.float().sum(0),
            "rows": full.has_input.float().sum().reshape(1),
        }
        cos = torch.zeros(M, device=present.device)
        cos_n = torch.zeros(M, device=present.device)
        loss = torch.zeros(1, device=present.device)
        loss_n = torch.zeros(1, device=present.device)
        others = present.sum(1) >= 2
        for m in range(M):
            rows = (present[:, m] & others).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sub_present = present[rows]
            hide = torch.zeros_like(sub_present)
            hide[:, m] = True
            out = model([x[rows] for x in inputs], sub_present, hide)
            cos[m] = _cosine_rows(out.reconstructions[m], out.normalized_inputs[m]).sum()
            cos_n[m] = rows.numel()
            loss += fusion_losses(model.config, out)["total"] * rows.numel()
            loss_n += rows.numel()
        sums.update(cos=cos, cos_n=cos_n, loss=loss, loss_n=loss_n)
        return sums
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# The Ray Train loop (runs on every worker)
# --------------------------------------------------------------------------------------------


def _all_reduce(flat: Tensor) -> Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat)
    return flat


def _replica_spread(model: torch.nn.Module) -> float:
    """max - min over ranks of the sum of all weights: 0.0 while DDP keeps the replicas identical
    (a misconfigured DDP, e.g. static_graph here, lets them drift apart without any error)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return 0.0
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    both = torch.stack([total, -total])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return float(both[0] + both[1])


def _save_checkpoint(directory: str, model: DynamicFusion, optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(directory, CHECKPOINT_WEIGHTS))
    torch.save(optimizer.state_dict(), os.path.join(directory, CHECKPOINT_OPTIMIZER))
    with open(os.path.join(directory, CHECKPOINT_STATE), "w", encoding="utf-8") as f:
        json.dump(state, f, allow_nan=False)


def _load_checkpoint(directory: str, device) -> tuple[dict[str, Tensor], dict | None, dict]:
    from safetensors.torch import load_file

    weights = load_file(os.path.join(directory, CHECKPOINT_WEIGHTS), device="cpu")
    opt_path = os.path.join(directory, CHECKPOINT_OPTIMIZER)
    optimizer = torch.load(opt_path, map_location=device, weights_only=True) if os.path.exists(opt_path) else None
    with open(os.path.join(directory, CHECKPOINT_STATE), encoding="utf-8") as f:
        state = json.load(f)
    return weights, optimizer, state


def write_metrics_file(path: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the full history, atomically: after a resume it then holds
    exactly the epochs of the checkpoint it resumed from plus the new ones, never a duplicate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in history:
            f.write(json.dumps(row, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_metrics_file(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def format_metrics(m: Mapping[str, Any], modalities: Sequence[str]) -> str:
    def num(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    cos = " ".join(f"{n} {num(m.get(f'val/cos/{n}'))}" for n in modalities)
    att = " ".join(f"{n} {num(m.get(f'attention/{n}'), '.2f')}" for n in modalities)
    return (
        f"epoch {m['epoch']}/{m['epochs']}  loss {num(m['train/total'])} (rec {num(m['train/reconstruction'])})  "
        f"val loss {num(m['val/loss'])}  val cos {cos}  attention {att}  "
        f"mask p {m['mask_p']:.2f} rate {m['mask_rate']:.2f}  {m['samples_per_s']:,.0f} samples/s  "
        f"{m['epoch_time_s']:.1f} s"
    )


def _cached_batches(cached: Mapping[str, Tensor], batch_size: int, generator: torch.Generator):
    """Batches of a shard held in memory, in a fresh random order (from the epoch's generator)."""
    n = len(cached["present"])
    order = torch.randperm(n, generator=generator).to(cached["present"].device)
    for start in range(0, n, batch_size):
        idx = order[start: start + batch_size]
        yield {k: v[idx] for k, v in cached.items()}


def _progress(line: str, local_mode: bool) -> None:
    # In a Ray Train worker print() goes out twice (Ray tees it into its logger): log instead.
    if local_mode:
        print(line, flush=True)
    else:
        logging.getLogger("dmf_ray.train").info(line)


def _quiet_ray_report_log() -> None:
    # Ray 2.60 logs every report() with all its metrics at INFO, through a logger named after
    # its file rather than "ray.train...", which LoggingConfig(log_level) therefore misses.
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except Exception:  # another Ray version: its logs stay as they are
        pass


def _train_loop_per_worker(cfg: dict) -> dict:
    import ray.train
    import ray.train.torch

    _quiet_ray_report_log()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    device = ray.train.torch.get_device() if cfg["use_gpu"] else torch.device("cpu")
    fusion = FusionConfig.from_dict(cfg["fusion"])
    names = fusion.modalities
    M = len(names)
    schedule = MaskSchedule.from_dict(cfg["schedule"])
    epochs, steps_per_epoch = cfg["epochs"], cfg["steps_per_epoch"]

    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank (DDP broadcasts anyway)
    core = DynamicFusion(fusion)
    core.set_normalization({n: tuple(np.asarray(a) for a in pair) for n, pair in cfg["stats"].items()})
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "attempts": []}
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            weights, optimizer_state, state = _load_checkpoint(directory, device)
        core.load_state_dict(weights)
    state["attempts"].append({"call": cfg["call_id"], "start_epoch": state["epoch"], "world_size": world})

    if cfg["use_gpu"] or world > 1:
        # Gradients as views of the allreduce buckets: no copy in and out of them every step.
        ddp = {"gradient_as_bucket_view": True}
        if not cfg["use_gpu"]:
            # One bucket, reduced once backward is done. On CPU the gloo thread that overlaps
            # bucket reductions with backward competes with it for the same cores: with the
            # default 25 MB buckets a 2-worker step on 2 cores took 172 ms, with one bucket 74 ms.
            grad_mb = sum(p.numel() * p.element_size() for p in core.parameters()) / 2**20
            ddp["bucket_cap_mb"] = math.ceil(grad_mb) + 1
        model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs=ddp)
    else:
        model = core.to(device)
    optimizer = make_optimizer(core.parameters(), cfg["lr"], cfg["weight_decay"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()

    cached: dict[str, Tensor] | None = None  # this rank's shard, from the first epoch of this attempt
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    batch_args = {"device": device, "pin_memory": cfg["use_gpu"]}

    for epoch in range(state["epoch"], epochs):
        fail_at = cfg.get("fail_at_epoch")
        if fail_at == epoch + 1 and rank == world - 1 and not os.path.exists(cfg["fail_marker"]):
            Path(cfg["fail_marker"]).write_text(f"rank {rank} exited before epoch {epoch + 1}\n")
            # As for a real crash mid-epoch: the controller (polling every 2 s) has registered the
            # last checkpoint by the time the worker is gone.
            time.sleep(5.0)
            os._exit(1)

        # Per-epoch seeds: reproducible masks, dropout and order, whatever epoch a run resumes at.
        epoch_seed = cfg["seed"] * 1_000_003 + epoch * 1009 + rank
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)

        started = time.perf_counter()
        terms = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=device)
        counts = torch.zeros(4, dtype=torch.float64, device=device)  # steps, samples, masked, present
        step_in_epoch, step_time = 0, 0.0
        if cached is None:
            # Stream the shard from Ray Data; keep a copy when it fits the cache budget.
            keep: list[dict[str, Tensor]] | None = [] if cfg["cache_shard"] else None
            batches: Iterable[dict[str, Tensor]] = train_shard.iter_torch_batches(
                batch_size=cfg["per_worker_batch"], local_shuffle_buffer_size=cfg["shuffle_buffer"] or None,
                local_shuffle_seed=epoch_seed if cfg["shuffle_buffer"] else None, **batch_args,
            )
        else:
            keep = None
            batches = _cached_batches(cached, cfg["per_worker_batch"], generator)
        for batch in batches:
            step_started = time.perf_counter()
            present = batch["present"]
            p = schedule.probability((epoch + min(step_in_epoch / steps_per_epoch, 1.0)) / epochs)
            losses, masked = train_step(model, optimizer, [batch[n] for n in names], present, p, generator, cfg["grad_clip"])
            terms += torch.stack([losses[k] for k in LOSS_TERMS]).double()
            counts += torch.stack([
                torch.ones((), device=device), torch.tensor(float(len(present)), device=device),
                masked.sum(), present.sum(),
            ]).double()
            step_in_epoch += 1
            step_time += time.perf_counter() - step_started
            if keep is not None:
                keep.append({k: batch[k] for k in (*names, "present")})
        if keep:
            cached = {k: torch.cat([b[k] for b in keep]) for k in keep[0]}
            del keep
        train_time = time.perf_counter() - started

        val_started = time.perf_counter()
        val = {"attention": torch.zeros(M), "rows": torch.zeros(1), "cos": torch.zeros(M),
               "cos_n": torch.zeros(M), "loss": torch.zeros(1), "loss_n": torch.zeros(1)}
        val = {k: v.to(device=device, dtype=torch.float64) for k, v in val.items()}
        for batch in valid_shard.iter_torch_batches(batch_size=max(cfg["per_worker_batch"], 1024), **batch_args):
            for k, v in validation_sums(core, [batch[n] for n in names], batch["present"]).items():
                val[k] += v.double()
        val_time = time.perf_counter() - val_started

        keys = list(val)
        flat = torch.cat([terms, counts, *[val[k] for k in keys]])
        flat = _all_reduce(flat).cpu().numpy()
        terms_sum, count_sum = flat[: len(LOSS_TERMS)], flat[len(LOSS_TERMS): len(LOSS_TERMS) + 4]
        offset, reduced = len(LOSS_TERMS) + 4, {}
        for k in keys:
            reduced[k] = flat[offset: offset + val[k].numel()]
            offset += val[k].numel()

        steps, samples, n_masked, n_present = count_sum
        state["step"] += step_in_epoch
        state["epoch"] = epoch + 1
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "epochs": epochs,
            "step": state["step"],
            "mask_p": schedule.probability((epoch + 1) / epochs),
            "mask_rate": float(n_masked / max(n_present, 1)),
        }
        for k, v in zip(LOSS_TERMS, terms_sum):
            metrics[f"train/{k}"] = float(v / max(steps, 1))
        metrics["val/loss"] = float(reduced["loss"][0] / reduced["loss_n"][0]) if reduced["loss_n"][0] else None
        cos = [float(c / n) if n else None for c, n in zip(reduced["cos"], reduced["cos_n"])]
        for n, c in zip(names, cos):
            metrics[f"val/cos/{n}"] = c
        defined = [c for c in cos if c is not None]
        metrics["val/cos_mean"] = float(np.mean(defined)) if defined else None
        for n, a in zip(names, reduced["attention"]):
            metrics[f"attention/{n}"] = float(a / max(reduced["rows"][0], 1))
        metrics.update(
            train_samples=int(samples), samples_per_s=float(samples / max(train_time, 1e-9)),
            train_time_s=train_time, val_time_s=val_time, epoch_time_s=time.perf_counter() - started,
            # Rank 0's time outside its steps: waiting for batches from Ray Data (on GPU the
            # steps are asynchronous, so this is a lower bound there).
            data_wait_s=max(train_time - step_time, 0.0),
            replica_spread=_replica_spread(core),
            lr=cfg["lr"],
        )
        state["history"].append(metrics)

        if rank == 0:
            # Ray copies the folder into the run's storage during report(); the local mode
            # (workers=0) keeps it where it is, so it lives under out, not in /tmp.
            staging = cfg["local_checkpoints"] or tempfile.gettempdir()
            os.makedirs(staging, exist_ok=True)
            directory = tempfile.mkdtemp(prefix=f"epoch-{epoch + 1:04d}-", dir=staging)
            _save_checkpoint(directory, core, optimizer, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
            if cfg["local_checkpoints"]:
                for old in Path(staging).glob("epoch-*"):
                    if str(old) != directory:
                        shutil.rmtree(old, ignore_errors=True)
            else:
                shutil.rmtree(directory, ignore_errors=True)
            try:
                write_metrics_file(cfg["metrics_path"], state["history"])
            except OSError as exc:  # e.g. out is not reachable from this node: the driver writes it at the end
                _progress(f"[dmf train] could not write {cfg['metrics_path']}: {exc}", local_mode=False)
            _progress(f"[dmf train] {format_metrics(metrics, names)}", local_mode=bool(cfg["local_checkpoints"]))
        else:
            ray.train.report(metrics)
    return {"epoch": state["epoch"], "history": state["history"], "attempts": state["attempts"]}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _fingerprint(config: TrainConfig, store, names: list[str]) -> dict[str, Any]:
    """What makes two runs the same model: the settings that change it plus the store's content
    (its committed shards of each chosen modality)."""
    from dmf_ray.store import modality_table

    settings = {k: v for k, v in config.public_dict().items() if k not in _OPERATIONAL}
    settings["modalities"] = list(names)
    settings["store"] = _absolute(config.store)
    shards = {n: sorted(store.committed_keys(modality_table(n))) for n in names}
    digest = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()[:16]
    return {"settings": settings, "store_shards": digest}


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _differences(old: Mapping, new: Mapping) -> list[str]:
    out = []
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    for k in sorted(set(old_s) | set(new_s)):
        if old_s.get(k) != new_s.get(k):
            out.append(f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}")
    if old.get("store_shards") != new.get("store_shards"):
        out.append("the store's content changed (shards were added or rewritten)")
    return out


def _resolve_modalities(store, requested: list[str] | None) -> list[str]:
    available = list(store.modalities)
    if not available:
        raise ValueError(f"store {store.uri} is empty: it has no modalities (run `dmf featurize` first)")
    if requested is None:
        return available
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise ValueError(
            f"unknown modality {unknown[0]!r}: store {store.uri} has {', '.join(available)}"
        )
    return list(requested)


def _estimate_dense_bytes(store, names: list[str]) -> int:
    import pyarrow.parquet as pq

    rows = max(
        sum(pq.read_metadata(f, filesystem=store.fs).num_rows for f in store.modality_files(n)) for n in names
    )
    return rows * sum(int(store.modalities[n]["dim"]) for n in names) * 4


def _tag_split(batch: dict[str, np.ndarray], val_fraction: float) -> dict[str, np.ndarray]:
    out = {k: v for k, v in batch.items() if k != "mol_id"}
    out["_valid"] = validation_mask(batch["mol_id"], val_fraction)
    return out


def _blocks_from_arrays(values: Mapping[str, np.ndarray], present: np.ndarray, names: list[str], index: np.ndarray):
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    row_bytes = 4 * sum(values[n].shape[1] for n in names) + len(names)
    rows = int(min(8192, max(256, (16 << 20) // row_bytes)))  # ~16 MB blocks
    tables = []
    for start in range(0, len(index), rows):
        idx = index[start: start + rows]
        columns = {n: ArrowTensorArray.from_numpy(np.ascontiguousarray(values[n][idx], dtype=np.float32)) for n in names}
        columns["present"] = ArrowTensorArray.from_numpy(np.ascontiguousarray(present[idx]))
        tables.append(pa.table(columns))
    return tables


@dataclass
class TrainingData:
    train: Any  # materialised Ray Dataset: one float32 [d_m] column per modality + present bool [M]
    valid: Any
    n_train: int
    n_valid: int
    moments: dict[str, Moments]  # of the training split, present rows only
    mode: str  # "driver" or "distributed"


def load_training_data(store, names: list[str], config: TrainConfig) -> TrainingData:
    """Join, split by mol_id and materialise the store's chosen modalities; moments of the
    training split come with it (from the arrays already in memory, or a streaming pass)."""
    import ray

    mode = config.data_loading
    if mode == "auto":
        mode = "driver" if _estimate_dense_bytes(store, names) <= DRIVER_LOAD_MAX_BYTES else "distributed"
    dims = [int(store.modalities[n]["dim"]) for n in names]
    if mode == "driver":
        arrays = store.read_numpy(names)
        is_valid = validation_mask(arrays.mol_ids, config.val_fraction)
        train_rows, valid_rows = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
        moments = {m: Moments.empty(d) for m, d in zip(names, dims)}
        for start in range(0, len(train_rows), 8192):  # float64 copies of 8k rows at a time
            rows = train_rows[start: start + 8192]
            part = batch_moments({m: arrays.values[m][rows] for m in names}, arrays.present[rows], names)
            moments = {m: moments[m].merge(part[m]) for m in names}
        datasets = []
        for rows in (train_rows, valid_rows):
            tables = _blocks_from_arrays(arrays.values, arrays.present, names, rows)
            datasets.append(ray.data.from_arrow(tables) if tables else None)
        return TrainingData(datasets[0], datasets[1], len(train_rows), len(valid_rows), moments, mode)

    from ray.data.expressions import col

    joined = (
        store.read_dataset(names)
        .map_batches(_tag_split, batch_format="numpy", fn_kwargs={"val_fraction": config.val_fraction})
        .materialize()
    )
    train = joined.filter(expr=col("_valid") == False).drop_columns(["_valid"]).materialize()  # noqa: E712
    valid = joined.filter(expr=col("_valid") == True).drop_columns(["_valid"]).materialize()  # noqa: E712
    del joined
    n_train, n_valid = train.count(), valid.count()
    moments = dataset_moments(train, names, dims) if n_train else {m: Moments.empty(d) for m, d in zip(names, dims)}
    return TrainingData(train, valid, n_train, n_valid, moments, mode)


def _default_resources(config: TrainConfig) -> tuple[float, int]:
    """(CPUs reserved per worker, torch threads per worker)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    node_cpus = max([float(r.get("CPU", 0)) for r in nodes] or [1.0])
    total_cpus = float(ray.cluster_resources().get("CPU", node_cpus))
    workers = max(config.workers, 1)
    if config.cpus_per_worker is not None:
        cpus = float(config.cpus_per_worker)
    elif config.use_gpu:
        cpus = 1.0
    else:
        # Leave one CPU to Ray Data (the validation split and the stats pass run as tasks;
        # workers holding every CPU starve them, ray-project/ray#44687).
        cpus = round(min(1.0, max(0.1, (total_cpus - 1) / workers)), 2)
    threads = config.torch_threads or max(1, int(min(node_cpus, total_cpus) // workers))
    return cpus, threads


def _prepare_out_dir(config: TrainConfig, fingerprint: dict) -> str | None:
    """Returns 'complete' if out already holds this model, 'resume' if it holds an interrupted run
    of it, None for a fresh start; raises if it holds something else."""
    from dmf_ray.artifact import read_model_config

    out = Path(config.out)
    run_file = out / TRAIN_DIR / RUN_FILE
    ours = [out / CONFIG_FILE, out / WEIGHTS_FILE, out / METRICS_FILE, out / TRAIN_DIR]
    if config.fresh:
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if config.storage_path is not None:  # checkpoints kept elsewhere would be resumed by Ray
            fs, root = fsutil.resolve(config.storage_path)
            run = fsutil.join(root, _run_name(config))
            if fsutil.exists(fs, run):
                fs.delete_dir(run)
        return None
    if (out / CONFIG_FILE).exists():
        card = read_model_config(out)
        old = card.get("training", {}).get("fingerprint")
        if old == fingerprint:
            return "complete"
        if old is None:
            raise ValueError(f"{out} holds a model that `dmf train` did not write; pass fresh/--overwrite to replace it")
        raise ValueError(
            f"{out} holds a model trained with other settings ({'; '.join(_differences(old, fingerprint))}); "
            f"pass fresh/--overwrite to retrain, or choose another out"
        )
    if run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        if old != fingerprint:
            raise ValueError(
                f"{out} holds an interrupted run with other settings ({'; '.join(_differences(old, fingerprint))}); "
                f"rerun with those settings to resume it, or pass fresh/--overwrite to start over"
            )
        return "resume"
    if out.exists() and any(p.name != METRICS_FILE for p in out.iterdir()):
        raise ValueError(f"{out} exists, is not empty and is not a dmf_ray model directory")
    return None


def _stage_remote_out(config: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """out on s3:// (or any remote filesystem): train into a local staging directory that mirrors
    it, publish the model there at the end. Ray Train keeps its checkpoints under
    <out>/_ray_train on the remote filesystem itself, where every node and any later driver sees
    them, so a rerun from another machine resumes too; run.json travels with them."""
    remote_files = [CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, f"{TRAIN_DIR}/{RUN_FILE}"]
    stage = staging_dir(config.out)
    if config.fresh:
        delete_files(config.out, remote_files)
    mirror_files(config.out, stage, remote_files)
    storage = config.storage_path or fsutil.join_uri(config.out, TRAIN_DIR)
    log(f"out is remote: staging in {stage}, checkpoints in {storage}")
    return replace(config, out=str(stage), storage_path=storage,
                   _publish_to=config.out)


def _versions() -> dict[str, str]:
    import ray
    import rdkit

    return {"dmf_ray": __version__, "torch": torch.__version__, "ray": ray.__version__,
            "rdkit": rdkit.__version__, "python": platform.python_version()}


def _run_name(config: TrainConfig) -> str:
    if config.storage_path is None or config._publish_to is not None:
        return "run"  # the storage lives inside out, so out can be moved or renamed
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(_absolute(config.out)).name)
    return f"dmf-train-{base}-{hashlib.sha256(_absolute(config.out).encode()).hexdigest()[:8]}"


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume, or recognise as done) the model `config` describes; see the module doc.

    Starts a local Ray if none is connected. Raises ValueError naming the problem for a bad
    config, an unknown modality, an empty store or too few molecules to hold out a validation
    split, and TrainingError when Ray Train gives up (rerun the same call to resume)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dmf_ray.artifact import read_model_config, save_fusion_model
    from dmf_ray.runtime import ensure_ray
    from dmf_ray.store import EmbeddingStore

    started = time.time()
    config.validate()
    if is_remote(config.out):
        config = _stage_remote_out(config, log)
    published = config._publish_to or config.out
    published_metrics = fsutil.join_uri(published, METRICS_FILE) if config._publish_to else None
    store = EmbeddingStore.open(config.store)
    names = _resolve_modalities(store, config.modalities)
    dims = [int(store.modalities[n]["dim"]) for n in names]
    config.fusion_config(names, dims)  # validate model settings before any Ray work
    if len(names) == 1:
        log(f"warning: training on one modality ({names[0]}): nothing is ever masked or reconstructed")
    fingerprint = _fingerprint(config, store, names)
    out = Path(config.out)
    metrics_path = out / METRICS_FILE
    status = _prepare_out_dir(config, fingerprint)
    if status == "complete":
        card = read_model_config(out)
        log(f"{published} already holds this model (trained {card['training'].get('epochs')} epochs); nothing to do "
            f"(pass fresh/--overwrite to retrain)")
        return TrainResult(published, card.get("metrics", {}), 0, config.epochs, config.epochs, [], True,
                           int(card["training"].get("n_train", 0)), int(card["training"].get("n_valid", 0)),
                           time.time() - started, published_metrics or str(metrics_path))
    if status == "resume":
        if config.workers == 0:
            log(f"note: {out / TRAIN_DIR} holds an interrupted run, but workers=0 trains in-process and "
                f"cannot resume: starting from epoch 0")
        else:
            log(f"resuming the interrupted run in {out / TRAIN_DIR}")

    ensure_ray()
    data = load_training_data(store, names, config)
    n_train, n_valid, mode = data.n_train, data.n_valid, data.mode
    world = max(config.workers, 1)
    if n_train + n_valid == 0:
        raise ValueError(f"store {store.uri} has no molecules with any of {', '.join(names)}")
    if n_valid == 0 or n_train < max(2, world):
        raise ValueError(
            f"too few molecules for a validation split: {n_train + n_valid} molecules with val_fraction "
            f"{config.val_fraction} give {n_train} training and {n_valid} validation molecules; need at least "
            f"{max(2, world)} and 1 (add molecules or raise val_fraction)"
        )
    log(f"data: {n_train:,} training and {n_valid:,} validation molecules ({mode} join of {', '.join(names)})")

    moments = data.moments
    for n in names:
        if moments[n].count == 0:
            log(f"warning: no training molecule has {n}; its normalisation stays mean 0, std 1")
    stats = {n: [moments[n].mean.tolist(), scale_of(moments[n]).tolist()] for n in names if moments[n].count}

    cpus, threads = _default_resources(config)
    per_worker_batch = max(1, config.batch_size // world)
    steps_per_epoch = max(1, math.ceil((n_train // world) / per_worker_batch))
    run_dir = Path(_absolute(str(out / TRAIN_DIR)))  # always local: run.json, test markers, local mode
    storage = _absolute(config.storage_path) if config.storage_path else str(run_dir)
    local_mode = config.workers == 0
    call_id = uuid.uuid4().hex
    loop_config = {
        "fusion": config.fusion_config(names, dims).to_dict(),
        "stats": stats,
        "schedule": config.schedule().to_dict(),
        "epochs": config.epochs,
        "steps_per_epoch": steps_per_epoch,
        "per_worker_batch": per_worker_batch,
        "shuffle_buffer": config.shuffle_buffer if config.shuffle_buffer is not None else 4 * per_worker_batch,
        "cache_shard": (n_train // world) * 4 * (sum(dims) + len(dims)) <= config.worker_cache_mb * 2**20,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip,
        "seed": config.seed,
        "use_gpu": config.use_gpu,
        "torch_threads": threads,
        "metrics_path": str(_absolute(str(metrics_path))),
        "local_checkpoints": str(run_dir / "local") if local_mode else None,
        "call_id": call_id,
        "fail_at_epoch": config._fail_at_epoch,
        "fail_marker": str(run_dir / f"fail-injected-epoch-{config._fail_at_epoch}"),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps(fingerprint, indent=2), encoding="utf-8")
    if config._publish_to:  # a later driver on another machine must see which run the checkpoints are of
        upload_file(run_dir / RUN_FILE, *fsutil.resolve(fsutil.join_uri(config._publish_to, TRAIN_DIR, RUN_FILE)))

    log(f"training: {config.workers} worker(s) x {cpus:g} CPU, {threads} thread(s) each"
        f"{', 1 GPU each' if config.use_gpu else ''}; global batch {per_worker_batch * world}, "
        f"{steps_per_epoch} steps/epoch, {config.epochs} epochs; checkpoints in {storage}")
    resources = {"CPU": cpus}
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=_run_name(config),
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines repeat every metric of every rank; rank 0 prints one line.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": data.train, "valid": data.valid},
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # WorkerGroupError / ControllerError / TrainingFailedError
        raise TrainingError(
            f"training failed ({type(exc).__name__}: {exc}); rerun the same command to resume from the "
            f"last checkpoint in {storage}"
        ) from exc
    if result.checkpoint is None:
        raise TrainingError(f"training finished without a checkpoint in {storage}")

    with result.checkpoint.as_directory() as directory:
        weights, _, state = _load_checkpoint(directory, "cpu")
    if state["epoch"] != config.epochs:
        raise TrainingError(f"the last checkpoint is at epoch {state['epoch']}, expected {config.epochs}")
    model = DynamicFusion(config.fusion_config(names, dims))
    model.load_state_dict(weights)
    history = state["history"]
    write_metrics_file(metrics_path, history)  # the driver's copy, wherever rank 0 ran

    attempts = [a for a in (result.return_value or {}).get("attempts", state["attempts"]) if a["call"] == call_id]
    first_start = attempts[0]["start_epoch"] if attempts else state["epoch"]
    resumed_from = first_start if first_start > 0 else None
    restarts = [a["start_epoch"] for a in attempts[1:]]
    epochs_run = config.epochs - first_start

    manifest = store.manifest
    card = {
        "modalities": {n: dict(store.modalities[n]) for n in names},
        "training": {
            **config.public_dict(),
            "store": _absolute(config.store),
            "out": _absolute(published),
            "modalities": names,
            "n_train": int(n_train),
            "n_valid": int(n_valid),
            "data_loading": mode,
            "world_size": world,
            "per_worker_batch_size": per_worker_batch,
            "steps_per_epoch": steps_per_epoch,
            "fingerprint": fingerprint,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "metrics": history[-1] if history else {},
        "versions": _versions(),
        "store_manifest": {k: manifest.get(k) for k in ("format", "format_version", "created_at", "updated_at",
                                                         "created_by", "versions", "id_scheme", "shard_rows")},
    }
    save_fusion_model(out, model, card)
    if config._publish_to:
        publish_model(out, config._publish_to)
    final = history[-1] if history else {}
    log(f"model written to {published} ({config.epochs} epochs, {epochs_run} in this run"
        f"{f', resumed from epoch {resumed_from}' if resumed_from else ''}"
        f"{f', worker restarts at epochs {restarts}' if restarts else ''}); final: "
        f"{format_metrics(final, names) if final else 'no metrics'}")
    return TrainResult(published, final, epochs_run, config.epochs, resumed_from, restarts, False,
                       int(n_train), int(n_valid), time.time() - started, published_metrics or str(metrics_path))


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
