"""Scaffold and random splits (real RDKit, inline molecules, optional shared MoleculeNet data)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmf_ray.pipelines.evaluate.splits import (
    random_split,
    scaffold_keys,
    scaffold_overlap,
    scaffold_split,
)

DATA = Path(__file__).parents[2] / ".." / "shared" / "data" / "moleculenet"

# 4 benzenes, 3 pyridines, 2 cyclohexanes, 1 naphthalene, 2 acyclic, 1 invalid, 1 indole
SMILES = [
    "c1ccccc1C", "c1ccccc1O", "c1ccccc1N", "c1ccccc1CC",
    "c1ccncc1C", "c1ccncc1O", "c1ccncc1CC",
    "C1CCCCC1O", "C1CCCCC1N",
    "c1ccc2ccccc2c1",
    "CCO", "CCCN",
    "C1CC(",
    "c1ccc2[nH]ccc2c1",
]


def _scaffolds(smiles, idx):
    keys = scaffold_keys([smiles[i] for i in idx])
    return {k for k in keys if k is not None}


def test_scaffold_keys_group_and_mark_invalid():
    keys = scaffold_keys(SMILES)
    assert keys[0] == keys[1] == keys[2] == keys[3] == "c1ccccc1"
    assert keys[4] == keys[5] == keys[6] != keys[0]
    assert keys[10] == keys[11] == ""  # acyclic molecules share the empty scaffold
    assert keys[12] is None  # invalid SMILES
    generic = scaffold_keys(SMILES, generic=True)
    assert generic[0] == generic[4] == generic[7]  # benzene, pyridine, cyclohexane -> C1CCCCC1


def test_scaffold_split_tiny_is_group_disjoint_and_deterministic():
    tr, va, te = scaffold_split(SMILES, fractions=(0.6, 0.2, 0.2))
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(SMILES)))
    assert not _scaffolds(SMILES, tr) & _scaffolds(SMILES, te)
    assert not _scaffolds(SMILES, tr) & _scaffolds(SMILES, va)
    assert not _scaffolds(SMILES, va) & _scaffolds(SMILES, te)
    # Largest groups go to train first: benzenes (4) and pyridines (3) fill 7 of 8.4 slots.
    assert {0, 1, 2, 3, 4, 5, 6} <= set(tr.tolist())
    assert 12 in np.concatenate([tr, va, te])  # the invalid row is kept, not dropped
    again = scaffold_split(SMILES, fractions=(0.6, 0.2, 0.2), seed=123)
    for a, b in zip((tr, va, te), again):
        np.testing.assert_array_equal(a, b)  # standard split ignores the seed
    assert scaffold_overlap([SMILES[i] for i in tr], [SMILES[i] for i in te]) == 0


def test_balanced_scaffold_split_is_seeded_and_disjoint():
    smiles = SMILES * 1  # 14 rows
    splits = [scaffold_split(smiles, (0.5, 0.25, 0.25), seed=s, balanced=True) for s in range(6)]
    for tr, va, te in splits:
        assert len(tr) + len(va) + len(te) == len(smiles)
        assert not _scaffolds(smiles, tr) & _scaffolds(smiles, te)
    assert len({tuple(te.tolist()) for _, _, te in splits}) > 1  # seeds change the split
    a, b = scaffold_split(smiles, (0.5, 0.25, 0.25), seed=3, balanced=True), splits[3]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_scaffold_overlap_counts_test_molecules():
    train = ["c1ccccc1C", "C1CCCCC1O", "CCO"]
    test = ["c1ccccc1N", "c1ccccc1O", "c1ccncc1", "CCCC", "not a smiles"]
    assert scaffold_overlap(train, test) == 3  # two benzenes + the acyclic one


def test_random_split_sizes_disjoint_seeded():
    tr, va, te = random_split(100, (0.8, 0.1, 0.1), seed=1)
    assert (len(tr), len(va), len(te)) == (80, 10, 10)
    assert len(set(tr) | set(va) | set(te)) == 100
    np.testing.assert_array_equal(te, random_split(list("x" * 100), seed=1)[2])
    assert not np.array_equal(te, random_split(100, seed=2)[2])


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        scaffold_split(SMILES, fractions=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="train, valid, test"):
        random_split(10, fractions=(0.5, 0.5))


@pytest.mark.skipif(not (DATA / "bbbp").is_dir(), reason="shared MoleculeNet data not present")
def test_scaffold_split_on_bbbp_shares_no_scaffold():
    smiles = pd.concat(
        [pd.read_csv(DATA / "bbbp" / f"{s}.csv")["smiles"] for s in ("train", "valid", "test")]
    ).tolist()
    tr, va, te = scaffold_split(smiles)
    assert len(tr) + len(va) + len(te) == len(smiles)
    assert abs(len(tr) / len(smiles) - 0.8) < 0.02
    assert not _scaffolds(smiles, tr) & _scaffolds(smiles, te)
    assert not _scaffolds(smiles, tr) & _scaffolds(smiles, va)
    assert scaffold_overlap([smiles[i] for i in tr], [smiles[i] for i in te]) == 0
    # The provided split is not scaffold-disjoint (see shared/data/SOURCES.md).
    provided_train = pd.read_csv(DATA / "bbbp" / "train.csv")["smiles"].tolist()
    provided_test = pd.read_csv(DATA / "bbbp" / "test.csv")["smiles"].tolist()
    assert scaffold_overlap(provided_train, provided_test) == 114
