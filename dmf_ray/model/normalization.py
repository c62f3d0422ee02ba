"""The one normalisation-statistics code: per-modality mean and std over the rows where the
modality is PRESENT, from mergeable moments (so a Ray Dataset, a store or an in-memory array
give the same numbers, block by block in any order, with bounded memory).

Every producer of a model's statistics goes through here: ``dmf train`` (per Ray block, merged
on the driver), the random test models of ``dmf_ray.testing`` and the untrained baselines of
the benchmarks. What ``DynamicFusion.set_normalization`` receives is ``normalization_stats``'s
output: a feature constant over the rows gets std 1, not 0 (see ``scale_of``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Rows per float64 copy when statistics are taken from arrays in memory (~8k x d_m x 8 bytes).
_CHUNK_ROWS = 8192


@dataclass
class Moments:
    """Count, mean [d] and sum of squared deviations m2 [d] per feature (float64), mergeable
    (Chan, Golub & LeVeque 1979, the pairwise update) so statistics can be computed block by
    block in any order with bounded memory."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of the rows of x [N, d] (any real dtype; computed in float64)."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(0))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """Population std [d] (ddof 0); a constant feature gets 0 (``scale_of`` replaces it)."""
        return np.sqrt(self.m2 / max(self.count, 1))


def scale_of(moments: Moments, eps: float = 1e-6) -> np.ndarray:
    """The std to normalise by [d]: a feature constant over the rows (std < eps) gets 1, not ~0.

    A fingerprint bit never set in training has std 0; floored at FusionConfig.std_floor it would
    turn a molecule that does set it into a 1e6 input (and a 1e12 reconstruction error). With 1
    it stays (x - mean), the StandardScaler convention (scikit-learn's ``_handle_zeros_in_scale``)."""
    std = moments.std.copy()
    std[std < eps] = 1.0
    return std


def batch_moments(values: Mapping[str, np.ndarray], present: np.ndarray,
                  modalities: Sequence[str]) -> dict[str, Moments]:
    """Moments of each modality over the rows where it is present.

    values: {name: [N, d_m]}; present: bool [N, M] in the order of ``modalities``."""
    present = np.asarray(present, dtype=bool)
    return {m: Moments.of(np.asarray(values[m])[present[:, j]]) for j, m in enumerate(modalities)}


def array_moments(values: Mapping[str, np.ndarray], present: np.ndarray, modalities: Sequence[str],
                  rows: np.ndarray | None = None) -> dict[str, Moments]:
    """``batch_moments`` of ``rows`` (int indices [n]; default all), taken in chunks of 8,192 rows so
    the float64 copies stay small whatever N is."""
    present = np.asarray(present, dtype=bool)
    rows = np.arange(len(present)) if rows is None else np.asarray(rows)
    total = {m: Moments.empty(np.asarray(values[m]).shape[1]) for m in modalities}
    for start in range(0, len(rows), _CHUNK_ROWS):
        idx = rows[start: start + _CHUNK_ROWS]
        part = batch_moments({m: np.asarray(values[m])[idx] for m in modalities}, present[idx], modalities)
        total = {m: total[m].merge(part[m]) for m in modalities}
    return total


def normalization_stats(moments: Mapping[str, Moments]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{modality: (mean [d_m], scale [d_m])} float64, ready for ``DynamicFusion.set_normalization``;
    modalities with no present row are left out (the model keeps mean 0, std 1 for them)."""
    return {m: (mo.mean.copy(), scale_of(mo)) for m, mo in moments.items() if mo.count}
