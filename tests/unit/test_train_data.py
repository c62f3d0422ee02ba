"""dmf_ray.pipelines.train.data without Ray: the validation split (the statistics are tested in
test_model_normalization.py)."""

from __future__ import annotations

import numpy as np

from dmf_ray.molecules import parse_smiles
from dmf_ray.pipelines.train.data import split_unit, validation_mask


def _ids(n: int) -> list[str]:
    return [f"mol-{i:06d}" for i in range(n)]


def test_split_is_a_pure_function_of_the_id():
    ids = _ids(2000)
    mask = validation_mask(ids, 0.1)
    # Same answer in another order, in another call, and one id at a time.
    order = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(validation_mask([ids[i] for i in order], 0.1), mask[order])
    assert np.array_equal(validation_mask(ids, 0.1), mask)
    assert [split_unit(i) < 0.1 for i in ids[:50]] == list(mask[:50])


def test_split_value_is_pinned():
    # A change of the hash would silently move molecules between training and validation, and a
    # resumed or retrained model would be validated on molecules it was trained on.
    assert split_unit("abc") == 0.5495305145553908
    assert split_unit("mol-000000") == 0.34803697842740305


def test_split_takes_about_the_fraction_and_grows_monotonically():
    ids = _ids(20000)
    for fraction in (0.02, 0.05, 0.2):
        share = validation_mask(ids, fraction).mean()
        assert abs(share - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / len(ids)), (fraction, share)
    # Raising the fraction only adds molecules to validation, never moves one back to training.
    small, large = validation_mask(ids, 0.05), validation_mask(ids, 0.1)
    assert not (small & ~large).any()


def test_split_uses_real_molecule_ids():
    ids = [parse_smiles(s).mol_id for s in ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "OCCO"]]
    assert validation_mask(ids, 0.5).dtype == bool
    assert validation_mask(ids, 1e-12).sum() == 0
