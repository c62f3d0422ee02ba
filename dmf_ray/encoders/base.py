"""The encoder contract, its typed spec, and the one registry of encoders.

An encoder turns a batch of molecules into a batch of fixed-length vectors: one modality.
Every encoder declares what the store and the pipelines need to know about it (``EncoderSpec``):
its name, dim, dtype, a version (bumped whenever its output changes), the args it was built
with (so a store manifest or a model card can rebuild it exactly), the datasets its model was
trained on (for leakage flags), what kind of values it returns (``value_kind``: binary, count or
continuous, which picks the fusion model's reconstruction likelihood) and what an actor running
it needs (GPUs, memory).

What an encoder receives and returns (the same in every workflow: featurize, embed, serve,
evaluate):

- molecules: ``dmf_ray.molecules.Molecule`` (id, canonical isomeric SMILES, RDKit molecule). An
  encoder whose output depends on atom order calls ``canonical_molecules`` first (the pretrained
  encoders do), so one molecule id always gets one vector, however the input spelled it.
- an ``EncodedBatch``: ``values`` [n, dim] of the declared dtype and one entry per molecule in
  ``errors``: None, or the reason that molecule has no vector (its row is zero). One molecule's
  failure never fails a batch; a molecule is never dropped silently.
- to refuse one molecule with a reason, raise ``MoleculeRefused(reason)`` from ``encode_one``
  (or from a ``PretrainedEncoder.embed`` given that single molecule), or return
  ``(values, reasons)`` from ``PretrainedEncoder.embed``.

Third-party encoders register through the Python entry-point group ``dmf_ray.encoders``
(``name = "package.module:EncoderClass"``); they are loaded on first lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rdkit import Chem

from dmf_ray.molecules import Molecule

ENTRY_POINT_GROUP = "dmf_ray.encoders"
DTYPES = ("uint8", "float16", "float32")
# What an encoder's values are; the fusion model reconstructs each kind with its own likelihood
# (dmf_ray.model.likelihoods): binary = every value 0 or 1, count = non-negative integers,
# continuous = anything else (the default, and right for neural embeddings and descriptors).
VALUE_KINDS = ("binary", "count", "continuous")
ValueKind = Literal["binary", "count", "continuous"]

_REGISTRY: dict[str, type["Encoder"]] = {}
_entry_points_loaded = False


class UnknownEncoderError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class MoleculeRefused(ValueError):
    """An encoder cannot encode this one molecule; ``reason`` is recorded as its error (the
    modality is then absent for it), verbatim, without an exception type in front."""

    def __init__(self, reason: str):
        self.reason = " ".join(str(reason).split())
        super().__init__(self.reason)


class EncoderSpec(BaseModel):
    """What a store manifest and a model card record about one modality; enough to rebuild
    its encoder on any node (``encoder_from_spec``). Stored as JSON (``to_manifest``)."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, extra="ignore")

    encoder: str = Field(description="registry name of the encoder, e.g. 'ecfp' or 'chemnet'")
    class_: str | None = Field(None, alias="class", description="'module:Class' of the encoder; lets a worker "
                               "import a plugin the driver registered")
    args: dict[str, Any] = Field(default_factory=dict, description="constructor args that determine the vectors "
                                 "(model location, sha256, options)")
    dim: int = Field(ge=1, description="vector length")
    dtype: Literal["uint8", "float16", "float32"] = Field(description="stored dtype of the vectors")
    version: str = Field("1", description="encoder version; bumped whenever its vectors change")
    num_gpus: float = Field(0.0, ge=0, description="GPUs an actor asks for where the cluster has GPUs (0: CPU only)")
    batch_size: int = Field(1024, ge=1, description="molecules per encode() call")
    memory: int | None = Field(None, ge=0, description="bytes of memory one actor holding this encoder needs "
                               "(declared to Ray's scheduler); None: Ray's default")
    trained_on: list[str] = Field(default_factory=list, description="datasets the encoder's model was trained on "
                                  "(for leakage flags); empty for rule-based encoders")
    value_kind: ValueKind | None = Field(None, description="binary (0/1), count (non-negative integers) or "
                                         "continuous; None: not recorded (a store written before the field), "
                                         "see value_kind_of")

    def to_manifest(self) -> dict[str, Any]:
        """The JSON-ready dict written to store manifests and model cards."""
        return self.model_dump(by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, spec: "EncoderSpec | Mapping[str, Any]") -> "EncoderSpec":
        """Validate a recorded spec; every problem in one ValueError line."""
        if isinstance(spec, EncoderSpec):
            return spec
        try:
            return cls.model_validate(dict(spec))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"encoder spec {dict(spec).get('encoder', '?')!r} is invalid: {problems}") from None


@dataclass
class EncodedBatch:
    """Vectors for a batch: ``values`` [n, dim] of the encoder's dtype; ``errors`` has one entry
    per molecule, None or the reason it has no vector (its row of ``values`` is then zero)."""

    values: np.ndarray
    errors: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class ActorPlan:
    """How a pipeline runs one encoder's actor pool: pool size bounds, and per actor the CPUs,
    GPUs and memory (bytes, None = Ray's default) to ask Ray for."""

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float
    memory: int | None


def canonical_molecules(molecules: list[Molecule]) -> list[Molecule]:
    """The same molecules with ``mol`` rebuilt from their canonical SMILES, so that atom order
    (and the chiral tags, which are relative to it) depends only on the molecule, not on how its
    input was spelled. ~30 us per molecule; encoders whose features use atom order call it."""
    out = []
    for m in molecules:
        mol = Chem.MolFromSmiles(m.smiles)
        out.append(m if mol is None else Molecule(m.mol_id, m.smiles, mol))
    return out


class Encoder:
    """Base class. Subclasses set the class attributes and implement ``encode_one`` or
    override ``encode`` for batched (neural) models. See the module docstring for the contract."""

    name: ClassVar[str] = ""  # set by @register
    dtype: ClassVar[str] = "float32"
    version: ClassVar[str] = "1"
    default_batch_size: ClassVar[int] = 1024
    # GPUs an actor asks for when the cluster has GPUs; 0 = a CPU encoder. Model encoders
    # keep the class value unless given a ``num_gpus`` (or ``device="cpu"``) constructor arg.
    num_gpus: ClassVar[float] = 0.0
    # Cores one CPU actor of this encoder keeps busy (torch threads): a CPU pool gets
    # cpus // cores_per_actor actors. 1 for RDKit encoders and small networks.
    cores_per_actor: ClassVar[int] = 1
    # Bytes one actor holding this encoder needs, declared to Ray; None = Ray's default.
    memory: ClassVar[int | None] = None
    # Datasets the model was trained on (TDC / MoleculeNet names), for leakage flags.
    trained_on: ClassVar[tuple[str, ...]] = ()
    # What the values are (VALUE_KINDS): "binary" promises every value is 0 or 1, "count" that
    # every value is a non-negative integer. Plugins that say nothing are "continuous", which is
    # always safe (a squared error on standardised values).
    value_kind: ClassVar[ValueKind] = "continuous"
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
        """Length of every vector this encoder returns."""
        raise NotImplementedError

    @classmethod
    def from_option(cls, value: str) -> "Encoder":
        """Build from the text after ``name=`` on the command line (``--encoders name=value``).
        ``--encoders name`` (no ``=``) builds ``cls()``: the encoder's default.

        Raises ValueError (one line) when the value is not understood."""
        raise ValueError(f"encoder {cls.name!r} takes no value (got {value!r})")

    def encode_one(self, molecule: Molecule) -> np.ndarray:
        """[dim] vector for one molecule; raise ``MoleculeRefused(reason)`` (or any exception)
        when it cannot be encoded."""
        raise NotImplementedError

    def encode_into(self, molecule: Molecule, row: np.ndarray) -> str | None:
        """Encode one molecule into ``row`` (a zeroed row of a batch). Returns None, or the
        reason it failed, the row then left zero: one molecule's failure never fails a batch."""
        refused = size_refusal(self, molecule)
        if refused is not None:
            return refused
        try:
            row[...] = self.encode_one(molecule)
        except MoleculeRefused as exc:
            row[...] = 0
            return f"{self.name}: {exc.reason}"
        except Exception as exc:  # a descriptor blowing up on one odd molecule
            row[...] = 0
            return f"{self.name}: {type(exc).__name__}: {exc}"
        return None

    def encode(self, molecules: list[Molecule]) -> EncodedBatch:
        """Encode a batch: ``values`` [len(molecules), dim] of ``dtype`` and one error entry per
        molecule. Never raises for one molecule's failure."""
        values = np.zeros((len(molecules), self.dim), dtype=self.dtype)
        errors = [self.encode_into(molecule, values[i]) for i, molecule in enumerate(molecules)]
        return EncodedBatch(values, errors)

    def runs_inline(self) -> bool:
        """Whether featurize runs this encoder in its parse actors, one molecule at a time
        (through ``encode_one``) as each is parsed: only for ``inline`` encoders that kept the
        per-molecule ``encode``, since a batched ``encode`` would be bypassed there."""
        return self.inline and type(self).encode is Encoder.encode

    def resources(self) -> dict[str, float]:
        """Ray resources of one actor (or Serve replica) where the cluster has GPUs."""
        out = {"num_cpus": 1.0, "num_gpus": float(self.num_gpus)}
        if self.memory:
            out["memory"] = float(self.memory)
        return out

    def actor_plan(self, cpus: float, gpus: float, cpus_per_actor: float) -> ActorPlan:
        """The actor pool for this encoder on a cluster with ``cpus`` CPUs and ``gpus`` GPUs;
        ``cpus_per_actor`` is what a CPU actor asks for (pipelines keep a share of the cluster
        for their read and write tasks). GPU encoders get ``gpus // num_gpus`` GPU actors where
        there are GPUs; on a CPU-only cluster every encoder gets ``cpus // cores_per_actor``."""
        # A fixed pool (min = max): an actor's start (imports, model load) costs seconds, and
        # Ray Data's autoscaling pool starts one and adds the others only once work queues up.
        if self.num_gpus > 0 and gpus > 0:
            size = max(1, int(gpus // self.num_gpus))
            return ActorPlan(size, size, 1.0, float(self.num_gpus), self.memory)
        size = max(1, int(cpus // max(1, self.cores_per_actor)))
        return ActorPlan(size, size, cpus_per_actor, 0.0, self.memory)

    def encoder_spec(self) -> EncoderSpec:
        """The typed record of this modality (see ``EncoderSpec``)."""
        return EncoderSpec(
            encoder=self.name, class_=f"{type(self).__module__}:{type(self).__qualname__}", args=self.args,
            dim=self.dim, dtype=self.dtype, version=str(self.version), num_gpus=float(self.num_gpus),
            batch_size=self.default_batch_size, memory=self.memory, trained_on=list(self.trained_on),
            value_kind=self.value_kind,
        )

    def spec(self) -> dict[str, Any]:
        """``encoder_spec()`` as the JSON-ready dict the store manifest and model card record."""
        return self.encoder_spec().to_manifest()


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
    """Class decorator adding an encoder to the registry under ``alias``.

    Raises ValueError when the name is taken by another class or the dtype is not one of DTYPES."""

    def decorator(cls: type[Encoder]) -> type[Encoder]:
        if alias in _REGISTRY and _REGISTRY[alias] is not cls:
            raise ValueError(f"encoder name {alias!r} is already registered by {_REGISTRY[alias]}")
        if cls.dtype not in DTYPES:
            raise ValueError(f"encoder {alias!r} has dtype {cls.dtype!r}; expected one of {DTYPES}")
        if cls.value_kind not in VALUE_KINDS:
            raise ValueError(f"encoder {alias!r} has value_kind {cls.value_kind!r}; expected one of {VALUE_KINDS}")
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
    """The class registered as ``name``; raises UnknownEncoderError naming the available ones."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"unknown encoder {name!r}; available: {', '.join(available_encoders())}"
        ) from None


def create_encoder(name: str, args: dict[str, Any] | None = None) -> Encoder:
    """``encoder_class(name)(**args)``."""
    return encoder_class(name)(**(args or {}))


def encoder_from_option(option: str) -> tuple[str, Encoder]:
    """Parse one ``--encoders`` item: ``ecfp``, ``chemnet`` (the encoder's default model) or
    ``name=value`` (e.g. ``selfies-ted=/models/selfies-ted``). Returns (modality name, encoder)."""
    name, sep, value = option.strip().partition("=")
    cls = encoder_class(name)
    return name, (cls.from_option(value) if sep else cls())


def value_kind_of(spec: EncoderSpec | Mapping[str, Any]) -> ValueKind:
    """The kind of values a recorded modality holds: the spec's ``value_kind`` when it has one;
    for a spec recorded before the field existed (older stores), the kind the installed encoder
    of that name declares when its version matches the recorded one (the kind is a property of
    the encoder's output, fixed by its version); otherwise "continuous", which is always safe.

    Raises ValueError when the spec itself is invalid."""
    parsed = EncoderSpec.parse(spec)
    if parsed.value_kind is not None:
        return parsed.value_kind
    try:
        cls = encoder_class(parsed.encoder)
    except UnknownEncoderError:
        return "continuous"
    return cls.value_kind if str(cls.version) == parsed.version else "continuous"


def encoder_from_spec(spec: EncoderSpec | Mapping[str, Any]) -> Encoder:
    """Rebuild an encoder from the spec a store manifest or a model card recorded.

    Raises ValueError (one line) when the spec is invalid or the installed encoder would give
    different vectors (another version or dim; for model encoders, other weights)."""
    parsed = EncoderSpec.parse(spec)
    if parsed.encoder not in _REGISTRY and parsed.class_:
        # A Ray worker has not imported the plugin the driver registered: importing its
        # module runs its @register.
        import_module(parsed.class_.split(":", 1)[0])
    encoder = create_encoder(parsed.encoder, parsed.args)
    if parsed.version != str(encoder.version):
        raise ValueError(
            f"encoder {parsed.encoder!r} recorded version {parsed.version} but the "
            f"installed one is version {encoder.version}: its vectors would differ"
        )
    if parsed.dim != encoder.dim:
        raise ValueError(f"encoder {parsed.encoder!r} recorded dim {parsed.dim} but builds dim {encoder.dim}")
    return encoder
