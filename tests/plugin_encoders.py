"""Encoders used by the integration tests: real Encoder subclasses with controlled failures.

Ray workers import this module through the ``class`` path in the encoder spec; conftest puts
the tests folder on the workers' PYTHONPATH.
"""

from __future__ import annotations

import os

import numpy as np

from dmf_ray.encoders import Encoder, register


@register("test-no-nitrogen")
class NoNitrogen(Encoder):
    """Fails on every molecule containing nitrogen: a per-molecule encoder failure."""

    dtype = "float32"
    description = "test encoder: atom counts, fails on nitrogen"

    @property
    def dim(self) -> int:
        return 3

    def encode_one(self, molecule):
        if any(a.GetSymbol() == "N" for a in molecule.mol.GetAtoms()):
            raise ValueError("refuses nitrogen")
        m = molecule.mol
        return np.array([m.GetNumAtoms(), m.GetNumBonds(), m.GetRingInfo().NumRings()], dtype=np.float32)


@register("test-no-nitrogen-inline")
class NoNitrogenInline(NoNitrogen):
    """The same failures from an inline encoder: run in the parse actors, a molecule at a time."""

    inline = True


@register("test-crash")
class CrashWhenArmed(Encoder):
    """Crashes the whole batch (and so the run) on a chlorine-containing molecule while the
    file named by ``marker`` exists: a job dying half-way."""

    dtype = "uint8"
    default_batch_size = 16

    def __init__(self, marker: str = ""):
        super().__init__(marker=marker)
        self.marker = marker

    @classmethod
    def from_option(cls, value):
        return cls(marker=value)

    @property
    def dim(self) -> int:
        return 4

    def encode(self, molecules):
        if self.marker and os.path.exists(self.marker) and any("Cl" in m.smiles for m in molecules):
            raise RuntimeError("simulated crash")
        return super().encode(molecules)

    def encode_one(self, molecule):
        return np.array([min(255, molecule.mol.GetNumAtoms()), 1, 2, 3], dtype=np.uint8)


@register("test-torch")
class TorchProjection(Encoder):
    """A small torch model: atom-type counts through a fixed random two-layer network (float32).

    Not inline, batched, and big enough per batch ([n, 256] activations) that torch runs its
    ops on the OpenMP thread pool: the kind of encoder that hung `dmf evaluate` when a pool was
    forked after the parent had used torch (issue 13).
    """

    dtype = "float32"
    default_batch_size = 512
    _ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P")

    @property
    def dim(self) -> int:
        return 16

    def encode(self, molecules):
        import torch

        from dmf_ray.encoders import EncodedBatch

        counts = torch.tensor([[sum(a.GetSymbol() == e for a in m.mol.GetAtoms()) for e in self._ELEMENTS]
                               for m in molecules], dtype=torch.float32).reshape(len(molecules), len(self._ELEMENTS))
        gen = torch.Generator().manual_seed(0)
        w1 = torch.randn(len(self._ELEMENTS), 256, generator=gen)
        w2 = torch.randn(256, self.dim, generator=gen) / 16
        with torch.no_grad():
            values = torch.tanh(torch.tanh(counts @ w1) @ w2).numpy()
        return EncodedBatch(values, [None] * len(molecules))


@register("test-slow-inline")
class SlowInline(NoNitrogen):
    """20 ms a molecule, inline, never failing: keeps parse actors busy long enough to kill a
    featurize driver while they still work."""

    inline = True

    def encode_one(self, molecule):
        import time

        time.sleep(0.02)
        return np.zeros(3, dtype=np.float32)
