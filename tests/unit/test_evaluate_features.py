"""Featurisation of task molecules for evaluation (no Ray): kept rows, pool = in-process, torch encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmf_ray.encoders import create_encoder
from dmf_ray.pipelines.evaluate.features import featurize_smiles
from progress_check import ProgressRecorder

SPECS = {m: create_encoder(m).spec() for m in ("ecfp", "maccs", "rdkit2d")}
SMILES = ["CCO", "OCC", "c1ccccc1O", "C1CC", "", "CC(=O)Nc1ccc(O)cc1", "CCO", "[Na+].[Cl-]", "not a smiles"]


def test_invalid_smiles_are_kept_counted_and_featureless():
    f = featurize_smiles(SMILES, SPECS, workers=1, log=lambda m: None)
    rows = f.rows(SMILES)
    assert len(rows) == len(SMILES)  # every input row maps to a feature row: nothing dropped
    assert rows[0] == rows[6]  # the same string is encoded once
    assert f.batch.mol_ids[rows[0]] == f.batch.mol_ids[rows[1]]  # CCO and OCC: one molecule, same vectors
    np.testing.assert_array_equal(f.batch.values["ecfp"][rows[0]], f.batch.values["ecfp"][rows[1]])
    bad = [i for i, s in enumerate(SMILES) if s in ("C1CC", "", "not a smiles")]
    for i in bad:
        assert f.batch.mol_ids[rows[i]] is None and f.parse_errors[rows[i]]
        assert not f.batch.present[rows[i]].any()
        assert not f.batch.values["ecfp"][rows[i]].any()
    assert "unclosed ring" in f.parse_errors[rows[3]]
    good = [i for i in range(len(SMILES)) if i not in bad]
    assert f.batch.present[rows[good]].all()
    assert f.encoder_errors == {"ecfp": 0, "maccs": 0, "rdkit2d": 0}


def test_process_pool_gives_the_same_features_as_in_process():
    smiles = SMILES * 3 + ["CCN(CC)CC", "O=C(O)c1ccccc1OC(C)=O", "c1ccc2ccccc2c1"]
    one = featurize_smiles(smiles, SPECS, workers=1, log=lambda m: None)
    progress = ProgressRecorder()  # distinct SMILES encoded, reported from this process
    two = featurize_smiles(smiles, SPECS, workers=2, chunk_size=3, log=lambda m: None, progress=progress)
    assert two.workers == 2
    progress.check(len(set(smiles)))
    assert len(progress.calls) == -(-len(set(smiles)) // 3)  # one call per chunk
    assert list(one.batch.mol_ids) == list(two.batch.mol_ids) and one.index == two.index
    np.testing.assert_array_equal(one.batch.present, two.batch.present)
    for m in SPECS:
        np.testing.assert_array_equal(one.batch.values[m], two.batch.values[m])


@pytest.mark.timeout(300)
def test_a_torch_encoder_with_thousands_of_molecules_finishes_after_the_parent_used_torch():
    # Issue 13: with a torch encoder the featurisation pool, forked after the parent had run
    # torch ops on its OpenMP threads, hung forever from ~3,000 molecules. The parent here
    # runs a multithreaded op first, exactly as evaluate() does by loading the fusion model.
    import torch

    import plugin_encoders  # noqa: F401 - registers test-torch
    import rdkit

    sample = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"  # ships with RDKit
    smiles = [line.split()[0] for line in sample.read_text().splitlines() if line.strip()][:3200]
    specs = {"ecfp": SPECS["ecfp"], "torch": create_encoder("test-torch").spec()}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.tanh(torch.randn(600, 600) @ torch.randn(600, 600))  # wakes the parent's OpenMP pool
        f = featurize_smiles(smiles, specs, workers=2, log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    assert f.workers == 2  # the inline fingerprint still used the pool
    assert f.batch.present[:, 1].sum() == sum(i is not None for i in f.batch.mol_ids) > 3000
    one = featurize_smiles(smiles[:50], specs, workers=1, log=lambda m: None)
    rows = f.rows(smiles[:50])
    np.testing.assert_allclose(f.batch.values["torch"][rows], one.batch.values["torch"], rtol=1e-6)
    np.testing.assert_array_equal(f.batch.values["ecfp"][rows], one.batch.values["ecfp"])
