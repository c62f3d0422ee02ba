"""The one batch type of dmf_ray: N molecules, M modalities, and which vectors are present.

A store read, an encoder run, a Serve request, a Ray Train batch and an evaluation task all hold
the same three things: molecule ids ``[N]``, one raw vector array per modality ``[N, d_m]`` and
the presence mask ``[N, M]`` (partially paired data: not every molecule has every modality).
``ModalityBatch`` is that triple, with the operations every workflow needs (rows, modalities,
withholding, concatenation, Arrow columns) written once.

Absent entries hold zeros in ``values``; consumers must read ``present``, never the zeros (the
fusion model masks absent modalities out of its attention, see ``dmf_ray.model``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Encoded(Protocol):
    """What an encoder returns for n molecules (``dmf_ray.encoders.EncodedBatch``)."""

    values: np.ndarray  # [n, d] of the encoder's dtype
    errors: Sequence[str | None]  # one per molecule: None, or why it has no vector


@dataclass
class ModalityBatch:
    """N molecules' vectors over M modalities, with a presence mask.

    Attributes:
        mol_ids: ``[N]`` object array of molecule ids (None for a row with no molecule, e.g. a
            SMILES that did not parse in an evaluation task).
        names: the M modality names; the column order of ``present``.
        values: ``{name: [N, d_m]}`` raw vectors in the encoder's or store's dtype (uint8
            fingerprint counts, float32 descriptors, float16/float32 model embeddings); zero
            rows where absent.
        present: ``[N, M]`` bool; ``present[i, j]`` is True when molecule i has modality j.
        errors: optional per-row lists of encoder failure reasons (why a modality is absent).
        smiles: optional ``[N]`` object array of canonical SMILES.

    Raises:
        ValueError: on construction, when a shape disagrees (naming the modality and sizes).
    """

    mol_ids: np.ndarray
    names: list[str]
    values: dict[str, np.ndarray]
    present: np.ndarray
    errors: list[list[str]] | None = None
    smiles: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.mol_ids = np.asarray(self.mol_ids, dtype=object)
        self.names = list(self.names)
        self.present = np.asarray(self.present, dtype=bool)
        n, m = len(self.mol_ids), len(self.names)
        if self.present.shape != (n, m):
            raise ValueError(f"present has shape {self.present.shape}, expected ({n}, {m}) for {n} molecules x {self.names}")
        for name in self.names:
            v = self.values.get(name)
            if v is None or v.ndim != 2 or len(v) != n:
                shape = None if v is None else v.shape
                raise ValueError(f"modality {name!r}: values of shape {shape}, expected ({n}, d)")

    # ---- shape --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.mol_ids)

    @property
    def dims(self) -> list[int]:
        """``[d_m]`` in ``names`` order."""
        return [int(self.values[m].shape[1]) for m in self.names]

    def float32(self) -> dict[str, np.ndarray]:
        """``{name: [N, d_m] float32}`` (copies only where the dtype differs)."""
        return {m: np.asarray(self.values[m], dtype=np.float32) for m in self.names}

    # ---- selections ---------------------------------------------------------------------
    def subset(self, rows: np.ndarray | slice | Sequence[int]) -> ModalityBatch:
        """The given rows (an index array, a bool mask or a slice), every modality."""
        index = rows if isinstance(rows, slice) else np.asarray(rows)
        return ModalityBatch(
            self.mol_ids[index],
            self.names,
            {m: v[index] for m, v in self.values.items() if m in self.names},
            self.present[index],
            None if self.errors is None else [self.errors[i] for i in np.arange(len(self))[index]],
            None if self.smiles is None else self.smiles[index],
        )

    def select(self, names: Sequence[str]) -> ModalityBatch:
        """The named modalities, in that order.

        Raises:
            KeyError: naming a modality the batch does not have.
        """
        unknown = [m for m in names if m not in self.names]
        if unknown:
            raise KeyError(f"unknown modality {unknown[0]!r}; this batch has {', '.join(self.names)}")
        columns = [self.names.index(m) for m in names]
        return ModalityBatch(self.mol_ids, list(names), {m: self.values[m] for m in names},
                             self.present[:, columns], self.errors, self.smiles)

    def withhold(self, names: Iterable[str], rows: np.ndarray | None = None) -> ModalityBatch:
        """The same batch with ``names`` marked absent (in ``rows`` only, when given): how a
        modality is withheld at inference. Values are left as they are (absent is the mask)."""
        present = self.present.copy()
        for name in names:
            j = self.names.index(name)
            if rows is None:
                present[:, j] = False
            else:
                present[rows, j] = False
        return ModalityBatch(self.mol_ids, self.names, self.values, present, self.errors, self.smiles)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, mol_ids: Sequence[Any], names: Sequence[str], dims: Sequence[int],
              dtypes: Sequence[str] | None = None) -> ModalityBatch:
        """Every modality absent (zeros) for ``mol_ids``."""
        n = len(mol_ids)
        dtypes = dtypes or ["float32"] * len(names)
        values = {m: np.zeros((n, int(d)), dtype=t) for m, d, t in zip(names, dims, dtypes)}
        return cls(np.asarray(list(mol_ids), dtype=object), list(names), values, np.zeros((n, len(names)), bool),
                   [[] for _ in range(n)])

    @classmethod
    def from_encoded(cls, mol_ids: Sequence[Any], names: Sequence[str], dims: Sequence[int],
                     encoded: Mapping[str, Encoded]) -> ModalityBatch:
        """Encoder outputs ``{name: EncodedBatch}`` for the same n molecules as one batch. A
        modality missing from ``encoded`` is absent for every molecule; a molecule whose
        encoder reported an error has that modality absent and the reason in ``errors``."""
        batch = cls.empty(mol_ids, names, dims)
        for j, name in enumerate(batch.names):
            out = encoded.get(name)
            if out is None:
                continue
            if out.values.shape != batch.values[name].shape:
                raise ValueError(f"modality {name!r}: the encoder gave {out.values.shape}, expected {batch.values[name].shape}")
            batch.values[name] = out.values
            ok = np.fromiter((e is None for e in out.errors), dtype=bool, count=len(out.errors))
            batch.present[:, j] = ok
            for i in np.flatnonzero(~ok):
                batch.errors[i].append(out.errors[i])
        return batch

    @classmethod
    def concat(cls, batches: Sequence[ModalityBatch]) -> ModalityBatch:
        """Rows of several batches over the same modalities, in order.

        Raises:
            ValueError: when the batches' modalities differ, or none is given.
        """
        if not batches:
            raise ValueError("nothing to concatenate")
        names = batches[0].names
        if any(b.names != names for b in batches):
            raise ValueError(f"batches over different modalities: {sorted({tuple(b.names) for b in batches})}")
        errors = None if any(b.errors is None for b in batches) else [e for b in batches for e in b.errors]
        smiles = None if any(b.smiles is None for b in batches) else np.concatenate([b.smiles for b in batches])
        return cls(np.concatenate([b.mol_ids for b in batches]), names,
                   {m: np.concatenate([b.values[m] for b in batches]) for m in names},
                   np.concatenate([b.present for b in batches]), errors, smiles)

    # ---- Arrow ---------------------------------------------------------------------------
    @classmethod
    def from_arrow(cls, table: pa.Table, dims: Mapping[str, int], dtype: str = "float32",
                   id_column: str = "mol_id") -> ModalityBatch:
        """A table with one list column per modality (null where absent), as a store join
        gives it. ``dims`` names the modality columns and their sizes, in order."""
        n = table.num_rows
        values, present = {}, np.zeros((n, len(dims)), dtype=bool)
        for j, (name, dim) in enumerate(dims.items()):
            column = table.column(name)
            valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
            matrix = np.zeros((n, int(dim)), dtype=dtype)
            if valid.any():
                matrix[valid] = embedding_matrix(column.filter(pa.array(valid)), int(dim), dtype)
            values[name] = matrix
            present[:, j] = valid
        return cls(table.column(id_column).to_numpy(zero_copy_only=False), list(dims), values, present)

    def to_columns(self) -> dict[str, np.ndarray]:
        """``{"mol_id": [N], name: [N, d_m] ..., "present": [N, M]}``: a Ray Data numpy batch."""
        return {"mol_id": self.mol_ids, **{m: self.values[m] for m in self.names}, "present": self.present}


def embedding_matrix(column: pa.Array | pa.ChunkedArray, dim: int, dtype: str | None = None) -> np.ndarray:
    """Non-null ``fixed_size_list``/``list`` values of one modality -> ``[n, dim]`` numpy.

    Callers filter nulls first. ``dtype``: cast to it (default: the list's value type)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    out = flat.reshape(len(column), dim)
    return out.astype(dtype) if dtype else out


def columns_from_arrow(table: pa.Table, dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``ModalityBatch.from_arrow(table, dims).to_columns()``: a Ray Data ``map_batches`` step."""
    return ModalityBatch.from_arrow(table, dims).to_columns()
