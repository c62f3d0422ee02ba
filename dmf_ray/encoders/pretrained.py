"""The base for every model that lives in files: ``PretrainedEncoder``.

What every file-backed model needs, whatever package runs it:

- model identity: the location (a directory, ``package:NAME`` for weights shipped inside a
  Python package, or a hub id) and a content hash of its files, recorded in the spec and
  verified on every node that rebuilds the encoder (``dmf_ray.encoders.identity``); for a
  package location also the package's version (a mismatch is refused with one line);
- one model load per process, so once per Ray actor or Serve replica;
- GPU placement with a CPU fallback (``num_gpus``: a class attribute, or a constructor arg);
- per-molecule isolation: a failing batch is split in halves until the failing molecules are
  alone; an out-of-memory batch takes the same path after freeing the allocator's cache (and
  may shrink the encoder's batch budget), so a batch too large for the card is split until it
  fits;
- canonical molecules: ``embed`` receives molecules rebuilt from their canonical SMILES, so
  one molecule id gets one vector whatever the input spelling (atom-order-dependent features,
  such as chiral tags, would differ otherwise);
- output checks: non-finite vectors and values outside float16's range are refused per molecule.

A plugin wrapping a model subclasses it and writes ``load_model`` and ``embed``; ``embed`` may
refuse single molecules by returning ``(values, reasons)`` or raising ``MoleculeRefused``.
Nothing here imports torch at import time.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, ClassVar

import numpy as np

from dmf_ray.encoders.base import EncodedBatch, Encoder, MoleculeRefused, canonical_molecules
from dmf_ray.encoders.identity import (
    PACKAGE_PREFIX,
    ModelMismatchError,
    content_hash,
    package_version,
    resolve_model,
)
from dmf_ray.molecules import Molecule

FLOAT16_MAX = 65504.0
DEVICES = ("auto", "cpu")
STORAGE_DTYPES = ("float16", "float32")


# ---- helpers --------------------------------------------------------------------------------
def one_line(text: str, limit: int = 400) -> str:
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


def free_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def optional_int(text: str) -> int | None:
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
    in the spec; ``device``/``num_gpus`` only say where to run.

    ``num_gpus`` (class attribute, 1 here; a subclass may set another value, 0 for a CPU-only
    model; a constructor arg overrides it) says how much of a GPU an actor asks for when the
    cluster has GPUs; the model runs on CPU wherever torch sees no GPU. ``device="cpu"`` asks
    for no GPU at all. ``default_model``, when set, is the location used when the encoder is
    named without a value (``--encoders chemnet``).
    """

    dtype = "float32"  # class default; an instance stores ``dtype`` from its args
    default_batch_size = 256
    num_gpus = 1.0
    # A large model's torch threads keep several cores busy: a CPU pool gets cpus // 4 actors.
    cores_per_actor = 4
    model_files: ClassVar[tuple[str, ...]] = ("*",)
    default_model: ClassVar[str | None] = None
    # The pip extra that provides the packages this encoder needs (named in one-line errors).
    extra: ClassVar[str | None] = None
    # ``--encoders name=PATH;key=value;...``: the keys accepted and how to parse their values.
    option_types: ClassVar[dict[str, Callable[[str], Any]]] = {
        "dtype": str,
        "device": str,
        "num_gpus": float,
        "revision": str,
    }

    def __init__(
        self,
        model: str | None = None,
        sha256: str | None = None,
        revision: str | None = None,
        dtype: str | None = None,
        device: str = "auto",
        num_gpus: float | None = None,
        package: str | None = None,
        **args: Any,
    ):
        dtype = dtype or type(self).dtype
        model = model or self.default_model
        problems = []
        if not model:
            problems.append(f"needs a model location: --encoders {self.name}=/path/to/model")
        if dtype not in STORAGE_DTYPES:
            problems.append(f"dtype {dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
        if device not in DEVICES:
            problems.append(f"device {device!r} is not one of {', '.join(DEVICES)}")
        if num_gpus is not None and float(num_gpus) < 0:
            problems.append(f"num_gpus {num_gpus} is negative")
        if problems:
            raise ValueError(f"encoder {self.name!r}: " + "; ".join(problems))
        location, revision, directory = resolve_model(model, revision, self.model_files, self.extra)
        recorded: dict[str, Any] = {"model": location}
        if location.startswith(PACKAGE_PREFIX):
            installed = package_version(location[len(PACKAGE_PREFIX):].split("/", 1)[0])
            if package is not None and package != installed:
                raise ModelMismatchError(
                    f"encoder {self.name!r}: this modality was built with {package} but {installed} is installed "
                    f"here; its preprocessing may differ: install {package} or use another store"
                )
            recorded["package"] = installed
        digest = content_hash(directory, self.model_files)
        if sha256 is not None and sha256 != digest:
            raise ModelMismatchError(
                f"encoder {self.name!r}: the model files at {location!r} have {digest} but this "
                f"modality was built from {sha256}: a different model cannot be stored under the same name"
            )
        if revision is not None:
            recorded["revision"] = revision
        recorded.update(sha256=digest, dtype=dtype, **args)
        super().__init__(**recorded)
        self.model = location
        self.directory = directory
        self.sha256 = digest
        self.dtype = dtype
        self.device = device
        self.num_gpus = 0.0 if device == "cpu" else float(type(self).num_gpus if num_gpus is None else num_gpus)
        self._loaded: Any = None
        self._max_rows: int | None = None  # molecules per embed call; halved on out-of-memory
        self._lock = threading.Lock()

    # -- construction from the CLI ------------------------------------------------------------
    @classmethod
    def parse_option(cls, value: str) -> dict[str, Any]:
        """``PATH;key=value;...`` -> constructor kwargs (PATH may be empty when the encoder has a
        default model: ``name=;dtype=float16``); every problem in one message."""
        path, *items = [p.strip() for p in value.split(";")]
        if not path and not cls.default_model:
            raise ValueError(f"encoder {cls.name!r} needs a model directory or hub id: {cls.name}=/path/to/model")
        kwargs: dict[str, Any] = {"model": path} if path else {}
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
        """Load the model from the files in ``directory`` onto ``device`` ('cuda' or 'cpu');
        called once per process. Load weights with ``torch.load(..., weights_only=True)`` or
        safetensors, never by unpickling."""
        raise NotImplementedError

    def embed(self, model: Any, molecules: list[Molecule]) -> "np.ndarray | tuple[np.ndarray, list[str | None]]":
        """[len(molecules), dim] floats for a batch of canonical molecules, or ``(values,
        reasons)`` where ``reasons[i]`` is None or why molecule i is refused (its row is then
        ignored). Raise to fail the batch: it is then split to find the molecules that fail; a
        ``MoleculeRefused`` raised for a single molecule records its reason verbatim."""
        raise NotImplementedError

    def encode(self, molecules: list[Molecule]) -> EncodedBatch:
        """Canonical molecules through ``embed`` in one call (split on failure); see the class."""
        values = np.zeros((len(molecules), self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(molecules)
        if molecules:
            model = self.loaded()
            molecules = canonical_molecules(molecules)
            step = self._max_rows or len(molecules)
            for start in range(0, len(molecules), step):
                self.run_split(list(range(start, min(start + step, len(molecules)))),
                               lambda idx: self.embed(model, [molecules[i] for i in idx]), values, errors,
                               self._halve_rows)
        return self.finish(values, errors)

    def _halve_rows(self, rows: list[int]) -> None:
        # Out of GPU memory on len(rows) molecules: later calls of this actor pass at most half.
        self._max_rows = max(1, min(self._max_rows or len(rows), len(rows)) // 2)

    # -- failure isolation and output checks ----------------------------------------------------
    def failure(self, exc: BaseException) -> str:
        """The error recorded for a molecule that ``exc`` failed."""
        if isinstance(exc, MoleculeRefused):
            return f"{self.name}: {one_line(exc.reason)}"
        return f"{self.name}: {type(exc).__name__}: {one_line(str(exc))}"

    def run_split(
        self,
        rows: list[int],
        run: Callable[[list[int]], Any],
        values: np.ndarray,
        errors: list[str | None],
        on_out_of_memory: Callable[[list[int]], None] | None = None,
    ) -> None:
        """``values[rows] = run(rows)``; ``run`` returns [len(rows), dim] floats or ``(values,
        reasons)``. A failing call is retried on each half until the failing rows are alone,
        which then get an error. Out of GPU memory takes the same path (after freeing the
        allocator's cache and calling ``on_out_of_memory``), so a batch too large for the card
        is split until it fits."""
        try:
            out = run(rows)
            reasons = None
            if isinstance(out, tuple):
                out, reasons = out
                if len(reasons) != len(rows):
                    raise ValueError(f"model returned {len(reasons)} reasons for {len(rows)} molecules")
            out = np.asarray(out, dtype=np.float32)
            if out.shape != (len(rows), self.dim):
                raise ValueError(f"model returned shape {out.shape}, expected {(len(rows), self.dim)}")
        except Exception as exc:
            if is_out_of_memory(exc):
                free_gpu_memory()
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
        for row, reason in zip(rows, reasons or ()):
            if reason is not None:
                errors[row] = f"{self.name}: {one_line(reason)}"

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
