"""The encoder contract a plugin relies on: typed spec, per-molecule refusal, GPU/CPU plans,
default models, package locations. Real encoders (RDKit, a torch model in files), no Ray."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dmf_ray.encoders import (
    Encoder,
    EncoderSpec,
    ModelMismatchError,
    MoleculeRefused,
    PretrainedEncoder,
    base,
    canonical_molecules,
    create_encoder,
    encoder_from_option,
    encoder_from_spec,
    register,
)
from dmf_ray.encoders.identity import MissingExtraError, package_directory, resolve_model
from dmf_ray.molecules import parse_smiles


@pytest.fixture
def registered():
    """Register test encoders under throwaway names; removed afterwards."""
    names = []

    def add(name, cls):
        names.append(name)
        return register(name)(cls)

    yield add
    for name in names:
        base._REGISTRY.pop(name, None)


def test_spec_is_typed_and_every_problem_is_named_in_one_line():
    spec = create_encoder("ecfp").encoder_spec()
    assert isinstance(spec, EncoderSpec) and spec.dim == 2048 and spec.dtype == "uint8"
    assert EncoderSpec.parse(spec.to_manifest()) == spec
    assert EncoderSpec.parse({**spec.to_manifest(), "version": 1}).version == "1"  # old manifests: int
    with pytest.raises(ValueError) as info:
        encoder_from_spec({"encoder": "ecfp", "dim": 0, "dtype": "int64"})
    message = str(info.value)
    assert "\n" not in message and "dim" in message and "dtype" in message
    assert set(EncoderSpec.model_fields) >= {"encoder", "args", "dim", "dtype", "version", "memory", "trained_on"}
    assert all(f.description for f in EncoderSpec.model_fields.values())


class Heavy(Encoder):
    """Refuses molecules with more than 3 heavy atoms, with the reason."""

    @property
    def dim(self):
        return 2

    def encode_one(self, molecule):
        n = molecule.mol.GetNumHeavyAtoms()
        if n > 3:
            raise MoleculeRefused(f"{n} heavy atoms, more than 3")
        return np.array([n, 1.0])


def test_encode_one_refuses_a_molecule_with_its_reason(registered):
    registered("test-heavy", Heavy)
    batch = create_encoder("test-heavy").encode([parse_smiles(s) for s in ("CCO", "c1ccccc1", "C")])
    assert batch.errors == [None, "test-heavy: 6 heavy atoms, more than 3", None]
    assert not batch.values[1].any() and batch.values[0].tolist() == [3, 1]


def _write_linear(directory, dim=4, seed=0):
    import torch

    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(3, dim).state_dict(), os.path.join(directory, "linear.pt"))
    return str(directory)


class Linear(PretrainedEncoder):
    """A torch model in files: atom counts through a linear layer. CPU only (num_gpus = 0)."""

    num_gpus = 0
    cores_per_actor = 1
    model_files = ("linear.pt",)
    seen: list[str] = []

    @property
    def dim(self):
        return 4

    def load_model(self, directory, device):
        import torch

        layer = torch.nn.Linear(3, 4)
        layer.load_state_dict(torch.load(os.path.join(directory, "linear.pt"), weights_only=True))
        return layer.eval()

    def embed(self, model, molecules):
        import torch

        Linear.seen.extend(m.mol.GetAtomWithIdx(0).GetSymbol() for m in molecules)
        counts = [[m.mol.GetNumAtoms(), m.mol.GetNumBonds(), len(m.smiles)] for m in molecules]
        with torch.inference_mode():
            values = model(torch.tensor(counts, dtype=torch.float32)).numpy()
        reasons = ["has sulfur" if "S" in m.smiles else None for m in molecules]
        return values, reasons


def test_plugin_class_num_gpus_zero_is_kept_and_plans_a_cpu_pool(registered, tmp_path):
    registered("test-linear", Linear)
    encoder = create_encoder("test-linear", {"model": _write_linear(tmp_path / "m")})
    assert encoder.num_gpus == 0 and encoder.spec()["num_gpus"] == 0
    plan = encoder.actor_plan(cpus=8, gpus=4, cpus_per_actor=0.5)
    assert (plan.num_gpus, plan.max_size, plan.num_cpus) == (0.0, 8, 0.5)
    # A constructor arg may still ask for a GPU; device=cpu always asks for none.
    assert create_encoder("test-linear", {"model": str(tmp_path / "m"), "num_gpus": 0.5}).num_gpus == 0.5
    # A GPU model (PretrainedEncoder's default) gets gpus // num_gpus GPU actors, or on a CPU
    # cluster cpus // cores_per_actor CPU actors.
    assert PretrainedEncoder.num_gpus == 1.0 and PretrainedEncoder.cores_per_actor == 4


def test_embed_refuses_molecules_with_reasons_and_gets_canonical_molecules(registered, tmp_path):
    registered("test-linear", Linear)
    encoder = create_encoder("test-linear", {"model": _write_linear(tmp_path / "m")})
    Linear.seen.clear()
    batch = encoder.encode([parse_smiles(s) for s in ("OCC", "CCS", "C(C)O")])
    assert batch.errors == [None, "test-linear: has sulfur", None]
    assert not batch.values[1].any()
    np.testing.assert_array_equal(batch.values[0], batch.values[2])
    # The model saw the canonical atom order (ethanol canonical is CCO: carbon first).
    assert Linear.seen == ["C", "C", "C"]


def test_canonical_molecules_fix_atom_order():
    a, b = parse_smiles("N[C@@H](C)C(=O)O"), parse_smiles("OC(=O)[C@H](C)N")
    assert a.mol_id == b.mol_id and a.mol.GetAtomWithIdx(0).GetSymbol() != b.mol.GetAtomWithIdx(0).GetSymbol()
    ca, cb = canonical_molecules([a, b])
    assert [x.GetSymbol() for x in ca.mol.GetAtoms()] == [x.GetSymbol() for x in cb.mol.GetAtoms()]
    assert [x.GetChiralTag() for x in ca.mol.GetAtoms()] == [x.GetChiralTag() for x in cb.mol.GetAtoms()]


def test_name_without_value_uses_the_default_model_or_says_what_is_missing(registered, tmp_path):
    class WithDefault(Linear):
        default_model = _write_linear(tmp_path / "default")

    registered("test-linear", Linear)
    registered("test-default", WithDefault)
    assert encoder_from_option("test-default")[1].args["model"] == os.path.realpath(tmp_path / "default")
    with pytest.raises(ValueError, match=r"needs a model location: --encoders test-linear=/path/to/model"):
        encoder_from_option("test-linear")


def test_package_location_resolves_per_node_and_pins_the_version(registered):
    pytest.importorskip("fcd")
    location, revision, directory = resolve_model("package:fcd", None, ("*.pt",))
    assert location == "package:fcd" and revision is None and os.path.isfile(os.path.join(directory, "ChemNet_v0.13_pretrained.pt"))
    with pytest.raises(MissingExtraError, match="needs the Python package 'no_such_pkg'"):
        package_directory("package:no_such_pkg")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        package_directory("package:fcd/no/such/dir")

    class Shipped(Linear):
        model_files = ("ChemNet_v0.13_pretrained.pt",)

    registered("test-shipped", Shipped)
    encoder = create_encoder("test-shipped", {"model": "package:fcd"})
    assert encoder.args["package"].startswith("fcd==")
    with pytest.raises(ModelMismatchError) as info:
        encoder_from_spec({**encoder.spec(), "args": {**encoder.args, "package": "fcd==0.1"}})
    assert "\n" not in str(info.value) and "fcd==0.1" in str(info.value)


class SmallCard(Linear):
    """Runs out of (GPU) memory on more than 2 molecules at once, as a small card would."""

    calls: list[int] = []

    def embed(self, model, molecules):
        import torch

        SmallCard.calls.append(len(molecules))
        if len(molecules) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().embed(model, molecules)


def test_out_of_memory_halves_the_batch_until_it_fits_and_remembers(registered, tmp_path):
    registered("test-small-card", SmallCard)
    encoder = create_encoder("test-small-card", {"model": _write_linear(tmp_path / "m")})
    molecules = [parse_smiles(s) for s in ("CCO", "CCN", "CCC", "CCCl", "c1ccccc1", "CC(=O)O", "OCCO", "CCCC")]
    SmallCard.calls.clear()
    batch = encoder.encode(molecules)
    assert batch.errors == [None] * 8 and batch.values.any(axis=1).all()
    assert SmallCard.calls[:3] == [8, 4, 2] and encoder._max_rows <= 2
    SmallCard.calls.clear()
    encoder.encode(molecules)  # the next batch starts at the size that fitted: no failed call
    assert max(SmallCard.calls) <= 2
