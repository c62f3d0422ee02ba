"""The store's table schemas and the Arrow form of embedding vectors (see ``dmf_ray.store``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MOLECULES_SCHEMA = pa.schema(
    [("mol_id", pa.string()), ("smiles", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("source_id", pa.string())]
)
FAILURES_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.int64()), ("input", pa.string()), ("reason", pa.string())])
# Below this many bytes of dense float32 vectors, consumers (train, embed) join a store's
# modalities in one process with read_numpy (~0.1 s for 5k molecules) rather than with a Ray Data
# hash join, which costs 15-25 s of fixed overhead on 2 cores whatever the size.
IN_MEMORY_JOIN_MAX_BYTES = 2 << 30
# Columns whose values repeat within a file, so dictionary encoding pays; ids, SMILES and vectors
# rarely repeat: dictionary-encoding them made writing a 20k-molecule ECFP part 1.6x slower
# (480 vs 300 ms) for a file 20% smaller.
DICTIONARY_COLUMNS = ["source", "error", "reason"]


def embedding_type(dtype: str, dim: int) -> pa.DataType:
    return pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), dim)


def modality_schema(dtype: str, dim: int) -> pa.Schema:
    return pa.schema([("mol_id", pa.string()), ("embedding", embedding_type(dtype, dim)), ("error", pa.string())])


def embedding_array(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """[n, dim] numpy -> nullable fixed_size_list array (null where ``valid`` is False)."""
    n, dim = values.shape
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    mask = None if valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)
