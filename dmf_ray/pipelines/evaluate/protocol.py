"""What a run evaluates: the rows of Table 1 and the modality-removal patterns of Figure 2.

Row names: a modality name (``ecfp``), a concatenation of modalities joined by ``+`` in the
order given by :func:`concat_rows` (``ecfp+maccs``), or ``fusion``.

Removal pattern names (:func:`removal_patterns`): ``-ecfp`` (that modality withheld from
every molecule), ``-ecfp+maccs`` (both withheld) and ``random25`` (25% of the present
modality entries withheld at random, never all of one molecule's).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FUSION = "fusion"
RANDOM25 = "random25"


def concat_rows(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every combination of 2..M modalities (input order kept), e.g. for a, b, c:
    ``[(a, b), (a, c), (b, c), (a, b, c)]``. Name a row with ``"+".join(combo)``."""
    mods = _check_modalities(modalities, minimum=1)
    return [c for k in range(2, len(mods) + 1) for c in itertools.combinations(mods, k)]


@dataclass(frozen=True)
class RemovalPattern:
    """Which modalities a robustness run withholds at inference.

    ``removed`` are withheld from every molecule; ``random_fraction`` > 0 instead withholds
    that fraction of the present (molecule, modality) entries at random, never all of a
    molecule's.
    """

    name: str
    removed: tuple[str, ...] = ()
    random_fraction: float = 0.0


def removal_patterns(modalities: Sequence[str]) -> list[RemovalPattern]:
    """Each single modality, each pair when M > 2 (so at least one stays), and ``random25``.

    M modalities give M + M(M-1)/2 + 1 patterns for M > 2, and 3 for M = 2.
    """
    mods = _check_modalities(modalities, minimum=2)
    patterns = [RemovalPattern(f"-{m}", (m,)) for m in mods]
    if len(mods) > 2:
        patterns += [RemovalPattern("-" + "+".join(p), p) for p in itertools.combinations(mods, 2)]
    patterns.append(RemovalPattern(RANDOM25, (), 0.25))
    return patterns


def removal_mask(
    pattern: RemovalPattern,
    modalities: Sequence[str],
    n: int,
    seed: int = 0,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean ``[n, M]`` mask of the modality entries kept under ``pattern``.

    ``present`` (default: all True) marks entries that exist before removal (e.g. False
    where an encoder failed); removal only ever turns True into False. For a random pattern,
    ``round(fraction * present entries)`` entries are withheld, drawn uniformly among present
    entries other than one protected present entry per molecule, so no molecule that had a
    modality loses all of them. Fixed patterns may leave a molecule with nothing if it only
    had the withheld modalities; the caller decides how to count those.
    """
    mods = _check_modalities(modalities, minimum=2)
    keep = np.ones((n, len(mods)), dtype=bool) if present is None else np.array(present, dtype=bool, copy=True)
    if keep.shape != (n, len(mods)):
        raise ValueError(f"present must have shape {(n, len(mods))}, got {keep.shape}")
    unknown = [m for m in pattern.removed if m not in mods]
    if unknown:
        raise ValueError(f"pattern {pattern.name!r} removes unknown modalities {unknown}; known: {mods}")
    for m in pattern.removed:
        keep[:, mods.index(m)] = False
    if pattern.random_fraction > 0:
        rng = np.random.default_rng(seed)
        candidates = keep.copy()
        for i in np.flatnonzero(keep.any(axis=1)):
            candidates[i, rng.choice(np.flatnonzero(keep[i]))] = False
        flat = np.flatnonzero(candidates.ravel())
        k = min(int(round(pattern.random_fraction * keep.sum())), flat.size)
        drop = rng.choice(flat, size=k, replace=False)
        keep.ravel()[drop] = False
    return keep


def _check_modalities(modalities: Sequence[str], minimum: int) -> list[str]:
    mods = list(modalities)
    if len(mods) < minimum:
        raise ValueError(f"need at least {minimum} modalities, got {mods}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"duplicate modality names in {mods}")
    bad = [m for m in mods if not m or "+" in m or m == FUSION]
    if bad:
        raise ValueError(f"modality names must be non-empty, without '+', and not {FUSION!r}: {bad}")
    return mods
