"""The encoder protocol and the one registry of encoders.

An encoder turns a batch of molecules into a batch of fixed-length vectors, one modality.
Every encoder declares what the store and the pipeline need to know about it: its name, dim,
dtype, resources, default batch size, a version (bumped whenever its output changes) and the
args it was built with, so a store manifest or a model card can rebuild it exactly.

Third-party encoders register through the Python entry-point group ``dmf_ray.encoders``
(``name = "package.module:EncoderClass"``); they are loaded on first lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from dmf_ray.molecules import Molecule

ENTRY_POINT_GROUP = "dmf_ray.encoders"
DTYPES = ("uint8", "float16", "float32")

_REGISTRY: dict[str, type["Encoder"]] = {}
_entry_points_loaded = False


class UnknownEncoderError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


@dataclass
class EncodedBatch:
    """Vectors for a batch; rows whose ``errors`` entry is not None hold no vector."""

    values: np.ndarray  # [n, dim] of the encoder's dtype; rows of failed molecules are zero
    errors: list[str | None] = field(default_factory=list)


class Encoder:
    """Base class. Subclasses set the class attributes and implement ``encode_one`` or
    override ``encode`` for batched (neural) models."""

    name: ClassVar[str] = ""  # set by @register
    dtype: ClassVar[str] = "float32"
    version: ClassVar[str] = "1"
    default_batch_size: ClassVar[int] = 1024
    num_gpus: ClassVar[float] = 0.0
    description: ClassVar[str] = ""
    # True for cheap CPU encoders that need only the RDKit molecule: featurize runs them in the
    # parse actors on the molecules just parsed, which saves serialising every molecule to the
    # next actor pool and back (for ECFP that hop costs more than the fingerprint), one molecule
    # at a time through ``encode_one``. False (the default, and right for models and plugins)
    # gives the encoder an actor pool of its own.
    inline: ClassVar[bool] = False
    # Heavy atoms above which the encoder refuses a molecule (that modality is then absent, with
    # the reason): bounds the cost of one molecule. Built-ins set it from their measured cost
    # curve (README, "Molecule size limits"); None: no limit.
    max_heavy_atoms: ClassVar[int | None] = None

    def __init__(self, **args: Any):
        self.args = dict(args)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @classmethod
    def from_option(cls, value: str) -> "Encoder":
        """Build from the text after ``name=`` on the command line (``--encoders name=value``)."""
        raise ValueError(f"encoder {cls.name!r} takes no value (got {value!r})")

    def encode_one(self, molecule: Molecule) -> np.ndarray:
        raise NotImplementedError

    def encode_into(self, molecule: Molecule, row: np.ndarray) -> str | None:
        """Encode one molecule into ``row`` (a zeroed row of a batch). Returns None, or the
        reason it failed, the row then left zero: one molecule's failure never fails a batch."""
        refused = size_refusal(self, molecule)
        if refused is not None:
            return refused
        try:
            row[...] = self.encode_one(molecule)
        except Exception as exc:  # a descriptor blowing up on one odd molecule
            row[...] = 0
            return f"{self.name}: {type(exc).__name__}: {exc}"
        return None

    def encode(self, molecules: list[Molecule]) -> EncodedBatch:
        """Encode a batch; one molecule's failure never fails the batch."""
        values = np.zeros((len(molecules), self.dim), dtype=self.dtype)
        errors = [self.encode_into(molecule, values[i]) for i, molecule in enumerate(molecules)]
        return EncodedBatch(values, errors)

    def runs_inline(self) -> bool:
        """Whether featurize runs this encoder in its parse actors, one molecule at a time
        (through ``encode_one``) as each is parsed: only for ``inline`` encoders that kept the
        per-molecule ``encode``, since a batched ``encode`` would be bypassed there."""
        return self.inline and type(self).encode is Encoder.encode

    def resources(self) -> dict[str, float]:
        return {"num_cpus": 1.0, "num_gpus": float(self.num_gpus)}

    def spec(self) -> dict[str, Any]:
        """What the store manifest and the model card record about this modality."""
        return {
            "encoder": self.name,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "args": self.args,
            "dim": self.dim,
            "dtype": self.dtype,
            "version": self.version,
            "num_gpus": float(self.num_gpus),
            "batch_size": self.default_batch_size,
        }


def size_refusal(encoder: Encoder, molecule: Molecule) -> str | None:
    """The reason ``encoder`` refuses ``molecule`` for its size (more heavy atoms than the
    encoder's ``max_heavy_atoms``), or None. Batched ``encode`` overrides call it per molecule."""
    limit = encoder.max_heavy_atoms
    if limit is None:
        return None
    atoms = molecule.mol.GetNumHeavyAtoms()
    if atoms <= limit:
        return None
    return f"{encoder.name}: {atoms:,} heavy atoms exceeds the encoder's limit of {limit:,}"


def register(alias: str):
    """Class decorator adding an encoder to the registry under ``alias``."""

    def decorator(cls: type[Encoder]) -> type[Encoder]:
        if alias in _REGISTRY and _REGISTRY[alias] is not cls:
            raise ValueError(f"encoder name {alias!r} is already registered by {_REGISTRY[alias]}")
        if cls.dtype not in DTYPES:
            raise ValueError(f"encoder {alias!r} has dtype {cls.dtype!r}; expected one of {DTYPES}")
        cls.name = alias
        _REGISTRY[alias] = cls
        return cls

    return decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if ep.name not in _REGISTRY:
            register(ep.name)(cls)


def available_encoders() -> list[str]:
    """Every registered name, built-ins first: this also feeds the CLI's choices."""
    _load_entry_points()
    return list(_REGISTRY)


def encoder_class(name: str) -> type[Encoder]:
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"unknown encoder {name!r}; available: {', '.join(available_encoders())}"
        ) from None


def create_encoder(name: str, args: dict[str, Any] | None = None) -> Encoder:
    return encoder_class(name)(**(args or {}))


def encoder_from_option(option: str) -> tuple[str, Encoder]:
    """Parse one ``--encoders`` item: ``ecfp`` or ``name=value`` (a preset with a value,
    e.g. ``selfies-ted=/models/selfies-ted``). Returns (modality name, encoder)."""
    name, sep, value = option.strip().partition("=")
    cls = encoder_class(name)
    return name, (cls.from_option(value) if sep else cls())


def encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from the spec a store manifest or a model card recorded."""
    if spec["encoder"] not in _REGISTRY and spec.get("class"):
        # A Ray worker has not imported the plugin the driver registered: importing its
        # module runs its @register.
        import_module(spec["class"].split(":", 1)[0])
    encoder = create_encoder(spec["encoder"], spec.get("args"))
    if str(spec.get("version", encoder.version)) != str(encoder.version):
        raise ValueError(
            f"encoder {spec['encoder']!r} recorded version {spec.get('version')} but the "
            f"installed one is version {encoder.version}: its vectors would differ"
        )
    if "dim" in spec and int(spec["dim"]) != encoder.dim:
        raise ValueError(f"encoder {spec['encoder']!r} recorded dim {spec['dim']} but builds dim {encoder.dim}")
    return encoder
