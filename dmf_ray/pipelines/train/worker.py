"""The Ray Train loop that runs on every worker: DDP, progressive masking, per-epoch validation,
checkpoints and metrics. The driver hands each worker one typed WorkerPlan."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmf_ray.model import LOSS_TERMS, DynamicFusion, FusionConfig, MaskSchedule
from dmf_ray.pipelines.train.checkpoints import format_metrics, load_checkpoint, save_checkpoint, write_metrics_file
from dmf_ray.pipelines.train.data import ArrayShards
from dmf_ray.pipelines.train.step import make_optimizer, train_step, validation_sums

_VAL_KEYS = ("attention", "rows", "cos", "cos_n", "loss", "loss_n")


@dataclass
class WorkerPlan:
    """Everything a worker needs, decided once by the driver."""

    fusion: FusionConfig
    stats: dict[str, tuple[list[float], list[float]]]  # {modality: (mean, std)} of the training split
    schedule: MaskSchedule
    epochs: int
    steps_per_epoch: int
    per_worker_batch: int
    shuffle_buffer: int  # rows of the local shuffle buffer while streaming (0 = off)
    cache_shard: bool  # keep the shard in memory after the first epoch
    lr: float
    weight_decay: float
    grad_clip: float
    seed: int
    use_gpu: bool
    torch_threads: int
    metrics_path: str
    local_checkpoints: str | None  # workers=0: checkpoints kept here, under out
    call_id: str  # tells this call's attempts from earlier ones in the checkpoint's state
    shards: ArrayShards | None = None  # driver mode: the data per rank (else Ray Data's "train"/"valid")
    fail_at_epoch: int | None = None  # fault injection for tests (DMF_TRAIN_FAIL_AT_EPOCH), else None
    fail_marker: str | None = None


@dataclass
class _Epoch:
    """What one rank measured in one epoch, before the all-reduce."""

    terms: Tensor  # float64 [len(LOSS_TERMS)], summed over steps
    counts: Tensor  # float64 [4]: steps, samples, masked, present
    val: dict[str, Tensor] = field(default_factory=dict)
    steps: int = 0
    step_time: float = 0.0
    train_time: float = 0.0
    val_time: float = 0.0


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


def cached_batches(cached: Mapping[str, Tensor], batch_size: int, generator: torch.Generator):
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
        logging.getLogger("dmf_ray.pipelines.train.driver").info(line)


def _quiet_ray_report_log() -> None:
    # Ray 2.60 logs every report() with all its metrics at INFO, through a logger named after
    # its file rather than "ray.train...", which LoggingConfig(log_level) therefore misses.
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except Exception:  # another Ray version: its logs stay as they are
        pass


def _build(plan: WorkerPlan, device: torch.device, world: int):
    """(bare model, the model to step (DDP-wrapped when distributed), optimizer, loop state),
    restored from Ray Train's checkpoint when there is one."""
    import ray.train
    import ray.train.torch

    torch.manual_seed(plan.seed)  # the same initial weights on every rank (DDP broadcasts anyway)
    core = DynamicFusion(plan.fusion)
    core.set_normalization({n: tuple(np.asarray(a) for a in pair) for n, pair in plan.stats.items()})
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "attempts": []}
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            weights, optimizer_state, state = load_checkpoint(directory, device)
        core.load_state_dict(weights)
    state["attempts"].append({"call": plan.call_id, "start_epoch": state["epoch"], "world_size": world})

    if plan.use_gpu or world > 1:
        # Gradients as views of the allreduce buckets: no copy in and out of them every step.
        ddp: dict[str, Any] = {"gradient_as_bucket_view": True}
        if not plan.use_gpu:
            # One bucket, reduced once backward is done. On CPU the gloo thread that overlaps
            # bucket reductions with backward competes with it for the same cores: with the
            # default 25 MB buckets a 2-worker step on 2 cores took 172 ms, with one bucket 74 ms.
            grad_mb = sum(p.numel() * p.element_size() for p in core.parameters()) / 2**20
            ddp["bucket_cap_mb"] = math.ceil(grad_mb) + 1
        model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs=ddp)
    else:
        model = core.to(device)
    optimizer = make_optimizer(core.parameters(), plan.lr, plan.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()
    return core, model, optimizer, state


def _maybe_fail(plan: WorkerPlan, epoch: int, rank: int, world: int) -> None:
    """Fault injection for tests: the last rank exits once, before epoch ``fail_at_epoch``."""
    if plan.fail_at_epoch != epoch + 1 or rank != world - 1 or os.path.exists(plan.fail_marker):
        return
    Path(plan.fail_marker).write_text(f"rank {rank} exited before epoch {epoch + 1}\n")
    # As for a real crash mid-epoch: the controller (polling every 2 s) has registered the
    # last checkpoint by the time the worker is gone.
    time.sleep(5.0)
    os._exit(1)


def _train_epoch(plan: WorkerPlan, model, optimizer, epoch: int, batches: Iterable[dict[str, Tensor]],
                 generator: torch.Generator, device, keep: list | None) -> _Epoch:
    """One pass over this rank's batches; appends them to ``keep`` when caching the shard."""
    names = plan.fusion.modalities
    result = _Epoch(torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=device),
                    torch.zeros(4, dtype=torch.float64, device=device))
    started = time.perf_counter()
    for batch in batches:
        step_started = time.perf_counter()
        present = batch["present"]
        p = plan.schedule.probability((epoch + min(result.steps / plan.steps_per_epoch, 1.0)) / plan.epochs)
        losses, masked = train_step(model, optimizer, [batch[n] for n in names], present, p, generator, plan.grad_clip)
        result.terms += torch.stack([losses[k] for k in LOSS_TERMS]).double()
        result.counts += torch.stack([
            torch.ones((), device=device), torch.tensor(float(len(present)), device=device),
            masked.sum(), present.sum(),
        ]).double()
        result.steps += 1
        result.step_time += time.perf_counter() - step_started
        if keep is not None:
            keep.append({k: batch[k] for k in (*names, "present")})
    result.train_time = time.perf_counter() - started
    return result


def _fetch(ref, device) -> dict[str, Tensor]:
    """A shard from the object store as tensors on ``device`` (copied: object-store arrays are read-only)."""
    import ray

    return {k: torch.from_numpy(np.array(v)).to(device) for k, v in ray.get(ref).items()}


def _in_order(cached: Mapping[str, Tensor], batch_size: int):
    n = len(cached["present"])
    for start in range(0, n, batch_size):
        yield {k: v[start: start + batch_size] for k, v in cached.items()}


def _validate(plan: WorkerPlan, core: DynamicFusion, shard, device, result: _Epoch) -> None:
    """Sums of the validation metrics over this rank's validation shard (a Ray Data shard, or a
    dict of tensors in driver mode), into ``result.val``."""
    M = plan.fusion.num_modalities
    sizes = {"attention": M, "rows": 1, "cos": M, "cos_n": M, "loss": 1, "loss_n": 1}
    result.val = {k: torch.zeros(sizes[k], dtype=torch.float64, device=device) for k in _VAL_KEYS}
    started = time.perf_counter()
    size = max(plan.per_worker_batch, 1024)
    batches = _in_order(shard, size) if isinstance(shard, dict) else shard.iter_torch_batches(
        batch_size=size, device=device, pin_memory=plan.use_gpu)
    for batch in batches:
        for k, v in validation_sums(core, [batch[n] for n in plan.fusion.modalities], batch["present"]).items():
            result.val[k] += v.double()
    result.val_time = time.perf_counter() - started


def epoch_metrics(plan: WorkerPlan, epoch: int, step: int, reduced: Mapping[str, np.ndarray],
                  names: Sequence[str]) -> dict[str, Any]:
    """The metrics row of an epoch from the all-reduced sums (``reduced``: terms, counts and the
    validation sums of validation_sums)."""
    steps, samples, n_masked, n_present = reduced["counts"]
    metrics: dict[str, Any] = {
        "epoch": epoch + 1, "epochs": plan.epochs, "step": step,
        "mask_p": plan.schedule.probability((epoch + 1) / plan.epochs),
        "mask_rate": float(n_masked / max(n_present, 1)),
    }
    for k, v in zip(LOSS_TERMS, reduced["terms"]):
        metrics[f"train/{k}"] = float(v / max(steps, 1))
    metrics["val/loss"] = float(reduced["loss"][0] / reduced["loss_n"][0]) if reduced["loss_n"][0] else None
    cos = [float(c / n) if n else None for c, n in zip(reduced["cos"], reduced["cos_n"])]
    for n, c in zip(names, cos):
        metrics[f"val/cos/{n}"] = c
    defined = [c for c in cos if c is not None]
    metrics["val/cos_mean"] = float(np.mean(defined)) if defined else None
    for n, a in zip(names, reduced["attention"]):
        metrics[f"attention/{n}"] = float(a / max(reduced["rows"][0], 1))
    metrics["train_samples"] = int(samples)
    return metrics


def _reduce(result: _Epoch) -> dict[str, np.ndarray]:
    """All-reduce every sum of the epoch in one collective call."""
    parts = {"terms": result.terms, "counts": result.counts, **result.val}
    flat = _all_reduce(torch.cat(list(parts.values()))).cpu().numpy()
    out, offset = {}, 0
    for k, v in parts.items():
        out[k] = flat[offset: offset + v.numel()]
        offset += v.numel()
    return out


def _report(plan: WorkerPlan, rank: int, epoch: int, core, optimizer, state: dict, metrics: dict) -> None:
    """Rank 0 checkpoints and writes metrics.jsonl; every rank reports to Ray Train."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    # Ray copies the folder into the run's storage during report(); the local mode
    # (workers=0) keeps it where it is, so it lives under out, not in /tmp.
    staging = plan.local_checkpoints or tempfile.gettempdir()
    os.makedirs(staging, exist_ok=True)
    directory = tempfile.mkdtemp(prefix=f"epoch-{epoch + 1:04d}-", dir=staging)
    save_checkpoint(directory, core, optimizer, state)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    if plan.local_checkpoints:
        for old in Path(staging).glob("epoch-*"):
            if str(old) != directory:
                shutil.rmtree(old, ignore_errors=True)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    try:
        write_metrics_file(plan.metrics_path, state["history"])
    except OSError as exc:  # e.g. out is not reachable from this node: the driver writes it at the end
        _progress(f"[dmf train] could not write {plan.metrics_path}: {exc}", local_mode=False)
    _progress(f"[dmf train] {format_metrics(metrics, plan.fusion.modalities)}", local_mode=bool(plan.local_checkpoints))


def train_loop_per_worker(plan: WorkerPlan) -> dict:
    """The function Ray Train runs on every rank; returns this rank's loop state."""
    import ray.train
    import ray.train.torch

    _quiet_ray_report_log()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    device = ray.train.torch.get_device() if plan.use_gpu else torch.device("cpu")
    core, model, optimizer, state = _build(plan, device, world)
    names = plan.fusion.modalities
    # This rank's shard in memory: from the start in driver mode, else after the first epoch.
    cached: dict[str, Tensor] | None = None
    if plan.shards is None:
        train_shard, valid_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("valid")
    else:
        cached, valid_shard = _fetch(plan.shards.train[rank], device), _fetch(plan.shards.valid[rank], device)

    for epoch in range(state["epoch"], plan.epochs):
        _maybe_fail(plan, epoch, rank, world)
        # Per-epoch seeds: reproducible masks, dropout and order, whatever epoch a run resumes at.
        epoch_seed = plan.seed * 1_000_003 + epoch * 1009 + rank
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        started = time.perf_counter()
        keep: list[dict[str, Tensor]] | None = None
        if cached is None:  # stream the shard from Ray Data; keep a copy when it fits the cache budget
            keep = [] if plan.cache_shard else None
            batches: Iterable[dict[str, Tensor]] = train_shard.iter_torch_batches(
                batch_size=plan.per_worker_batch, local_shuffle_buffer_size=plan.shuffle_buffer or None,
                local_shuffle_seed=epoch_seed if plan.shuffle_buffer else None, device=device,
                pin_memory=plan.use_gpu)
        else:
            batches = cached_batches(cached, plan.per_worker_batch, generator)
        result = _train_epoch(plan, model, optimizer, epoch, batches, generator, device, keep)
        if keep:
            cached = {k: torch.cat([b[k] for b in keep]) for k in keep[0]}
        _validate(plan, core, valid_shard, device, result)
        state["step"] += result.steps
        state["epoch"] = epoch + 1
        metrics = epoch_metrics(plan, epoch, state["step"], _reduce(result), names)
        metrics.update(
            samples_per_s=float(metrics["train_samples"] / max(result.train_time, 1e-9)),
            train_time_s=result.train_time, val_time_s=result.val_time, epoch_time_s=time.perf_counter() - started,
            # Rank 0's time outside its steps: waiting for batches from Ray Data (on GPU the
            # steps are asynchronous, so this is a lower bound there).
            data_wait_s=max(result.train_time - result.step_time, 0.0),
            replica_spread=_replica_spread(core), lr=plan.lr)
        state["history"].append(metrics)
        _report(plan, rank, epoch, core, optimizer, state, metrics)
    return {"epoch": state["epoch"], "history": state["history"], "attempts": state["attempts"]}
