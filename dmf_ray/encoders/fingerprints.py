"""RDKit fingerprints: fast, offline, deterministic graph views of a molecule."""

from __future__ import annotations

import numpy as np
from rdkit.Chem import MACCSkeys, rdFingerprintGenerator

from dmf_ray.encoders.base import Encoder, register
from dmf_ray.molecules import Molecule


class _CountFingerprint(Encoder):
    # Counts clipped to 255 and stored as uint8: a count fingerprint loses nothing useful
    # above that, and it keeps the store near 70 bytes per molecule after compression.
    dtype = "uint8"
    value_kind = "count"  # reconstructed with a Poisson likelihood (dmf_ray.model.likelihoods)
    default_batch_size = 2048
    inline = True
    max_heavy_atoms = 5_000  # ECFP: 0.09-0.5 s at 5,000 heavy atoms (README, cost curve)

    def __init__(self, n_bits: int = 2048, **args):
        super().__init__(n_bits=int(n_bits), **args)
        self.n_bits = int(n_bits)
        self._generator = None

    @property
    def dim(self) -> int:
        return self.n_bits

    def make_generator(self):
        raise NotImplementedError

    def encode_one(self, molecule: Molecule) -> np.ndarray:
        if self._generator is None:  # generators do not pickle; build them in the worker
            self._generator = self.make_generator()
        counts = self._generator.GetCountFingerprintAsNumPy(molecule.mol)
        return np.minimum(counts, 255)


@register("ecfp")
class ECFP(_CountFingerprint):
    description = "Morgan (ECFP4) counts, radius 2, 2048 bits"

    def __init__(self, radius: int = 2, n_bits: int = 2048):
        super().__init__(n_bits=n_bits, radius=int(radius))
        self.radius = int(radius)

    def make_generator(self):
        return rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.n_bits)


@register("atompair")
class AtomPair(_CountFingerprint):
    description = "atom-pair counts (topological distances between atom pairs), 2048 bits"
    # Every atom pair with its topological distance: ~n^2 pairs on an n^2 distance matrix,
    # 0.2-1.0 s at 500 heavy atoms, 2-7 s at 1,000.
    max_heavy_atoms = 500

    def make_generator(self):
        return rdFingerprintGenerator.GetAtomPairGenerator(fpSize=self.n_bits)


@register("torsion")
class TopologicalTorsion(_CountFingerprint):
    description = "topological-torsion counts (4-atom paths), 2048 bits"
    max_heavy_atoms = 2_000  # 0.2-1.3 s at 2,000 heavy atoms, up to 29 s at 5,000 (branched)

    def make_generator(self):
        return rdFingerprintGenerator.GetTopologicalTorsionGenerator(fpSize=self.n_bits)


@register("maccs")
class MACCS(Encoder):
    description = "166 MACCS structural keys (RDKit's 167-bit vector, bit 0 unused)"
    dtype = "uint8"
    value_kind = "binary"  # reconstructed with a Bernoulli likelihood (dmf_ray.model.likelihoods)
    default_batch_size = 1024
    inline = True
    max_heavy_atoms = 5_000  # 0.06-1.3 s at 5,000 heavy atoms

    @property
    def dim(self) -> int:
        return 167

    def encode_one(self, molecule: Molecule) -> np.ndarray:
        bits = MACCSkeys.GenMACCSKeys(molecule.mol)
        out = np.zeros(167, dtype=np.uint8)
        out[list(bits.GetOnBits())] = 1
        return out
