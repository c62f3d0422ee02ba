"""Pretrained neural encoders: a model in files on disk (or on the Hugging Face hub) as a modality.

Two layers:

``PretrainedEncoder``
    what every file-backed model needs, whatever package runs it: the model's identity (resolved
    path + a content hash of its files, recorded in the store manifest), one model load per
    process (per Ray actor), GPU placement with a CPU fallback, per-molecule failure isolation
    (a failing batch is split in halves until the failing molecules are found; on a GPU this is
    also how an out-of-memory batch is handled), and the storage dtype. A plugin wrapping a
    model that ships as its own Python package (SMI-TED, MHG-GED) subclasses it and writes two
    methods, ``load_model`` and ``embed``.

``TransformerEncoder`` (``hf``) and presets (``selfies-ted``)
    any Hugging Face style model + tokenizer (the ``[hf]`` extra: transformers, tokenizers):
    SMILES or SELFIES in, encoder hidden states pooled (masked mean or CLS) out. Batches are
    sorted by token length and cut by a padded-token budget, so a batch of short molecules is
    not padded to its longest one.

Identity and the cost of hashing. The args recorded in the manifest hold the model location and
``sha256``, a digest over the files that determine the vectors (weights, config, tokenizer).
The driver hashes once (``dmf featurize`` building the encoder from the ``--encoders`` option);
every rebuild from a spec (each Ray actor, each Serve replica) verifies that the files on its
node still have that digest, so a store never mixes two models under one name, even when a
node holds a different copy at the same path. To keep that cheap, per-file digests are cached
on disk keyed by (path, size, mtime, ctime, inode): the driver's node and every later actor on
a node pay a ``stat`` per file, and only the first actor on a new node (or after the files
changed) reads the weights once more, at disk speed (~1-2 GB/s, next to the model load that
reads the same bytes anyway). Skipping verification in workers would be faster still, but would
let a node with stale weights write vectors under the old identity: the check is the point.

Nothing here imports torch or transformers at import time: ``dmf`` works without the extra, and
asking for ``hf``/``selfies-ted`` without it gives a one-line error naming ``dmf-ray[hf]``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from dmf_ray.encoders.base import EncodedBatch, Encoder, register
from dmf_ray.molecules import InvalidSmilesError, Molecule, to_selfies

FLOAT16_MAX = 65504.0
DEVICES = ("auto", "cpu")
STORAGE_DTYPES = ("float16", "float32")

# Files of a Hugging Face model directory that determine its vectors. Training state
# (optimizer.pt, scheduler.pt, rng_state*.pth, trainer_state.json) is neither hashed nor
# downloaded: SELFIES-TED's repository carries ~4 GB of it.
HF_MODEL_FILES = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "*.py",  # remote code (trust_remote_code) is part of the model
)


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is absent; a ValueError too, so the CLI prints one line."""


class ModelMismatchError(ValueError):
    """The files at a recorded model location are not the ones the spec was built from."""


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"transformer encoders need the [hf] extra: pip install 'dmf-ray[hf]' ({exc})"
        ) from None
    import transformers

    return transformers


# ---- model location and content hash --------------------------------------------------------
def _cache_dir() -> Path:
    return Path(os.environ.get("DMF_RAY_CACHE") or Path.home() / ".cache" / "dmf_ray") / "sha256"


_memory_cache: dict[str, str] = {}


def _file_sha256(path: str) -> str:
    """sha256 of one file, cached (memory, then disk) under its stat signature."""
    st = os.stat(path)
    key = hashlib.blake2b(
        f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}".encode(),
        digest_size=16,
    ).hexdigest()
    if key in _memory_cache:
        return _memory_cache[key]
    cached = _cache_dir() / key
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
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns):
                found.append(rel)
    if any(f.endswith(".safetensors") for f in found):
        found = [f for f in found if not fnmatch.fnmatchcase(f.rsplit("/", 1)[-1], "pytorch_model*.bin")]
    return sorted(found)


def content_hash(directory: str, patterns: tuple[str, ...] = ("*",)) -> str:
    """``sha256:<hex>`` over the (relative name, size, sha256) of every model file."""
    files = model_files(directory, patterns)
    if not files:
        raise FileNotFoundError(f"no model files ({', '.join(patterns)}) in {directory!r}")
    h = hashlib.sha256()
    for rel in files:
        path = os.path.join(directory, rel)
        h.update(f"{rel}\0{os.path.getsize(path)}\0{_file_sha256(path)}\n".encode())
    return "sha256:" + h.hexdigest()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(model: str, revision: str | None, patterns: tuple[str, ...]) -> tuple[str, str | None, str]:
    """(location to record, revision to record, local directory) for a path or a hub id.

    A local directory is recorded by its real path. A hub id is downloaded (only the files
    matching ``patterns``) into the Hugging Face cache, or found there when offline, and
    recorded with the commit it resolved to, so every worker loads that exact commit."""
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


# ---- helpers --------------------------------------------------------------------------------
def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc)
    return "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text


def _free_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _optional_int(text: str) -> int | None:
    return None if str(text).strip().lower() in ("", "none", "auto") else int(text)


def length_buckets(
    lengths: list[int], max_tokens: int, max_rows: int, min_tokens: int = 0, max_padding: float = 0.1
) -> list[list[int]]:
    """Indices grouped into forward passes, longest first. A batch takes the next (shorter) row
    unless that would pass ``max_rows`` or ``max_tokens`` padded tokens, or the batch already
    holds ``min_tokens`` (enough to keep the device busy) and the row is more than
    ``max_padding`` shorter than the batch's longest. So a batch of mixed lengths is cut into
    near-uniform passes instead of being padded to its longest molecule; a row longer than
    ``max_tokens`` gets a pass of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]]
            full = (len(current) + 1) * longest > max_tokens or len(current) >= max_rows
            wasteful = len(current) * longest >= min_tokens and lengths[i] < (1 - max_padding) * longest
            if full or wasteful:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# ---- the base for every file-backed model ---------------------------------------------------
class PretrainedEncoder(Encoder):
    """An encoder whose model lives in files. Subclasses set ``model_files`` (glob patterns of
    the files that determine the vectors), ``dim``, and implement ``load_model`` and ``embed``
    (or override ``encode``). Constructor args other than ``device``/``num_gpus`` are recorded
    in the manifest; ``device``/``num_gpus`` only say where to run.

    ``num_gpus`` (instance attribute, 1 by default) means "a GPU is wanted": ``featurize`` gives
    the actors that many GPUs when the cluster has any and none otherwise, and the model runs on
    CPU wherever torch sees no GPU. ``device="cpu"`` asks for no GPU at all.
    """

    dtype = "float32"  # class default; an instance stores ``dtype`` from its args
    default_batch_size = 256
    num_gpus = 1.0
    model_files: ClassVar[tuple[str, ...]] = ("*",)
    # ``--encoders name=PATH;key=value;...``: the keys accepted and how to parse their values.
    option_types: ClassVar[dict[str, Callable[[str], Any]]] = {
        "dtype": str,
        "device": str,
        "num_gpus": float,
        "revision": str,
    }

    def __init__(
        self,
        model: str,
        sha256: str | None = None,
        revision: str | None = None,
        dtype: str | None = None,
        device: str = "auto",
        num_gpus: float | None = None,
        **args: Any,
    ):
        dtype = dtype or type(self).dtype
        problems = []
        if dtype not in STORAGE_DTYPES:
            problems.append(f"dtype {dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
        if device not in DEVICES:
            problems.append(f"device {device!r} is not one of {', '.join(DEVICES)}")
        if num_gpus is not None and float(num_gpus) < 0:
            problems.append(f"num_gpus {num_gpus} is negative")
        if problems:
            raise ValueError(f"encoder {self.name!r}: " + "; ".join(problems))
        location, revision, directory = resolve_model(model, revision, self.model_files)
        digest = content_hash(directory, self.model_files)
        if sha256 is not None and sha256 != digest:
            raise ModelMismatchError(
                f"encoder {self.name!r}: the model files at {location!r} have {digest} but this "
                f"modality was built from {sha256}: a different model cannot be stored under the same name"
            )
        recorded: dict[str, Any] = {"model": location}
        if revision is not None:
            recorded["revision"] = revision
        recorded.update(sha256=digest, dtype=dtype, **args)
        super().__init__(**recorded)
        self.model = location
        self.directory = directory
        self.sha256 = digest
        self.dtype = dtype
        self.device = device
        self.num_gpus = 0.0 if device == "cpu" else float(1.0 if num_gpus is None else num_gpus)
        self._loaded: Any = None
        self._lock = threading.Lock()

    # -- construction from the CLI ------------------------------------------------------------
    @classmethod
    def parse_option(cls, value: str) -> dict[str, Any]:
        """``PATH;key=value;...`` -> constructor kwargs; every problem in one message."""
        path, *items = [p.strip() for p in value.split(";")]
        if not path:
            raise ValueError(f"encoder {cls.name!r} needs a model directory or hub id: {cls.name}=/path/to/model")
        kwargs: dict[str, Any] = {"model": path}
        problems = []
        for item in filter(None, items):
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or key not in cls.option_types:
                problems.append(f"unknown option {item!r} (options: {', '.join(sorted(cls.option_types))})")
                continue
            try:
                kwargs[key] = cls.option_types[key](text.strip())
            except ValueError as exc:
                problems.append(f"option {key}={text!r}: {exc}")
        if problems:
            raise ValueError(f"encoder {cls.name!r}: " + "; ".join(problems))
        return kwargs

    @classmethod
    def from_option(cls, value: str) -> "PretrainedEncoder":
        return cls(**cls.parse_option(value))

    # -- runtime --------------------------------------------------------------------------------
    def resources(self) -> dict[str, float]:
        return {"num_cpus": 1.0, "num_gpus": float(self.num_gpus)}

    def runtime_device(self) -> str:
        """``cuda`` when a GPU is visible to this process (Ray hides GPUs from actors given
        none) and the device is ``auto``; ``cpu`` otherwise."""
        import torch

        return "cuda" if self.device == "auto" and torch.cuda.is_available() else "cpu"

    def loaded(self) -> Any:
        """The model, loaded on first use: once per process, so once per Ray actor."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self.load_model(self.directory, self.runtime_device())
        return self._loaded

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaded"] = None
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def load_model(self, directory: str, device: str) -> Any:
        raise NotImplementedError

    def embed(self, model: Any, molecules: list[Molecule]) -> np.ndarray:
        """[len(molecules), dim] floats for a batch; raise to fail it (it is then split to find
        the molecules that fail)."""
        raise NotImplementedError

    def encode(self, molecules: list[Molecule]) -> EncodedBatch:
        values = np.zeros((len(molecules), self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(molecules)
        if molecules:
            model = self.loaded()
            self.run_split(list(range(len(molecules))), lambda idx: self.embed(model, [molecules[i] for i in idx]), values, errors)
        return self.finish(values, errors)

    # -- failure isolation and output checks ----------------------------------------------------
    def failure(self, exc: BaseException) -> str:
        return f"{self.name}: {type(exc).__name__}: {_one_line(str(exc))}"

    def run_split(
        self,
        rows: list[int],
        run: Callable[[list[int]], np.ndarray],
        values: np.ndarray,
        errors: list[str | None],
        on_out_of_memory: Callable[[list[int]], None] | None = None,
    ) -> None:
        """``values[rows] = run(rows)``; a failing call is retried on each half until the failing
        rows are alone, which then get an error. Out of GPU memory takes the same path (after
        freeing the allocator's cache), so a batch too large for the card is split until it fits."""
        try:
            out = np.asarray(run(rows), dtype=np.float32)
            if out.shape != (len(rows), self.dim):
                raise ValueError(f"model returned shape {out.shape}, expected {(len(rows), self.dim)}")
        except Exception as exc:
            if is_out_of_memory(exc):
                _free_gpu_memory()
                if on_out_of_memory is not None:
                    on_out_of_memory(rows)
            if len(rows) == 1:
                errors[rows[0]] = self.failure(exc)
                return
            half = len(rows) // 2
            self.run_split(rows[:half], run, values, errors, on_out_of_memory)
            self.run_split(rows[half:], run, values, errors, on_out_of_memory)
            return
        values[rows] = out

    def finish(self, values: np.ndarray, errors: list[str | None]) -> EncodedBatch:
        """Refuse non-finite vectors (and, for float16 storage, values it cannot hold), zero the
        failed rows and cast to the storage dtype."""
        bad = ~np.isfinite(values).all(axis=1)
        if self.dtype == "float16":
            too_big = np.abs(np.nan_to_num(values)).max(axis=1, initial=0.0) > FLOAT16_MAX
        else:
            too_big = np.zeros(len(values), dtype=bool)
        for i in np.flatnonzero((bad | too_big)):
            if errors[i] is None:
                errors[i] = f"{self.name}: " + ("non-finite values in the embedding" if bad[i] else "embedding values exceed the float16 range")
        failed = np.array([e is not None for e in errors], dtype=bool)
        values[failed] = 0.0
        return EncodedBatch(values.astype(self.dtype), errors)


# ---- Hugging Face transformers --------------------------------------------------------------
@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (one per actor otherwise)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _hidden_size(config: Any) -> int | None:
    for attr in ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    # RoBERTa-style models reserve the first positions for the padding offset.
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "roberta-prelayernorm"):
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return limit


@register("hf")
class TransformerEncoder(PretrainedEncoder):
    """A Hugging Face model + tokenizer from a directory (or a hub id when online).

    Args (all recorded in the manifest, so a worker rebuilds exactly this encoder):
      model         directory with config.json, weights, tokenizer files; or a hub id
      input         ``smiles`` (RDKit canonical isomeric SMILES) or ``selfies`` (converted from
                    the SMILES, retried from the canonical SMILES, as SELFIES-TED does)
      selfies_spaced  put a space between SELFIES symbols (``[C] [=O]``), as SELFIES-TED's
                    whitespace tokenizer expects
      pooling       ``mean`` (over the attention mask, special tokens included) or ``cls``
                    (the first token's hidden state)
      max_length    tokens per molecule, special tokens included; default: the tokenizer's or
                    the model's position limit
      truncation    ``truncate`` (keep the first max_length tokens) or ``error`` (the molecule
                    is absent for this modality, the reason recorded)
      precision     compute dtype on a GPU: ``auto`` (bfloat16 where supported, else float16),
                    ``bfloat16``, ``float16`` or ``float32``; on a CPU always float32
      dtype         stored dtype: ``float16`` (default: half the bytes) or ``float32``
      trust_remote_code  let transformers run model code shipped in the model directory
    Encoder-decoder models (BART, T5) run their encoder only. Output dim is the model config's
    hidden size.
    """

    description = "Hugging Face transformer from a local directory or hub id (hf=PATH;input=smiles|selfies;pooling=mean|cls;...; needs [hf])"
    version = "1"
    dtype = "float16"
    default_batch_size = 512
    model_files = HF_MODEL_FILES
    preset: ClassVar[dict[str, Any]] = {
        "input": "smiles",
        "selfies_spaced": True,
        "pooling": "mean",
        "max_length": None,
        "truncation": "truncate",
        "precision": "auto",
        "trust_remote_code": False,
    }
    option_types = {
        **PretrainedEncoder.option_types,
        "input": str,
        "selfies_spaced": _parse_bool,
        "pooling": str,
        "max_length": _optional_int,
        "truncation": str,
        "precision": str,
        "trust_remote_code": _parse_bool,
    }
    INPUTS = ("smiles", "selfies")
    POOLINGS = ("mean", "cls")
    TRUNCATIONS = ("truncate", "error")
    PRECISIONS = ("auto", "bfloat16", "float16", "float32")
    # Padded tokens per forward pass (rows x longest row); halved after an out-of-memory error.
    # Env DMF_HF_MAX_TOKENS overrides both; it changes speed and memory, never the vectors.
    GPU_MAX_TOKENS = 65536
    CPU_MAX_TOKENS = 4096
    # A pass takes shorter rows (padding them) only until it holds this many tokens.
    GPU_MIN_TOKENS = 8192
    CPU_MIN_TOKENS = 512
    MAX_ROWS = 1024

    def __init__(
        self,
        model: str,
        sha256: str | None = None,
        revision: str | None = None,
        dtype: str | None = None,
        input: str | None = None,
        selfies_spaced: bool | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        truncation: str | None = None,
        precision: str | None = None,
        trust_remote_code: bool | None = None,
        device: str = "auto",
        num_gpus: float | None = None,
    ):
        given = {
            "input": input, "selfies_spaced": selfies_spaced, "pooling": pooling, "max_length": max_length,
            "truncation": truncation, "precision": precision, "trust_remote_code": trust_remote_code,
        }
        opts = {k: (self.preset[k] if v is None else v) for k, v in given.items()}
        problems = []
        for key, allowed in (("input", self.INPUTS), ("pooling", self.POOLINGS), ("truncation", self.TRUNCATIONS), ("precision", self.PRECISIONS)):
            if opts[key] not in allowed:
                problems.append(f"{key} {opts[key]!r} is not one of {', '.join(allowed)}")
        if opts["max_length"] is not None and int(opts["max_length"]) < 1:
            problems.append(f"max_length {opts['max_length']} is not positive")
        if problems:
            raise ValueError(f"encoder {self.name!r}: " + "; ".join(problems))
        transformers = _require_transformers()
        # super().__init__ resolves the location (a hub id becomes a local snapshot) and hashes it.
        self._config = None
        self._tokenizer = None
        opts["selfies_spaced"] = bool(opts["selfies_spaced"])
        opts["trust_remote_code"] = bool(opts["trust_remote_code"])
        super().__init__(model, sha256=sha256, revision=revision, dtype=dtype, device=device, num_gpus=num_gpus, **opts)
        with _quiet_transformers():
            self._config = transformers.AutoConfig.from_pretrained(self.directory, trust_remote_code=opts["trust_remote_code"])
        dim = _hidden_size(self._config)
        if dim is None:
            raise ValueError(f"encoder {self.name!r}: {self.model}/config.json names no hidden size")
        self._dim = dim
        limit = _position_limit(self._config)
        if opts["max_length"] is None:
            tokenizer_limit = getattr(self.tokenizer(), "model_max_length", None)
            candidates = [x for x in (tokenizer_limit, limit) if isinstance(x, int) and 0 < x < 1_000_000]
            opts["max_length"] = min(candidates) if candidates else 512
        opts["max_length"] = int(opts["max_length"])
        self.args["max_length"] = opts["max_length"]
        if limit is not None and opts["max_length"] > limit:
            raise ValueError(f"encoder {self.name!r}: max_length {opts['max_length']} exceeds the model's {limit} positions")
        self.options = opts
        env = os.environ.get("DMF_HF_MAX_TOKENS")
        self._max_tokens = int(env) if env else None

    @property
    def dim(self) -> int:
        return self._dim

    # -- loading ----------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            transformers = _require_transformers()
            with _quiet_transformers():
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                    self.directory, trust_remote_code=self.args["trust_remote_code"]
                )
        return self._tokenizer

    def compute_dtype(self, device: str):
        import torch

        if device == "cpu":
            return torch.float32
        precision = self.options["precision"]
        if precision == "auto":
            precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return getattr(torch, precision)

    def load_model(self, directory: str, device: str) -> Any:
        transformers = _require_transformers()
        with _quiet_transformers():
            model = transformers.AutoModel.from_pretrained(directory, trust_remote_code=self.args["trust_remote_code"])
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()  # the decoder is dropped with its weights
        model = model.to(device=device, dtype=self.compute_dtype(device)).eval()
        self.tokenizer()
        return model

    def max_tokens(self, device: str) -> int:
        if self._max_tokens is None:
            self._max_tokens = self.GPU_MAX_TOKENS if device == "cuda" else self.CPU_MAX_TOKENS
        return self._max_tokens

    def min_tokens(self, device: str) -> int:
        return min(self.max_tokens(device), self.GPU_MIN_TOKENS if device == "cuda" else self.CPU_MIN_TOKENS)

    # -- text and tokens ----------------------------------------------------------------------------
    def text_of(self, molecule: Molecule) -> str:
        """The string the tokenizer sees; raises InvalidSmilesError when SELFIES conversion fails."""
        if self.options["input"] == "smiles":
            return molecule.smiles
        text = to_selfies(molecule.smiles)
        return text.replace("][", "] [") if self.options["selfies_spaced"] else text

    def token_ids(self, texts: list[str], errors: list[str | None], rows: list[int]) -> dict[int, list[int]]:
        """Token ids per row; over-long rows are truncated or get an error, by policy."""
        tokenizer = self.tokenizer()
        max_length = self.options["max_length"]
        ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        out: dict[int, list[int]] = {}
        too_long = []
        for row, text, seq in zip(rows, texts, ids):
            if len(seq) <= max_length:
                out[row] = list(seq)
            elif self.options["truncation"] == "error":
                errors[row] = f"{self.name}: {len(seq)} tokens > max_length {max_length} (truncation='error')"
            else:
                too_long.append((row, text))
        if too_long:
            cut = tokenizer([t for _, t in too_long], add_special_tokens=True, truncation=True, max_length=max_length, verbose=False)["input_ids"]
            out.update({row: list(seq) for (row, _), seq in zip(too_long, cut)})
        return out

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, model: Any, sequences: list[list[int]]) -> np.ndarray:
        """Pooled float32 vectors for token id sequences, right-padded to the longest."""
        import torch

        device = next(model.parameters()).device
        pad = self.tokenizer().pad_token_id
        pad = 0 if pad is None else int(pad)
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with torch.inference_mode():
            output = model(input_ids=ids, attention_mask=mask)
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if self.options["pooling"] == "cls":
                pooled = hidden[:, 0].float()
            else:
                keep = mask.unsqueeze(-1).bool()
                # where(), not multiply: a NaN at a padded position must not leak into the sum.
                summed = torch.where(keep, hidden.float(), 0.0).sum(dim=1)
                pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        return pooled.cpu().numpy()

    def encode(self, molecules: list[Molecule]) -> EncodedBatch:
        n = len(molecules)
        values = np.zeros((n, self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * n
        texts, rows = [], []
        for i, molecule in enumerate(molecules):
            try:
                texts.append(self.text_of(molecule))
                rows.append(i)
            except InvalidSmilesError as exc:
                errors[i] = f"{self.name}: {_one_line(exc.reason)}"
        if not rows:
            return self.finish(values, errors)
        model = self.loaded()
        device = next(model.parameters()).device.type
        ids = self.token_ids(texts, errors, rows)
        ready = sorted(ids)
        lengths = [len(ids[r]) for r in ready]

        def shrink(batch_rows: list[int]) -> None:
            padded = len(batch_rows) * max(len(ids[r]) for r in batch_rows)
            self._max_tokens = max(64, min(self.max_tokens(device), padded // 2))

        for bucket in length_buckets(lengths, self.max_tokens(device), self.MAX_ROWS, self.min_tokens(device)):
            batch_rows = [ready[j] for j in bucket]
            self.run_split(batch_rows, lambda rs: self.forward(model, [ids[r] for r in rs]), values, errors, shrink)
        return self.finish(values, errors)


@register("selfies-ted")
class SelfiesTED(TransformerEncoder):
    """SELFIES-TED (IBM): a BART encoder over spaced SELFIES, 128 tokens, mean pooled over the
    attention mask, exactly the recipe of its model card (1024-d for the released weights)."""

    description = "SELFIES-TED: BART encoder over SELFIES, mean pooled, 128 tokens (selfies-ted=PATH; needs [hf])"
    preset = {
        **TransformerEncoder.preset,
        "input": "selfies",
        "selfies_spaced": True,
        "pooling": "mean",
        "max_length": 128,
        "truncation": "truncate",
    }


# ---- random models for tests and benchmarks ---------------------------------------------------
SELFIES_TED_SIZE = {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096}
TINY_SIZE = {"d_model": 32, "layers": 2, "heads": 4, "ffn": 64}


def selfies_vocabulary(smiles: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Special tokens, SELFIES' robust alphabet, branch/ring symbols and every symbol of the
    given molecules' SELFIES (molecules that do not convert are skipped)."""
    import selfies

    symbols = set(selfies.get_semantic_robust_alphabet())
    for bond in ("", "=", "#"):
        for n in (1, 2, 3):
            symbols |= {f"[{bond}Branch{n}]", f"[{bond}Ring{n}]"}
    for s in smiles:
        try:
            symbols |= set(selfies.split_selfies(to_selfies(s)))
        except InvalidSmilesError:
            continue
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(symbols)]


def save_random_bart(
    directory: str,
    size: dict[str, int] | None = None,
    smiles: list[str] | tuple[str, ...] = (),
    max_positions: int = 128,
    seed: int = 0,
    weights_dtype: str = "float32",
) -> str:
    """Write a random-weight BART with a SELFIES word-level tokenizer (SELFIES-TED's layout:
    ``[CLS] [C] [=O] ... [SEP]``, whitespace-split) to ``directory``. For tests and benchmarks:
    the vectors mean nothing, the shapes and costs are real. Needs the [hf] extra."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    transformers = _require_transformers()
    size = {**TINY_SIZE, **(size or {})}
    vocab = {token: i for i, token in enumerate(selfies_vocabulary(smiles))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_positions,
    )
    config = transformers.BartConfig(
        vocab_size=len(vocab), d_model=size["d_model"], encoder_layers=size["layers"], decoder_layers=1,
        encoder_attention_heads=size["heads"], decoder_attention_heads=size["heads"],
        encoder_ffn_dim=size["ffn"], decoder_ffn_dim=size["ffn"], max_position_embeddings=max_positions,
        pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"],
        decoder_start_token_id=vocab["[SEP]"], forced_eos_token_id=vocab["[SEP]"], dropout=0.0,
    )
    os.makedirs(directory, exist_ok=True)
    with _quiet_transformers():
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = transformers.BartForConditionalGeneration(config)
        finally:
            torch.random.set_rng_state(generator_state)
        model = model.to(getattr(torch, weights_dtype))
        model.save_pretrained(directory)
        fast.save_pretrained(directory)
    return directory
