import sys
import textwrap

import numpy as np
import pytest

from dmf_ray.encoders import (
    DEFAULT_ENCODERS,
    UnknownEncoderError,
    available_encoders,
    base,
    create_encoder,
    encoder_from_option,
    encoder_from_spec,
)
from dmf_ray.molecules import parse_smiles

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[N+](C)(C)CC(=O)[O-]", "O=C(O)c1ccccc1OC(C)=O"]


@pytest.mark.parametrize("name", ["ecfp", "atompair", "torsion", "maccs", "rdkit2d"])
def test_each_builtin_encoder_round_trips_through_its_spec(name):
    encoder = create_encoder(name)
    molecules = [parse_smiles(s) for s in SMILES]
    batch = encoder.encode(molecules)
    assert batch.values.shape == (len(SMILES), encoder.dim)
    assert batch.values.dtype == np.dtype(encoder.dtype)
    assert batch.errors == [None] * len(SMILES)
    assert np.isfinite(batch.values.astype(np.float64)).all()
    # Different molecules give different vectors, and the same spec gives the same vectors.
    assert len({row.tobytes() for row in batch.values}) == len(SMILES)
    spec = encoder.spec()
    assert {"encoder", "class", "args", "dim", "dtype", "version", "num_gpus", "batch_size"} <= set(spec)
    again = encoder_from_spec(spec).encode(molecules)
    np.testing.assert_array_equal(again.values, batch.values)


def test_ecfp_counts_match_rdkit_directly():
    from rdkit.Chem import rdFingerprintGenerator

    mol = parse_smiles("CC(=O)Nc1ccc(O)cc1")
    expected = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048).GetCountFingerprintAsNumPy(mol.mol)
    np.testing.assert_array_equal(create_encoder("ecfp").encode([mol]).values[0], np.minimum(expected, 255))


def test_defaults_are_registered_and_unknown_names_are_clear():
    assert set(DEFAULT_ENCODERS) <= set(available_encoders())
    with pytest.raises(UnknownEncoderError, match="unknown encoder 'nope'; available: ecfp"):
        create_encoder("nope")
    with pytest.raises(ValueError, match="takes no value"):
        encoder_from_option("ecfp=/some/path")


def test_spec_version_mismatch_is_refused():
    spec = create_encoder("maccs").spec() | {"version": "0"}
    with pytest.raises(ValueError, match="version"):
        encoder_from_spec(spec)


def test_one_failing_molecule_does_not_fail_the_batch():
    @base.register("test-fails-on-nitrogen")
    class FailsOnNitrogen(base.Encoder):
        dtype = "float32"

        @property
        def dim(self):
            return 2

        def encode_one(self, molecule):
            if "N" in molecule.smiles:
                raise RuntimeError("no nitrogen please")
            return np.array([1.0, molecule.mol.GetNumAtoms()])

    batch = create_encoder("test-fails-on-nitrogen").encode([parse_smiles(s) for s in SMILES])
    assert batch.errors[2] == "test-fails-on-nitrogen: RuntimeError: no nitrogen please"
    assert batch.errors[0] is None and batch.values[0, 1] == 3
    assert (batch.values[2] == 0).all()


def test_only_per_molecule_inline_encoders_run_inline():
    # featurize runs inline encoders a molecule at a time through encode_one, which would
    # bypass a batched encode: such an encoder keeps its own actor pool.
    class Batched(base.Encoder):
        inline = True

        def encode(self, molecules):
            return super().encode(molecules)

    assert create_encoder("ecfp").runs_inline() and create_encoder("rdkit2d").runs_inline()
    assert not Batched().runs_inline()


def test_third_party_encoder_registers_through_entry_point(tmp_path, monkeypatch):
    # A real installed-distribution layout (dist-info with entry_points.txt) on sys.path.
    (tmp_path / "dmf_plugin_demo.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from dmf_ray.encoders import Encoder

            class HeavyAtoms(Encoder):
                dtype = "float32"
                description = "heavy atom count (plugin demo)"

                @property
                def dim(self):
                    return 1

                def encode_one(self, molecule):
                    return np.array([molecule.mol.GetNumHeavyAtoms()], dtype=np.float32)
            """
        )
    )
    dist = tmp_path / "dmf_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dmf-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dmf_ray.encoders]\nheavy-atoms = dmf_plugin_demo:HeavyAtoms\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    try:
        assert "heavy-atoms" in available_encoders()
        values = create_encoder("heavy-atoms").encode([parse_smiles("CCO")]).values
        assert values.tolist() == [[3.0]]
    finally:
        base._REGISTRY.pop("heavy-atoms", None)
        sys.modules.pop("dmf_plugin_demo", None)
