"""What a run evaluates: Table 1 rows (concatenations) and Figure 2's removal patterns and masks."""

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.protocol import concat_rows, removal_mask, removal_patterns

MODS = ["ecfp", "maccs", "desc"]


def test_concat_rows_every_combination_of_two_or_more():
    assert concat_rows(MODS) == [
        ("ecfp", "maccs"), ("ecfp", "desc"), ("maccs", "desc"), ("ecfp", "maccs", "desc")
    ]
    assert concat_rows(["a", "b"]) == [("a", "b")]
    assert len(concat_rows(list("abcd"))) == 2**4 - 4 - 1
    with pytest.raises(ValueError, match="duplicate"):
        concat_rows(["a", "a"])
    with pytest.raises(ValueError, match=r"'\+'"):
        concat_rows(["a+b", "c"])


@pytest.mark.parametrize("m, expected", [(2, 3), (3, 7), (4, 11), (5, 16)])
def test_removal_pattern_count(m, expected):
    patterns = removal_patterns([f"m{i}" for i in range(m)])
    assert len(patterns) == expected  # M singles + C(M,2) pairs when M>2 + random25
    assert patterns[-1].name == "random25" and patterns[-1].random_fraction == 0.25
    assert all(len(p.removed) < m for p in patterns)  # at least one modality always stays
    assert len({p.name for p in patterns}) == expected


def test_removal_pattern_names_and_mask():
    names = [p.name for p in removal_patterns(MODS)]
    assert names == ["-ecfp", "-maccs", "-desc", "-ecfp+maccs", "-ecfp+desc", "-maccs+desc", "random25"]
    pats = {p.name: p for p in removal_patterns(MODS)}
    keep = removal_mask(pats["-ecfp+desc"], MODS, n=5)
    assert keep.tolist() == [[False, True, False]] * 5
    present = np.ones((400, 3), dtype=bool)
    present[:50, 1] = False  # an encoder failed on some molecules
    keep = removal_mask(pats["random25"], MODS, n=400, seed=0, present=present)
    assert keep.any(axis=1).all()  # never all of a molecule's
    assert not (keep & ~present).any()  # never resurrects a missing entry
    assert (present.sum() - keep.sum()) == round(0.25 * present.sum())
    assert not np.array_equal(keep, removal_mask(pats["random25"], MODS, n=400, seed=1, present=present))
    with pytest.raises(ValueError, match="at least 2"):
        removal_patterns(["ecfp"])
