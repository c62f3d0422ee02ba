"""ChemNet from the fcd package's shipped weights: the real model, compared with fcd's own code."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dmf_ray.encoders import ModelMismatchError, encoder_from_option, encoder_from_spec
from dmf_ray.encoders.chemnet import MAX_SMILES
from dmf_ray.molecules import parse_smiles

fcd = pytest.importorskip("fcd")

SMILES = [
    "CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[N+](C)(C)CC(=O)[O-]", "O=C(O)c1ccccc1OC(C)=O",
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "C", "ClCCl", "BrC[C@H](N)C(=O)O",
    "[Si](C)(C)(C)C", "CC[S@](=O)c1ccccc1",
]


@pytest.fixture(scope="module")
def chemnet():
    return encoder_from_option("chemnet")[1]


def test_vectors_equal_the_fcd_packages_own(chemnet):
    molecules = [parse_smiles(s) for s in SMILES]
    got = chemnet.encode(molecules)
    assert got.errors == [None] * len(SMILES)
    assert got.values.shape == (len(SMILES), 512) and got.values.dtype == np.float32
    # fcd's own path: its loader, its dataset (pad 350), its batching, on the same canonical SMILES.
    want = fcd.get_predictions(fcd.load_ref_model(), [m.smiles for m in molecules], batch_size=128)
    np.testing.assert_array_equal(got.values, want)


def test_smiles_longer_than_349_characters_are_absent_with_the_reason(chemnet):
    fits, too_long = "C" * MAX_SMILES, "C" * (MAX_SMILES + 1)
    assert parse_smiles(too_long).smiles == too_long  # canonical = as written
    batch = chemnet.encode([parse_smiles(s) for s in ("CCO", fits, too_long)])
    assert batch.errors[:2] == [None, None]
    assert batch.errors[2] == "chemnet: canonical SMILES has 350 characters; ChemNet reads at most 349"
    assert not batch.values[2].any() and batch.values[1].any()
    # The one that fits is fcd's vector too (fcd pads to 350 = 349 + its end token); batches of
    # other sizes round differently in the last bits (a 1-row vs a 3-row matmul).
    want = fcd.get_predictions(fcd.load_ref_model(), [fits])
    np.testing.assert_allclose(batch.values[1], want[0], rtol=0, atol=1e-6)


def test_spec_records_the_package_location_version_and_hash(chemnet):
    spec = chemnet.spec()
    assert spec["args"]["model"] == "package:fcd"
    assert spec["args"]["package"] == f"fcd=={fcd.__version__}"
    assert spec["args"]["sha256"].startswith("sha256:")
    assert (spec["dim"], spec["dtype"], spec["memory"]) == (512, "float32", chemnet.memory)
    assert spec["trained_on"]
    rebuilt = encoder_from_spec(spec)
    assert rebuilt.spec() == spec
    # The encoder pickles without its model (Ray ships it to actors) and reloads there.
    clone = pickle.loads(pickle.dumps(chemnet))
    assert clone._loaded is None
    np.testing.assert_array_equal(clone.encode([parse_smiles("CCO")]).values,
                                  chemnet.encode([parse_smiles("CCO")]).values)


def test_another_fcd_version_or_other_weights_are_refused_with_one_line(chemnet):
    spec = chemnet.spec()
    other = {**spec, "args": {**spec["args"], "package": "fcd==0.9"}}
    with pytest.raises(ModelMismatchError) as info:
        encoder_from_spec(other)
    assert "\n" not in str(info.value) and "built with fcd==0.9" in str(info.value)
    other = {**spec, "args": {**spec["args"], "sha256": "sha256:" + "0" * 64}}
    with pytest.raises(ModelMismatchError, match="a different model cannot be stored under the same name"):
        encoder_from_spec(other)


def test_float16_storage_and_cpu_only_options():
    _, half = encoder_from_option("chemnet=;dtype=float16;device=cpu")
    assert half.dtype == "float16" and half.num_gpus == 0
    assert half.actor_plan(cpus=8, gpus=2, cpus_per_actor=0.5).num_gpus == 0
    batch = half.encode([parse_smiles("CCO")])
    assert batch.values.dtype == np.float16 and batch.errors == [None]


def test_actor_plan_gpu_and_cpu(chemnet):
    on_gpus = chemnet.actor_plan(cpus=16, gpus=2, cpus_per_actor=0.5)
    assert (on_gpus.max_size, on_gpus.num_gpus, on_gpus.memory) == (4, 0.5, chemnet.memory)
    on_cpus = chemnet.actor_plan(cpus=16, gpus=0, cpus_per_actor=0.5)
    assert (on_cpus.max_size, on_cpus.num_gpus, on_cpus.num_cpus) == (16, 0.0, 0.5)
