"""Files on any filesystem pyarrow supports (local, s3://, gs://, ...): paths, atomic writes,
JSON and Parquet, the cache root, sha256, and local copies of remote model directories, task files
and report folders.

Local copies: stores and inputs need none (they are read and written through pyarrow directly);
model directories, task files and report folders do.

A model directory is two small files (config.json, model.safetensors; metrics.jsonl beside them).
Readers (embed actors, Serve replicas, evaluate) fetch a remote model into a local cache on their
own node and load it from there; safetensors needs a local file and the model is small. The cache
entry is named by the sha256 of config.json, which holds the weights' sha256, so a model replaced
at the same URI is fetched again and an unchanged one never is. ``dmf train --out s3://...``
trains into a local staging directory and publishes there (see ``dmf_ray.pipelines.train``).

Remote copies are plain object writes; config.json is written last, so a reader that sees it
sees a complete model (and the weights hash in it catches a model replaced mid-read).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

PARQUET_COMPRESSION = "zstd"
# Level 1: the same file size as the default level for fingerprint counts (dictionary encoding
# does most of the work) at a third of the time; writing was a third of featurisation time.
PARQUET_COMPRESSION_LEVEL = 1


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A (filesystem, path) pair; plain paths are local and made absolute."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), absolute(uri)


def absolute(uri: str) -> str:
    """A local path made absolute (``~`` expanded); a URI (``scheme://``) as it is. For paths
    handed to Ray workers, whose working directory is not the caller's (a Tune trial runs in
    its own trial directory)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def redact(uri: str) -> str:
    """``uri`` without credentials (s3://KEY:SECRET@bucket/... -> s3://***@bucket/...), for
    anything logged, shown or recorded in a store, a model card or a report."""
    return re.sub(r"^([A-Za-z][\w+.-]*://)[^/@]+@", r"\1***@", uri)


def join_uri(uri: str, *parts: str) -> str:
    """``join`` for a URI that may carry options after ``?`` (s3://b/p?region=...): the parts go
    into the path, before the options."""
    base, sep, query = uri.partition("?")
    return join(base, *parts) + sep + query


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, directory: str, suffix: str = "") -> list[str]:
    """Paths of the files directly inside ``directory`` (sorted; none if it is absent)."""
    if not exists(fs, directory):
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def atomic_write(fs: pafs.FileSystem, path: str, write: Callable[[str], None], durable: bool = False) -> None:
    """Call ``write(p)`` so that ``path`` appears whole or not at all (the one atomic write).

    Local: ``write`` fills a hidden temp file beside ``path``, renamed over it, so a reader (or
    a rerun after a crash) never sees half a file; a failed write leaves no temp file behind.
    ``durable``: fsync the file before the rename (model weights). Object stores make an
    object visible only once it is complete, so ``write`` gets ``path`` itself there."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        write(path)
        return
    tmp = join(parent, f".tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, dictionary: bool | list[str] = True) -> None:
    """Atomic zstd Parquet file. ``dictionary``: the columns to dictionary-encode (all by
    default); leave out columns whose values rarely repeat (ids, SMILES, vectors), where
    dictionary encoding costs time for little size."""
    atomic_write(fs, path, lambda p: pq.write_table(table, p, filesystem=fs, compression=PARQUET_COMPRESSION,
                                                     compression_level=PARQUET_COMPRESSION_LEVEL,
                                                     use_dictionary=dictionary))


def write_json(fs: pafs.FileSystem, path: str, data: Any) -> None:
    payload = json.dumps(data, indent=2, sort_keys=True).encode()

    def write(p: str) -> None:
        with fs.open_output_stream(p) as out:
            out.write(payload)

    atomic_write(fs, path, write)


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


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
    fs, root = resolve(text)
    config_path = join(root, CONFIG_FILE)
    try:
        with fs.open_input_stream(config_path) as stream:
            config_bytes = stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{redact(text)} is not a dmf_ray model directory: {CONFIG_FILE} not found there") from None
    target = cache_root() / "models" / hashlib.sha256(config_bytes).hexdigest()[:32]
    if (target / CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    try:
        _download(fs, join(root, WEIGHTS_FILE), staging / WEIGHTS_FILE, text)
        expected = json.loads(config_bytes).get("weights_sha256")
        if expected is not None and sha256_file(staging / WEIGHTS_FILE) != expected:
            raise ValueError(f"{redact(text)}/{WEIGHTS_FILE} does not match the sha256 in its {CONFIG_FILE} "
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
    fs, root = resolve(uri)
    local = Path(local_dir)
    for name in (WEIGHTS_FILE, METRICS_FILE, CONFIG_FILE):
        if (local / name).is_file():
            upload_file(local / name, fs, join(root, name))


def staging_dir(uri: str) -> Path:
    """The local directory that stands for a remote output directory while it is being made."""
    return cache_root() / "staging" / hashlib.sha256(uri.encode()).hexdigest()[:32]


def mirror_files(uri: str, local_dir: Path, names: list[str]) -> None:
    """Make ``local_dir`` hold exactly the remote copies of ``names`` (relative paths): each is
    downloaded when ``uri`` has it and removed locally when it does not."""
    fs, root = resolve(uri)
    for name in names:
        local = local_dir / name
        try:
            with fs.open_input_stream(join(root, name)) as source:
                data = source.read()
        except FileNotFoundError:
            local.unlink(missing_ok=True)
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)


def delete_files(uri: str, names: list[str]) -> None:
    fs, root = resolve(uri)
    for name in names:
        if exists(fs, join(root, name)):
            fs.delete_file(join(root, name))


def fetch(uri: str) -> Path:
    """A local copy of a remote file or folder (small ones: task CSVs), keeping its base name;
    local paths are returned as they are."""
    if not is_remote(uri):
        return Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    fs, root = resolve(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{redact(uri)}: no such file or folder")
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
    fs, root = resolve(uri)
    base = Path(local_dir)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        upload_file(path, fs, join(root, *path.relative_to(base).parts))


def upload_file(path: Path, fs, remote_path: str) -> None:
    fs.create_dir(remote_path.rsplit("/", 1)[0], recursive=True)
    with open(path, "rb") as source, fs.open_output_stream(remote_path) as out:
        shutil.copyfileobj(source, out, length=1 << 20)


def _download(fs, remote_path: str, path: Path, uri: str) -> None:
    try:
        _copy_down(fs, remote_path, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{redact(uri)} has a {CONFIG_FILE} but no {WEIGHTS_FILE}") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_parquet_files(fs, files: list[str], columns: list[str], schema):
    """The ``columns`` of Parquet ``files`` on ``fs`` as one pyarrow Table cast to ``schema``'s
    fields (an empty table for no files).

    File by file with ``pq.ParquetFile`` rather than ``pq.read_table``: read_table goes through
    pyarrow.dataset, whose import pulls pandas (~0.25 s of `dmf store info`'s ~0.6 s)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = pa.schema([schema.field(c) for c in columns])
    tables = []
    for path in files:
        with pq.ParquetFile(path, filesystem=fs) as parquet:
            tables.append(parquet.read(columns=columns).cast(want))
    return pa.concat_tables(tables) if tables else want.empty_table()
