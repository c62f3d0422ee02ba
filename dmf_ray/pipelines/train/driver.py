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
import math
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dmf_ray import __version__
from dmf_ray.files import exists, join, join_uri, redact, resolve
from dmf_ray.model import DynamicFusion
from dmf_ray.files import (CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, delete_files, is_remote, mirror_files, publish_model,
                            staging_dir, upload_file)
from dmf_ray.pipelines.train.config import (_OPERATIONAL, RUN_FILE, TRAIN_DIR, TrainConfig, TrainingError, TrainResult,
                                     add_train_arguments, config_from_args)
from dmf_ray.model.normalization import scale_of
from dmf_ray.pipelines.train.data import load_training_data
from dmf_ray.pipelines.train.worker import (_load_checkpoint, _train_loop_per_worker, format_metrics, read_metrics_file,
                                     write_metrics_file)

# The public API; the parts live in dmf_ray.pipelines.train (config, data, step, worker).
__all__ = ["METRICS_FILE", "TRAIN_DIR", "TrainConfig", "TrainResult", "TrainingError", "add_train_arguments",
           "config_from_args", "read_metrics_file", "train"]

# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _fingerprint(config: TrainConfig, store, names: list[str]) -> dict[str, Any]:
    """What makes two runs the same model: the settings that change it plus the store's content
    (its committed shards of each chosen modality)."""
    from dmf_ray.store import modality_table

    settings = {k: v for k, v in config.public_dict().items() if k not in _OPERATIONAL}
    settings["modalities"] = list(names)
    settings["store"] = redact(_absolute(config.store))
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
            fs, root = resolve(config.storage_path)
            run = join(root, _run_name(config))
            if exists(fs, run):
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
    storage = config.storage_path or join_uri(config.out, TRAIN_DIR)
    log(f"out is remote: staging in {stage}, checkpoints in {redact(storage)}")
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
    shown = redact(published)  # for logs and the card: no credentials
    published_metrics = join_uri(published, METRICS_FILE) if config._publish_to else None
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
        log(f"{shown} already holds this model (trained {card['training'].get('epochs')} epochs); nothing to do "
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

    ensure_ray(dashboard=True)
    data = load_training_data(store, names, config)
    for dataset in (data.train, data.valid):
        if dataset is not None:  # every epoch re-reads them: progress bars would only add noise
            dataset.context.enable_progress_bars = False
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
        upload_file(run_dir / RUN_FILE, *resolve(join_uri(config._publish_to, TRAIN_DIR, RUN_FILE)))

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
            "store": redact(_absolute(config.store)),
            "out": redact(_absolute(published)),
            "storage_path": redact(config.storage_path) if config.storage_path else None,
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
    log(f"model written to {shown} ({config.epochs} epochs, {epochs_run} in this run"
        f"{f', resumed from epoch {resumed_from}' if resumed_from else ''}"
        f"{f', worker restarts at epochs {restarts}' if restarts else ''}); final: "
        f"{format_metrics(final, names) if final else 'no metrics'}")
    return TrainResult(published, final, epochs_run, config.epochs, resumed_from, restarts, False,
                       int(n_train), int(n_valid), time.time() - started, published_metrics or str(metrics_path))


