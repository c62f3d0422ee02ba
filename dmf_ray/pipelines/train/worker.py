"""The Ray Train loop that runs on every worker: DDP, progressive masking, per-epoch
checkpoints and metrics."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmf_ray.model import DynamicFusion, FusionConfig, MaskSchedule
from dmf_ray.pipelines.train.step import LOSS_TERMS, make_optimizer, train_step, validation_sums

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"


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
        logging.getLogger("dmf_ray.pipelines.train.driver").info(line)


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
