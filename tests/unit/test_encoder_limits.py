"""Every built-in RDKit encoder declares a heavy-atom limit and refuses larger molecules with a
reason, so one molecule's cost is bounded (issue 15, part 2)."""

import numpy as np
import pytest

from dmf_ray.encoders import create_encoder
from dmf_ray.molecules import parse_smiles

BUILT_INS = ["ecfp", "maccs", "atompair", "torsion", "rdkit2d"]


@pytest.mark.parametrize("name", BUILT_INS)
def test_an_oversized_molecule_is_refused_with_the_limit_in_the_reason(name):
    encoder = create_encoder(name)
    limit = encoder.max_heavy_atoms
    assert isinstance(limit, int) and limit > 0
    big = parse_smiles("C" * (limit + 1))
    small = parse_smiles("CCCCOc1ccccc1")
    batch = encoder.encode([small, big])
    assert batch.errors == [None, f"{name}: {limit + 1:,} heavy atoms exceeds the encoder's limit of {limit:,}"]
    assert not batch.values[1].any() and batch.values[0].any()
    row = np.ones(encoder.dim, dtype=encoder.dtype)
    row[...] = 0
    assert encoder.encode_into(big, row) == batch.errors[1]
