"""``chemprop`` / ``chemprop-admet``: the learned encoding of Chemprop v2 D-MPNN checkpoints.

The vector of one member is what Chemprop's ``MPNN.fingerprint`` returns for a molecule graph
(chemprop 2.2, Heid et al. 2024, J. Chem. Inf. Model. 64:9): directed-bond message passing
(``depth`` steps, hidden size ``d_h``), aggregated over atoms, batch-normalised when the model
was trained so; no extra descriptors. Several members are concatenated (default) or averaged
(``combine=mean``), as declared in the spec.

``--encoders chemprop`` (or ``chemprop-admet``) uses the ADMET-AI models shipped inside the
``admet-ai`` wheel (``package:admet_ai/resources/models``): one member of its classification
ensemble and one of its regression ensemble (300-d each, 600-d together), trained on 41 TDC
ADMET datasets (their names are this modality's ``trained_on``, with the MoleculeNet data sets
they share molecules and labels with; also when those files are given by path or copied: a
member is recognised by its sha256). ``chemprop=/path/model.pt`` (a file, or a directory of
members) takes any Chemprop v2 single-molecule checkpoint; options ``members=a.pt,b.pt``,
``combine=concat|mean``, ``trained_on=name,name`` (declare the training data for leakage flags).

Checkpoints are read with ``torch.load(weights_only=True)`` through an allow-list
(``chemprop_checkpoint``): never unpickled. Molecules are featurised from their canonical
SMILES (``canonical_molecules``), so chiral tags, which Chemprop reads relative to atom order,
do not depend on the input spelling. Needs the ``[graph]`` extra (chemprop, admet-ai),
imported on first use; Lightning is never started (no banners, no progress bars).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, ClassVar

import numpy as np

from dmf_ray.encoders.base import register
from dmf_ray.encoders.chemprop_checkpoint import Checkpoint, CheckpointRefused, encoder_modules, read_checkpoint
from dmf_ray.encoders.identity import PACKAGE_PREFIX, MissingExtraError, file_sha256, package_directory
from dmf_ray.encoders.pretrained import PretrainedEncoder
from dmf_ray.molecules import Molecule

ADMET_MODELS = "package:admet_ai/resources/models"
ADMET_MEMBERS = ("admet_classification/model_0.pt", "admet_regression/model_0.pt")
COMBINES = ("concat", "mean")
# TDC datasets whose molecules and labels a MoleculeNet data set also holds: a model trained on
# the former has seen the latter's test molecules.
MOLECULENET_OVERLAP = {"BBB_Martins": "bbbp", "ClinTox": "clintox", "Lipophilicity_AstraZeneca": "lipophilicity",
                       "HydrationFreeEnergy_FreeSolv": "freesolv", "Solubility_AqSolDB": "esol"}
TOX21_TASKS = ("NR-", "SR-")


def _require_chemprop():
    try:
        # Lightning (imported by chemprop) logs at INFO and warns on import; keep it off the
        # user's terminal. Nothing here starts a Trainer, so no banners or progress bars.
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "chemprop"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import chemprop.data
            import chemprop.featurizers
    except ImportError as exc:
        raise MissingExtraError(f"the chemprop encoders need the [graph] extra: pip install 'dmf-ray[graph]' ({exc})") from None
    return chemprop


def trained_on_of(columns: list[str]) -> tuple[str, ...]:
    """``tdc:<dataset>`` for each ADMET-AI task column, plus ``moleculenet:<name>`` for the
    MoleculeNet data sets those share molecules with (tox21 for the Tox21 NR-/SR- tasks)."""
    names = {f"tdc:{'Tox21' if c.startswith(TOX21_TASKS) else c}" for c in columns}
    names |= {f"moleculenet:{MOLECULENET_OVERLAP[c]}" for c in columns if c in MOLECULENET_OVERLAP}
    if any(c.startswith(TOX21_TASKS) for c in columns):
        names.add("moleculenet:tox21")
    return tuple(sorted(names))


def is_shipped_admet(path: str) -> bool:
    """Whether the checkpoint file at ``path`` is byte for byte one of the models the installed
    ``admet-ai`` ships (same size, then same sha256), wherever it lies or however it is spelled.
    False when admet-ai is not installed."""
    try:
        shipped = package_directory(ADMET_MODELS)
        size = os.path.getsize(path)
    except (MissingExtraError, OSError):
        return False
    same_size = [os.path.join(root, f) for root, _, files in os.walk(shipped) for f in files
                 if f.endswith(".pt") and os.path.getsize(os.path.join(root, f)) == size]
    return bool(same_size) and file_sha256(path) in {file_sha256(f) for f in same_size}


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in str(text).split(",") if p.strip())


@register("chemprop")
class Chemprop(PretrainedEncoder):
    """Chemprop v2 D-MPNN encoding (see the module docstring)."""

    description = "Chemprop v2 D-MPNN encoding (chemprop=PATH.pt; default: ADMET-AI's models, 600-d; needs [graph])"
    version = "1"
    dtype = "float32"
    default_batch_size = 256
    default_model = ADMET_MODELS
    extra = "graph"
    # Graph featurisation is Python on the CPU: four actors share a GPU to keep it fed; on CPU
    # one actor per core, one torch thread each.
    num_gpus = 0.25
    cores_per_actor = 1
    # One actor: torch + chemprop + Lightning imported, two members loaded, a batch of 256:
    # 918 MiB peak RSS measured in a plain process, plus a Ray worker's own share; Ray Data
    # measured up to 1,018 MiB per actor over 50,000 MOSES molecules, so 1.25 GiB leaves headroom.
    memory = 1280 << 20
    option_types: ClassVar[dict[str, Any]] = {
        **PretrainedEncoder.option_types, "members": _split, "combine": str, "trained_on": _split,
    }

    def __init__(self, model: str | None = None, members: tuple[str, ...] | list[str] | None = None,
                 combine: str = "concat", trained_on: tuple[str, ...] | list[str] | None = None, **args: Any):
        model = model or self.default_model
        if model and not str(model).startswith(PACKAGE_PREFIX) and os.path.isfile(os.path.expanduser(str(model))):
            path = os.path.realpath(os.path.expanduser(str(model)))
            model, members = os.path.dirname(path), members or (os.path.basename(path),)
        if combine not in COMBINES:
            raise ValueError(f"encoder {self.name!r}: combine {combine!r} is not one of {', '.join(COMBINES)}")
        if members is None:
            members = ADMET_MEMBERS if model == ADMET_MODELS else self._all_members(str(model))
        self.model_files = tuple(members)
        super().__init__(model, members=list(members), combine=combine,
                         **({"trained_on": list(trained_on)} if trained_on else {}), **args)
        try:
            self.checkpoints = [read_checkpoint(os.path.join(self.directory, m)) for m in members]
        except CheckpointRefused as exc:
            raise CheckpointRefused(f"encoder {self.name!r}: {exc}") from None
        dims = [c.dim for c in self.checkpoints]
        if combine == "mean" and len(set(dims)) > 1:
            raise ValueError(f"encoder {self.name!r}: combine=mean needs members of one width, got {dims}")
        self._dim = sum(dims) if combine == "concat" else dims[0]
        self.combine = combine
        # Leakage flags follow the checkpoint's content, not its spelling: ADMET-AI's shipped files
        # given by path (or copied elsewhere) carry the same training data as package:.
        columns = [c for ck in self.checkpoints if model == ADMET_MODELS or is_shipped_admet(ck.path)
                   for c in ck.output_columns]
        self.trained_on = tuple(trained_on) if trained_on else trained_on_of(columns)

    def _all_members(self, model: str) -> tuple[str, ...]:
        directory = package_directory(model, self.extra) if model.startswith(PACKAGE_PREFIX) else os.path.expanduser(model)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"encoder {self.name!r}: model {model!r} is neither a .pt file nor a directory")
        found = sorted(os.path.relpath(os.path.join(root, f), directory)
                       for root, _, files in os.walk(directory) for f in files if f.endswith(".pt"))
        if not found:
            raise FileNotFoundError(f"encoder {self.name!r}: no .pt checkpoints under {model!r}")
        return tuple(found)

    @property
    def dim(self) -> int:
        return self._dim

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("checkpoints", None)  # tensors an actor re-reads from its own node's files
        return state

    def load_model(self, directory: str, device: str) -> Any:
        chemprop = _require_chemprop()
        checkpoints = getattr(self, "checkpoints", None) or [
            read_checkpoint(os.path.join(directory, m)) for m in self.model_files]
        members = [encoder_modules(c).to(device) for c in checkpoints]
        featurizers = [self._featurizer(chemprop, c) for c in checkpoints]
        if len({(f.atom_fdim, f.bond_fdim) for f in featurizers}) > 1:
            raise CheckpointRefused(f"encoder {self.name!r}: its members were trained on different atom/bond features")
        return members, featurizers[0]

    def _featurizer(self, chemprop: Any, checkpoint: Checkpoint) -> Any:
        """The molecule featuriser whose atom/bond widths the checkpoint was trained on."""
        from chemprop.featurizers import MultiHotAtomFeaturizer, SimpleMoleculeMolGraphFeaturizer

        mp = checkpoint.hparams["message_passing"]
        for mode in ("v2", "v1", "organic"):
            featurizer = SimpleMoleculeMolGraphFeaturizer(atom_featurizer=getattr(MultiHotAtomFeaturizer, mode)())
            if (featurizer.atom_fdim, featurizer.bond_fdim) == (mp["d_v"], mp["d_e"]):
                return featurizer
        raise CheckpointRefused(f"{checkpoint.path}: no Chemprop featuriser gives {mp['d_v']} atom and "
                                f"{mp['d_e']} bond features")

    def embed(self, model: Any, molecules: list[Molecule]) -> tuple[np.ndarray, list[str | None]]:
        import torch

        members, featurizer = model
        values = np.zeros((len(molecules), self.dim), dtype=np.float32)
        reasons: list[str | None] = [None] * len(molecules)
        rows, batch = self._graphs(featurizer, molecules, reasons)
        if batch is None:
            return values, reasons
        outputs = []
        for member in members:
            batch.to(next(member.parameters()).device)
            with torch.inference_mode():
                h = member["bn"](member["agg"](member["message_passing"](batch), batch.batch))
            outputs.append(h.float().cpu().numpy())
        values[rows] = np.concatenate(outputs, axis=1) if self.combine == "concat" else np.mean(outputs, axis=0)
        return values, reasons

    def _graphs(self, featurizer: Any, molecules: list[Molecule], reasons: list[str | None]) -> tuple[list[int], Any]:
        """(rows featurised, their BatchMolGraph or None); a molecule the featuriser rejects
        gets its reason."""
        from chemprop.data import BatchMolGraph

        rows, graphs = [], []
        for i, m in enumerate(molecules):
            if reasons[i] is not None:
                continue
            try:
                graphs.append(featurizer(m.mol))
                rows.append(i)
            except Exception as exc:  # an atom the featuriser cannot describe
                reasons[i] = f"Chemprop featuriser: {type(exc).__name__}: {exc}"
        return rows, (BatchMolGraph(graphs) if graphs else None)


@register("chemprop-admet")
class ChempropADMET(Chemprop):
    """The ADMET-AI preset: ``chemprop`` with the models shipped by ``admet-ai`` (600-d)."""

    description = "Chemprop D-MPNN encodings of ADMET-AI's shipped models (2 members, 600-d; needs [graph])"

    @classmethod
    def from_option(cls, value: str) -> "ChempropADMET":
        kwargs = cls.parse_option(value)
        if kwargs.get("model", ADMET_MODELS) != ADMET_MODELS:
            raise ValueError(f"encoder {cls.name!r} always uses ADMET-AI's models; for another checkpoint use chemprop=PATH")
        return cls(**kwargs)
