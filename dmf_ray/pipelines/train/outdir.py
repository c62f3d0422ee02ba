"""The model directory a run writes (``out``): what it already holds (this model, an interrupted
run of it, something else), the record that tells runs apart, and staging for a remote ``out``.

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
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dmf_ray.files import (CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, absolute, delete_files, exists, is_remote, join,
                           join_uri, mirror_files, redact, resolve, staging_dir)
from dmf_ray.pipelines.train.config import RUN_FILE, TRAIN_DIR, TrainConfig

OutStatus = Literal["complete", "resume", "fresh"]
# What a remote out holds besides the checkpoints (those stay on the remote filesystem).
_REMOTE_FILES = [CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, f"{TRAIN_DIR}/{RUN_FILE}"]


@dataclass(frozen=True)
class Destination:
    """Where a run writes: ``local`` (out itself, or a local staging copy of a remote out),
    ``published`` (the out the user named) and where Ray Train keeps checkpoints."""

    local: str
    published: str
    storage_path: str | None

    @property
    def remote(self) -> bool:
        return self.local != self.published


def fingerprint(config: TrainConfig, store, names: list[str]) -> dict[str, Any]:
    """What makes two runs the same model: the settings that change it plus the store's content
    (its committed shards of each chosen modality)."""
    from dmf_ray.store import modality_table

    settings = config.model_settings()
    settings["modalities"] = list(names)
    settings["store"] = redact(absolute(config.store))
    shards = {n: sorted(store.committed_keys(modality_table(n))) for n in names}
    digest = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()[:16]
    return {"settings": settings, "store_shards": digest}


def differences(old: Mapping, new: Mapping) -> list[str]:
    """'name: old -> new' for every setting two fingerprints disagree on."""
    out = []
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    for k in sorted(set(old_s) | set(new_s)):
        if old_s.get(k) != new_s.get(k):
            out.append(f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}")
    if old.get("store_shards") != new.get("store_shards"):
        out.append("the store's content changed (shards were added or rewritten)")
    return out


def run_name(config: TrainConfig, destination: Destination) -> str:
    """Ray Train's run name: 'run' when the storage lives inside out (so out can be moved),
    else one derived from out's absolute path."""
    if config.storage_path is None or destination.remote:
        return "run"
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(absolute(config.out)).name)
    return f"dmf-train-{base}-{hashlib.sha256(absolute(config.out).encode()).hexdigest()[:8]}"


def out_status(out: str | os.PathLike, new: dict) -> OutStatus:
    """'complete' if out already holds this model, 'resume' if it holds an interrupted run of it,
    'fresh' if it holds nothing of ours. Reads only; raises ValueError when out holds something
    else (another model, a run with other settings, foreign files)."""
    from dmf_ray.artifact import read_model_config

    out = Path(out)
    run_file = out / TRAIN_DIR / RUN_FILE
    if (out / CONFIG_FILE).exists():
        old = read_model_config(out).get("training", {}).get("fingerprint")
        if old == new:
            return "complete"
        if old is None:
            raise ValueError(f"{out} holds a model that `dmf train` did not write; pass --overwrite (fresh=True from Python) to replace it")
        raise ValueError(f"{out} holds a model trained with other settings ({'; '.join(differences(old, new))}); "
                         f"pass --overwrite (fresh=True from Python) to retrain, or choose another out")
    if run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        if old != new:
            raise ValueError(f"{out} holds an interrupted run with other settings ({'; '.join(differences(old, new))}); "
                             f"rerun with those settings to resume it, or pass --overwrite (fresh=True from Python) to start over")
        return "resume"
    if out.exists() and any(p.name != METRICS_FILE for p in out.iterdir()):
        raise ValueError(f"{out} exists, is not empty and is not a dmf_ray model directory")
    return "fresh"


def clear_out(config: TrainConfig, destination: Destination) -> None:
    """fresh: delete what a previous run left in out (and its checkpoints kept elsewhere, which
    Ray would otherwise resume)."""
    if destination.remote:
        delete_files(destination.published, _REMOTE_FILES)
    out = Path(destination.local)
    for path in [out / CONFIG_FILE, out / WEIGHTS_FILE, out / METRICS_FILE, out / TRAIN_DIR]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if destination.storage_path is not None:
        fs, root = resolve(destination.storage_path)
        run = join(root, run_name(config, destination))
        if exists(fs, run):
            fs.delete_dir(run)


def destination_of(config: TrainConfig, log: Callable[[str], None]) -> Destination:
    """Where this run writes (changes nothing remote). For an out on s3:// (or any remote filesystem): a local staging
    directory that mirrors it (the model is published there at the end), and checkpoints under
    <out>/_ray_train on the remote filesystem itself, where every node and any later driver sees
    them, so a rerun from another machine resumes too; run.json travels with them."""
    if not is_remote(config.out):
        return Destination(config.out, config.out, config.storage_path)
    stage = staging_dir(config.out)
    if not config.fresh:  # fresh: clear_out deletes them
        mirror_files(config.out, stage, _REMOTE_FILES)
    storage = config.storage_path or join_uri(config.out, TRAIN_DIR)
    log(f"out is remote: staging in {stage}, checkpoints in {redact(storage)}")
    return Destination(str(stage), config.out, storage)
