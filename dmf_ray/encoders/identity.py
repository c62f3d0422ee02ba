"""A model's identity: where its files are (a directory, a package, a hub id) and a content hash.

Locations a model encoder records in its spec:

``/abs/path``      a local directory, recorded by its real path.
``package:NAME[/sub/dir]``  files shipped inside an installed Python package (e.g. ``package:fcd``
                   for ChemNet's weights in the ``fcd`` wheel), resolved with importlib.resources
                   on each node, so a worker or replica in another environment finds them; the
                   package's version is recorded next to the sha256 (its code preprocesses the
                   input, so the vectors depend on it too).
``org/name``       a Hugging Face hub id (needs the [hf] extra), recorded with its commit.

The hash, ``sha256:<hex>``, covers the files that determine the vectors (relative name, size,
sha256 of the bytes). The driver hashes once; every rebuild from a spec (each Ray actor, each
Serve replica) verifies that the files on its node still have that digest, so a store never
mixes two models under one name. Per-file digests are cached on disk keyed by (path, size,
mtime, ctime, inode): later actors on a node pay a ``stat`` per file, and only the first actor
on a new node (or after the files changed) reads the weights once more.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import os
import re
import tempfile
from pathlib import Path

from dmf_ray.files import cache_root

PACKAGE_PREFIX = "package:"


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is absent; a ValueError too, so the CLI prints one line."""


class ModelMismatchError(ValueError):
    """The files (or the package version) at a recorded model location are not the ones the
    spec was built from."""


_memory_cache: dict[str, str] = {}


def file_sha256(path: str) -> str:
    """Hex sha256 of one file, cached (memory, then disk under the cache root) by its stat."""
    st = os.stat(path)
    key = hashlib.blake2b(
        f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}".encode(),
        digest_size=16,
    ).hexdigest()
    if key in _memory_cache:
        return _memory_cache[key]
    cached = cache_root() / "sha256" / key
    try:
        digest = cached.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", digest):
            _memory_cache[key] = digest
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    digest = h.hexdigest()
    _memory_cache[key] = digest
    try:  # a cache: an unwritable home only costs a re-hash next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, cached)
    except OSError:
        pass
    return digest


def model_files(directory: str, patterns: tuple[str, ...]) -> list[str]:
    """Relative paths under ``directory`` matching ``patterns`` (hidden folders skipped).
    When safetensors weights exist, ``pytorch_model*.bin`` files are left out: transformers
    loads the safetensors ones."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns):
                found.append(rel)
    if any(f.endswith(".safetensors") for f in found):
        found = [f for f in found if not fnmatch.fnmatchcase(f.rsplit("/", 1)[-1], "pytorch_model*.bin")]
    return sorted(found)


def content_hash(directory: str, patterns: tuple[str, ...] = ("*",)) -> str:
    """``sha256:<hex>`` over the (relative name, size, sha256) of every model file.

    Raises FileNotFoundError when no file matches."""
    files = model_files(directory, patterns)
    if not files:
        raise FileNotFoundError(f"no model files ({', '.join(patterns)}) in {directory!r}")
    h = hashlib.sha256()
    for rel in files:
        path = os.path.join(directory, rel)
        h.update(f"{rel}\0{os.path.getsize(path)}\0{file_sha256(path)}\n".encode())
    return "sha256:" + h.hexdigest()


def package_version(module: str) -> str:
    """``dist==version`` of the installed distribution providing top-level ``module``."""
    # The usual spellings first: packages_distributions() scans every installed dist (~1.5 s).
    for dist in dict.fromkeys([module, module.replace("_", "-")]):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    for dist in importlib.metadata.packages_distributions().get(module) or []:
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    version = getattr(importlib.import_module(module), "__version__", None)
    return f"{module}=={version}" if version else module


def package_directory(location: str, extra: str | None = None) -> str:
    """Local directory of ``package:NAME[/sub/dir]`` on this node (importlib.resources).

    Raises MissingExtraError (naming ``extra`` when given) when the package is not installed,
    FileNotFoundError when the sub-directory is absent."""
    module, _, sub = location[len(PACKAGE_PREFIX):].strip("/").partition("/")
    # find_spec locates the package without running its __init__ (admet_ai's imports chemprop
    # and Lightning: ~20 s); importlib.resources is the fallback for packages not on a path.
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None:
        hint = f": pip install 'dmf-ray[{extra}]'" if extra else ""
        raise MissingExtraError(f"model location {location!r} needs the Python package {module!r}{hint}")
    locations = list(spec.submodule_search_locations or [])
    root = Path(locations[0]) if locations else Path(str(importlib.resources.files(module)))
    path = root / sub if sub else root
    if not path.is_dir():
        raise FileNotFoundError(f"model location {location!r}: {path} is not a directory")
    return str(path)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(model: str, revision: str | None, patterns: tuple[str, ...],
                  extra: str | None = None) -> tuple[str, str | None, str]:
    """(location to record, revision to record, local directory) for a path, a package location
    or a hub id.

    A local directory is recorded by its real path; ``package:NAME[/dir]`` as given (resolved on
    each node). A hub id is downloaded (only the files matching ``patterns``) into the Hugging
    Face cache, or found there when offline, and recorded with the commit it resolved to, so
    every worker loads that exact commit. Raises FileNotFoundError / NotADirectoryError /
    MissingExtraError with one line."""
    if str(model).startswith(PACKAGE_PREFIX):
        return str(model), None, package_directory(str(model), extra)
    path = os.path.expanduser(str(model))
    if os.path.isdir(path):
        return os.path.realpath(path), None, os.path.realpath(path)
    if os.path.exists(path):
        raise NotADirectoryError(f"model {model!r} is a file; give the directory holding the model files")
    if not _HUB_ID.match(str(model)) or str(model).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {model!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=str(model), revision=revision, allow_patterns=list(patterns))
    except ImportError:
        raise MissingExtraError(f"model {model!r} is not a local directory, and loading from the hub needs the [hf] extra") from None
    except Exception as exc:
        raise FileNotFoundError(
            f"model {model!r} is not a local directory and the hub could not provide it "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return str(model), os.path.basename(os.path.normpath(local)), local
