"""Local copies of remote files (s3://, gs://, any filesystem pyarrow supports): model
directories, task files, report folders. Stores and inputs need none of this: they are read and
written through pyarrow directly.

A model directory is two small files (config.json, model.safetensors; metrics.jsonl beside them).
Readers (embed actors, Serve replicas, evaluate) fetch a remote model into a local cache on their
own node and load it from there; safetensors needs a local file and the model is small. The cache
entry is named by the sha256 of config.json, which holds the weights' sha256, so a model replaced
at the same URI is fetched again and an unchanged one never is. ``dmf train --out s3://...``
trains into a local staging directory and publishes there (see ``dmf_ray.train``).

Remote copies are plain object writes; config.json is written last, so a reader that sees it
sees a complete model (and the weights hash in it catches a model replaced mid-read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from dmf_ray import fsutil

CONFIG_FILE = "config.json"  # the same names as dmf_ray.artifact, which imports torch
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs of a non-local filesystem (``file://`` counts as local)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def cache_root() -> Path:
    """Where fetched models and training staging directories live (``DMF_RAY_CACHE``)."""
    return Path(os.environ.get("DMF_RAY_CACHE") or Path.home() / ".cache" / "dmf_ray")


def local_model_dir(uri: str | os.PathLike) -> Path:
    """A local directory holding the model at ``uri``: the path itself when local, else a
    verified copy in the cache (fetched once per node and model version)."""
    text = str(uri)
    if not is_remote(text):
        return fetch(text)  # the local path itself
    fs, root = fsutil.resolve(text)
    config_path = fsutil.join(root, CONFIG_FILE)
    try:
        with fs.open_input_stream(config_path) as stream:
            config_bytes = stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{fsutil.redact(text)} is not a dmf_ray model directory: {CONFIG_FILE} not found there") from None
    target = cache_root() / "models" / hashlib.sha256(config_bytes).hexdigest()[:32]
    if (target / CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    try:
        _download(fs, fsutil.join(root, WEIGHTS_FILE), staging / WEIGHTS_FILE, text)
        expected = json.loads(config_bytes).get("weights_sha256")
        if expected is not None and sha256_file(staging / WEIGHTS_FILE) != expected:
            raise ValueError(f"{fsutil.redact(text)}/{WEIGHTS_FILE} does not match the sha256 in its {CONFIG_FILE} "
                             f"(the model is being replaced; retry)")
        (staging / CONFIG_FILE).write_bytes(config_bytes)
        try:
            os.replace(staging, target)  # atomic; several processes on a node may race here
        except OSError:
            if not (target / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def publish_model(local_dir: str | os.PathLike, uri: str) -> None:
    """Copy a local model directory to ``uri``: weights and metrics first, config.json last."""
    fs, root = fsutil.resolve(uri)
    local = Path(local_dir)
    for name in (WEIGHTS_FILE, METRICS_FILE, CONFIG_FILE):
        if (local / name).is_file():
            upload_file(local / name, fs, fsutil.join(root, name))


def staging_dir(uri: str) -> Path:
    """The local directory that stands for a remote output directory while it is being made."""
    return cache_root() / "staging" / hashlib.sha256(uri.encode()).hexdigest()[:32]


def mirror_files(uri: str, local_dir: Path, names: list[str]) -> None:
    """Make ``local_dir`` hold exactly the remote copies of ``names`` (relative paths): each is
    downloaded when ``uri`` has it and removed locally when it does not."""
    fs, root = fsutil.resolve(uri)
    for name in names:
        local = local_dir / name
        try:
            with fs.open_input_stream(fsutil.join(root, name)) as source:
                data = source.read()
        except FileNotFoundError:
            local.unlink(missing_ok=True)
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)


def delete_files(uri: str, names: list[str]) -> None:
    fs, root = fsutil.resolve(uri)
    for name in names:
        if fsutil.exists(fs, fsutil.join(root, name)):
            fs.delete_file(fsutil.join(root, name))


def fetch(uri: str) -> Path:
    """A local copy of a remote file or folder (small ones: task CSVs), keeping its base name;
    local paths are returned as they are."""
    if not is_remote(uri):
        return Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    fs, root = fsutil.resolve(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{fsutil.redact(uri)}: no such file or folder")
    target = cache_root() / "fetched" / hashlib.sha256(uri.encode()).hexdigest()[:32] / info.base_name
    if info.type == pafs.FileType.File:
        _copy_down(fs, root, target)
        return target
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if item.type == pafs.FileType.File:
            _copy_down(fs, item.path, target / item.path[len(root):].lstrip("/"))
    return target


def _copy_down(fs, remote_path: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(remote_path) as source, open(local, "wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)


def upload_tree(local_dir: str | os.PathLike, uri: str) -> None:
    """Copy every file under ``local_dir`` to the same relative path under ``uri``."""
    fs, root = fsutil.resolve(uri)
    base = Path(local_dir)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        upload_file(path, fs, fsutil.join(root, *path.relative_to(base).parts))


def upload_file(path: Path, fs, remote_path: str) -> None:
    fs.create_dir(remote_path.rsplit("/", 1)[0], recursive=True)
    with open(path, "rb") as source, fs.open_output_stream(remote_path) as out:
        shutil.copyfileobj(source, out, length=1 << 20)


def _download(fs, remote_path: str, path: Path, uri: str) -> None:
    try:
        _copy_down(fs, remote_path, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{fsutil.redact(uri)} has a {CONFIG_FILE} but no {WEIGHTS_FILE}") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
