"""Fitting DynamicFusion on an embedding store with Ray Train: split, normalise, DDP, checkpoints.

    train(TrainConfig(store="./store", out="./model", epochs=20))

What happens, in order:

0. ``check_training``: everything that needs no cluster (the config, the store and its
   modalities, what ``out`` already holds); the CLI calls it before it starts Ray;
1. the store's chosen modalities are joined on mol_id into one Ray Dataset (``read_numpy`` on
   the driver when the dense data fits comfortably in memory, the distributed ``read_dataset``
   join otherwise), split by a hash of mol_id into training and validation (stable across runs,
   stores and worker counts), and materialised once, so no epoch repeats the join;
2. per-modality mean/std over the PRESENT rows of the training split, merged from per-block
   moments (dmf_ray.model.normalization), are set on the model: they travel in its state dict;
3. a TorchTrainer runs ``worker.train_loop_per_worker`` on ``workers`` DDP ranks (gloo on CPU,
   nccl on GPU), each given one WorkerPlan; each rank streams its shard from Ray Data in its
   first epoch and, when the shard fits ``worker_cache_mb``, keeps it in memory for the next
   ones; each step masks modalities with the progressive probability p(t) of MaskSchedule;
4. after every epoch, rank 0 writes a checkpoint and ``<out>/metrics.jsonl``; a dead worker
   makes Ray restart the group from the last checkpoint (FailureConfig), and rerunning the same
   call resumes an interrupted run (same RunConfig name and storage path);
5. the driver turns the final checkpoint into the model directory (``save_fusion_model``) with a
   card naming the encoders, the training settings, the metrics and the versions.

The layout of ``out`` is described in ``outdir``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmf_ray import __version__
from dmf_ray.files import METRICS_FILE, join_uri, publish_model, redact, resolve, upload_file
from dmf_ray.model import FusionConfig, normalization_stats
from dmf_ray.pipelines.train.checkpoints import format_metrics, load_checkpoint, write_metrics_file
from dmf_ray.pipelines.train.config import RUN_FILE, TRAIN_DIR, TrainConfig, TrainingError, TrainResult
from dmf_ray.pipelines.train.data import TrainingData, load_training_data
from dmf_ray.pipelines.train.outdir import (Destination, OutStatus, absolute, clear_out, destination_of, fingerprint,
                                            out_status, run_name)
from dmf_ray.pipelines.train.worker import WorkerPlan, train_loop_per_worker

# Tests only: the last rank exits once before this (1-based) epoch, to exercise restarts.
FAIL_AT_EPOCH_ENV = "DMF_TRAIN_FAIL_AT_EPOCH"


@dataclass
class TrainingCheck:
    """What check_training found: the run is possible, and what ``out`` holds."""

    config: TrainConfig
    destination: Destination
    store: Any  # EmbeddingStore
    names: list[str]
    dims: list[int]
    fingerprint: dict
    status: OutStatus  # "complete" (nothing to do), "resume" or "fresh"

    def fusion_config(self) -> FusionConfig:
        """The model's config: the store's modalities and dims, each modality's value kind as its
        encoder declares it, the settings of ``config.model``."""
        return FusionConfig.build(self.names, self.dims, self.config.model, value_kinds(self.store, self.names))


def value_kinds(store, names: list[str]) -> list[str]:
    """Each modality's value kind (binary, count, continuous) from the store's encoder specs
    (``encoders.base.value_kind_of``: stores written before the field use the encoder's own)."""
    from dmf_ray.encoders.base import value_kind_of

    return [value_kind_of(store.modalities[n]) for n in names]


def _resolve_modalities(store, requested: list[str] | None) -> list[str]:
    available = list(store.modalities)
    if not available:
        raise ValueError(f"store {store.uri} is empty: it has no modalities (run `dmf featurize` first)")
    if requested is None:
        return available
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r}: store {store.uri} has {', '.join(available)}")
    return list(requested)


def check_training(config: TrainConfig, log: Callable[[str], None] = print) -> TrainingCheck:
    """Every check that needs no cluster, so the CLI can run it before starting Ray: the store
    opens and has the modalities, the model settings fit them, and ``out`` holds nothing else
    (with ``fresh`` it is not looked at). Changes nothing. Raises ValueError naming the problem;
    a status of "complete" means train() has nothing to do."""
    from dmf_ray.store import EmbeddingStore

    store = EmbeddingStore.open(config.store)
    names = _resolve_modalities(store, config.modalities)
    dims = [int(store.modalities[n]["dim"]) for n in names]
    FusionConfig.build(names, dims, config.model, value_kinds(store, names))  # validated before any Ray work
    fp = fingerprint(config, store, names)
    destination = destination_of(config, log)
    status: OutStatus = "fresh" if config.fresh else out_status(destination.local, fp)
    return TrainingCheck(config, destination, store, names, dims, fp, status)


def resolve_workers(config: TrainConfig) -> int:
    """config.workers, or from the connected cluster: one worker per GPU with use_gpu, else one
    per node (on one node a second worker only splits the same cores, with DDP overhead)."""
    import ray

    if config.workers is not None:
        return config.workers
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    if config.use_gpu:
        return max(1, int(sum(r.get("GPU", 0) for r in nodes)))
    return max(1, sum(1 for r in nodes if r.get("CPU", 0) > 0))


def _default_resources(config: TrainConfig, workers: int) -> tuple[float, int]:
    """(CPUs reserved per worker, torch threads per worker)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    node_cpus = max([float(r.get("CPU", 0)) for r in nodes] or [1.0])
    total_cpus = float(ray.cluster_resources().get("CPU", node_cpus))
    workers = max(workers, 1)
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


def _versions() -> dict[str, str]:
    import ray
    import rdkit
    import torch

    return {"dmf_ray": __version__, "torch": torch.__version__, "ray": ray.__version__,
            "rdkit": rdkit.__version__, "python": platform.python_version()}


def _load_data(check: TrainingCheck, workers: int, log: Callable[[str], None]) -> TrainingData:
    """The joined, split and materialised data, or ValueError when a split would be empty."""
    config, names = check.config, check.names
    data = load_training_data(check.store, names, config, ranks=max(workers, 1))
    for dataset in (data.train, data.valid):
        if dataset is not None:  # every epoch re-reads them: progress bars would only add noise
            dataset.context.enable_progress_bars = False
    world = max(workers, 1)
    if data.n_train + data.n_valid == 0:
        raise ValueError(f"store {check.store.uri} has no molecules with any of {', '.join(names)}")
    if data.n_valid == 0 or data.n_train < max(2, world):
        raise ValueError(
            f"too few molecules for a validation split: {data.n_train + data.n_valid} molecules with val_fraction "
            f"{config.val_fraction} give {data.n_train} training and {data.n_valid} validation molecules; need at "
            f"least {max(2, world)} and 1 (add molecules or raise val_fraction)")
    log(f"data: {data.n_train:,} training and {data.n_valid:,} validation molecules ({data.mode} join of "
        f"{', '.join(names)})")
    for n in names:
        if data.moments[n].count == 0:
            log(f"warning: no training molecule has {n}; its normalisation stays mean 0, std 1")
    return data


def _worker_plan(check: TrainingCheck, data: TrainingData, workers: int, threads: int, call_id: str) -> WorkerPlan:
    config, out = check.config, Path(check.destination.local)
    world = max(workers, 1)
    per_worker_batch = max(1, config.batch_size // world)
    run_dir = Path(absolute(str(out / TRAIN_DIR)))  # always local: run.json, test markers, local mode
    fail_at = os.environ.get(FAIL_AT_EPOCH_ENV)
    return WorkerPlan(
        fusion=check.fusion_config(),
        stats={n: (m.tolist(), s.tolist()) for n, (m, s) in normalization_stats(data.moments).items()},
        schedule=config.masking,
        epochs=config.epochs,
        steps_per_epoch=max(1, math.ceil((data.n_train // world) / per_worker_batch)),
        per_worker_batch=per_worker_batch,
        shuffle_buffer=config.shuffle_buffer if config.shuffle_buffer is not None else 4 * per_worker_batch,
        cache_shard=(data.n_train // world) * 4 * (sum(check.dims) + len(check.dims))
        <= config.worker_cache_mb * 2**20,
        lr=config.lr, weight_decay=config.weight_decay, grad_clip=config.grad_clip, seed=config.seed,
        use_gpu=config.use_gpu, torch_threads=threads, shards=data.shards,
        metrics_path=absolute(str(out / METRICS_FILE)),
        local_checkpoints=str(run_dir / "local") if workers == 0 else None,
        call_id=call_id,
        fail_at_epoch=int(fail_at) if fail_at else None,
        fail_marker=str(run_dir / f"fail-injected-epoch-{fail_at}") if fail_at else None,
    )


def _fit(check: TrainingCheck, data: TrainingData, plan: WorkerPlan, workers: int, cpus: float, callbacks=()):
    """Run the TorchTrainer; returns Ray Train's Result (with a checkpoint) or raises TrainingError."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config, destination = check.config, check.destination
    storage = _storage(check)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=run_name(config, destination),
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines repeat every metric of every rank; rank 0 prints one line.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
        datasets={} if data.shards is not None else {"train": data.train, "valid": data.valid},
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # WorkerGroupError / ControllerError / TrainingFailedError
        raise TrainingError(f"training failed ({type(exc).__name__}: {exc}); rerun the same command to resume "
                            f"from the last checkpoint in {storage}") from exc
    if result.checkpoint is None:
        raise TrainingError(f"training finished without a checkpoint in {storage}")
    return result


def _storage(check: TrainingCheck) -> str:
    """Where Ray Train keeps the run's checkpoints: storage_path, else <out>/_ray_train."""
    if check.destination.storage_path:
        return absolute(check.destination.storage_path)
    return absolute(str(Path(check.destination.local) / TRAIN_DIR))


def _write_run_record(check: TrainingCheck) -> None:
    run_dir = Path(absolute(str(Path(check.destination.local) / TRAIN_DIR)))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps(check.fingerprint, indent=2), encoding="utf-8")
    if check.destination.remote:  # a later driver on another machine must see which run the checkpoints are of
        upload_file(run_dir / RUN_FILE, *resolve(join_uri(check.destination.published, TRAIN_DIR, RUN_FILE)))


def _card(check: TrainingCheck, data: TrainingData, plan: WorkerPlan, workers: int, history: list[dict]) -> dict:
    config, destination = check.config, check.destination
    manifest = check.store.manifest
    return {
        "modalities": {n: dict(check.store.modalities[n]) for n in check.names},
        "training": {
            **config.flat_settings(),
            "store": redact(absolute(config.store)),
            "out": redact(absolute(destination.published)),
            "storage_path": redact(config.storage_path) if config.storage_path else None,
            "modalities": check.names,
            "workers": workers,
            "n_train": int(data.n_train),
            "n_valid": int(data.n_valid),
            "data_loading": data.mode,
            "world_size": max(workers, 1),
            "per_worker_batch_size": plan.per_worker_batch,
            "steps_per_epoch": plan.steps_per_epoch,
            "fingerprint": check.fingerprint,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "metrics": history[-1] if history else {},
        "versions": _versions(),
        "store_manifest": {k: manifest.get(k) for k in ("format", "format_version", "created_at", "updated_at",
                                                         "created_by", "versions", "id_scheme", "shard_rows")},
    }


def _already_complete(check: TrainingCheck, started: float, log: Callable[[str], None]) -> TrainResult:
    from dmf_ray.artifact import read_model_config

    destination, epochs = check.destination, check.config.epochs
    card = read_model_config(Path(destination.local))
    log(f"{redact(destination.published)} already holds this model (trained {card['training'].get('epochs')} "
        f"epochs); nothing to do (pass --overwrite (fresh=True from Python) to retrain)")
    return TrainResult(destination.published, card.get("metrics", {}), 0, epochs, epochs, [], True,
                       int(card["training"].get("n_train", 0)), int(card["training"].get("n_valid", 0)),
                       time.time() - started, _metrics_file(destination))


def _metrics_file(destination: Destination) -> str:
    if destination.remote:
        return join_uri(destination.published, METRICS_FILE)
    return str(Path(destination.local) / METRICS_FILE)


def train(config: TrainConfig, log: Callable[[str], None] = print, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train (or resume, or recognise as done) the model `config` describes; see the module doc.

    ``callbacks``: Ray Train UserCallbacks for the run (``dmf tune`` passes Ray Tune's
    TuneReportCallback, so every epoch's metrics reach the search scheduler).

    Starts a local Ray if none is connected (after check_training: a finished model, a bad
    modality or a conflicting out never start one). Raises ValueError naming the problem for an
    unknown modality, an empty store or too few molecules to hold out a validation split, and
    TrainingError when Ray Train gives up (rerun the same call to resume)."""
    from dmf_ray.runtime import ensure_ray

    started = time.time()
    check = check_training(config, log)
    if len(check.names) == 1:
        log(f"warning: training on one modality ({check.names[0]}): nothing is ever masked or reconstructed")
    if check.status == "complete":
        return _already_complete(check, started, log)
    if config.fresh:
        clear_out(config, check.destination)
    ensure_ray(dashboard=True)
    workers = resolve_workers(config)
    if workers > 1 and config.batch_size < workers:
        raise ValueError(f"batch_size {config.batch_size} is the global batch: it must be >= workers ({workers})")
    if check.status == "resume":
        where = Path(check.destination.local) / TRAIN_DIR
        log(f"note: {where} holds an interrupted run, but workers=0 trains in-process and cannot resume: starting "
            f"from epoch 0" if workers == 0 else f"resuming the interrupted run in {where}")
    data = _load_data(check, workers, log)
    cpus, threads = _default_resources(config, workers)
    plan = _worker_plan(check, data, workers, threads, uuid.uuid4().hex)
    _write_run_record(check)
    log(f"training: {workers} worker(s) x {cpus:g} CPU, {threads} thread(s) each"
        f"{', 1 GPU each' if config.use_gpu else ''}; global batch {plan.per_worker_batch * max(workers, 1)}, "
        f"{plan.steps_per_epoch} steps/epoch, {config.epochs} epochs; checkpoints in {_storage(check)}")
    result = _fit(check, data, plan, workers, cpus, callbacks)
    return _finish(check, data, plan, workers, result, started, log)


def _finish(check: TrainingCheck, data: TrainingData, plan: WorkerPlan, workers: int, result, started: float,
            log: Callable[[str], None]) -> TrainResult:
    """Turn the final checkpoint into the model directory (and publish it when out is remote)."""
    from dmf_ray.artifact import save_fusion_model
    from dmf_ray.model import DynamicFusion

    config, destination = check.config, check.destination
    with result.checkpoint.as_directory() as directory:
        weights, _, state = load_checkpoint(directory, "cpu")
    if state["epoch"] != config.epochs:
        raise TrainingError(f"the last checkpoint is at epoch {state['epoch']}, expected {config.epochs}")
    model = DynamicFusion(plan.fusion)
    model.load_state_dict(weights)
    history = state["history"]
    out = Path(destination.local)
    write_metrics_file(out / METRICS_FILE, history)  # the driver's copy, wherever rank 0 ran

    attempts = [a for a in (result.return_value or {}).get("attempts", state["attempts"]) if a["call"] == plan.call_id]
    first_start = attempts[0]["start_epoch"] if attempts else state["epoch"]
    save_fusion_model(out, model, _card(check, data, plan, workers, history))
    if destination.remote:
        publish_model(out, destination.published)
    final = history[-1] if history else {}
    outcome = TrainResult(destination.published, final, config.epochs - first_start, config.epochs,
                          first_start if first_start > 0 else None, [a["start_epoch"] for a in attempts[1:]], False,
                          int(data.n_train), int(data.n_valid), time.time() - started, _metrics_file(destination))
    log(f"model written to {redact(destination.published)}: {outcome.summary()}; final: "
        f"{format_metrics(final, check.names) if final else 'no metrics'}")
    return outcome
