"""Training data: the validation split by mol_id, the training split's normalisation moments (merged
with dmf_ray.model.normalization), and reading a store's
modalities into Ray Datasets for the workers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmf_ray.model.normalization import Moments, array_moments, batch_moments
from dmf_ray.store import IN_MEMORY_JOIN_MAX_BYTES
from dmf_ray.pipelines.train.config import TrainConfig

_SPLIT_PERSON = b"dmf-valsplit"  # blake2b personalisation: the split is independent of mol_id's own hash


# --------------------------------------------------------------------------------------------
# Validation split
# --------------------------------------------------------------------------------------------


def split_unit(mol_id: str) -> float:
    """A number in [0, 1) fixed by mol_id alone (blake2b), so the split never depends on row order,
    the store, the worker count or the Python hash seed."""
    digest = hashlib.blake2b(str(mol_id).encode(), digest_size=8, person=_SPLIT_PERSON).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def validation_mask(mol_ids: Iterable[str], val_fraction: float) -> np.ndarray:
    """Bool [N]: the molecule belongs to the validation split."""
    ids = list(mol_ids)
    return np.fromiter((split_unit(i) < val_fraction for i in ids), dtype=bool, count=len(ids))


def _block_moments(batch: dict[str, np.ndarray], modalities: list[str]) -> dict[str, np.ndarray]:
    # One output row per block: count [M], and mean/m2 [d_m] per modality.
    moments = batch_moments(batch, batch["present"], modalities)
    out: dict[str, np.ndarray] = {"count": np.array([[moments[m].count for m in modalities]], dtype=np.int64)}
    for m in modalities:
        out[f"mean__{m}"] = moments[m].mean[None, :]
        out[f"m2__{m}"] = moments[m].m2[None, :]
    return out


def dataset_moments(ds, modalities: list[str], dims: list[int]) -> dict[str, Moments]:
    """Per-modality moments of a Ray Dataset (columns = modalities + present), one small row per
    block merged on the driver: no block is ever held twice."""
    total = {m: Moments.empty(d) for m, d in zip(modalities, dims)}
    parts = ds.map_batches(_block_moments, batch_format="numpy", batch_size=None, fn_kwargs={"modalities": modalities})
    for part in parts.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(part["count"])):
            for j, m in enumerate(modalities):
                block = Moments(int(part["count"][i, j]), part[f"mean__{m}"][i], part[f"m2__{m}"][i])
                total[m] = total[m].merge(block)
    return total


def _tag_split(batch: dict[str, np.ndarray], val_fraction: float) -> dict[str, np.ndarray]:
    out = {k: v for k, v in batch.items() if k != "mol_id"}
    out["_valid"] = validation_mask(batch["mol_id"], val_fraction)
    return out


@dataclass
class ArrayShards:
    """The splits as one object per rank in Ray's object store (driver mode): each is a dict
    {"present": bool [n_k, M], <modality>: float32 [n_k, d_m]}. A worker holds its shard from
    the first step, so the first epoch costs what the others do: streaming the same rows
    through a Ray Data split made it 50-100x slower than the later, cached epochs."""

    train: list[Any]  # ObjectRef per rank: n_train // ranks rows each (the remainder is left out)
    valid: list[Any]  # ObjectRef per rank: every validation row, spread over the ranks


def _put_shards(values: Mapping[str, np.ndarray], present: np.ndarray, names: list[str],
                parts: list[np.ndarray]) -> list[Any]:
    import ray

    return [ray.put({"present": np.ascontiguousarray(present[idx]),
                     **{n: np.ascontiguousarray(values[n][idx], dtype=np.float32) for n in names}})
            for idx in parts]


def array_shards(arrays, names: list[str], train_rows: np.ndarray, valid_rows: np.ndarray, ranks: int,
                 seed: int) -> ArrayShards:
    """Split the rows over ``ranks`` workers (training rows in a seeded random order, equal
    shares as Ray Train's own split gives) and put each share in the object store."""
    order = np.random.default_rng(seed).permutation(train_rows)
    share = len(order) // ranks
    train = [order[k * share: (k + 1) * share] for k in range(ranks)]
    return ArrayShards(_put_shards(arrays.values, arrays.present, names, train),
                       _put_shards(arrays.values, arrays.present, names, np.array_split(valid_rows, ranks)))


@dataclass
class TrainingData:
    train: Any  # distributed mode: materialised Ray Dataset (a float32 [d_m] column per modality + present bool [M])
    valid: Any
    n_train: int
    n_valid: int
    moments: dict[str, Moments]  # of the training split, present rows only
    mode: str  # "driver" or "distributed"
    shards: ArrayShards | None = None  # driver mode: the splits per rank (train and valid are None)


def load_training_data(store, names: list[str], config: TrainConfig, ranks: int = 1) -> TrainingData:
    """Join and split by mol_id the store's chosen modalities, for ``ranks`` workers; moments of
    the training split come with it (from the arrays already in memory, or a streaming pass)."""
    mode = config.data_loading
    if mode == "auto":
        mode = "driver" if store.dense_bytes(names) <= IN_MEMORY_JOIN_MAX_BYTES else "distributed"
    dims = [int(store.modalities[n]["dim"]) for n in names]
    if mode == "driver":
        arrays = store.read_numpy(names)
        is_valid = validation_mask(arrays.mol_ids, config.val_fraction)
        train_rows, valid_rows = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
        moments = array_moments(arrays.values, arrays.present, names, train_rows)
        shards = array_shards(arrays, names, train_rows, valid_rows, max(ranks, 1), config.seed)
        return TrainingData(None, None, len(train_rows), len(valid_rows), moments, mode, shards)

    from ray.data.expressions import col

    joined = (
        store.read_dataset(names)
        .map_batches(_tag_split, batch_format="numpy", fn_kwargs={"val_fraction": config.val_fraction})
        .materialize()
    )
    train = joined.filter(expr=col("_valid") == False).drop_columns(["_valid"]).materialize()  # noqa: E712
    valid = joined.filter(expr=col("_valid") == True).drop_columns(["_valid"]).materialize()  # noqa: E712
    del joined
    n_train, n_valid = train.count(), valid.count()
    moments = dataset_moments(train, names, dims) if n_train else {m: Moments.empty(d) for m, d in zip(names, dims)}
    return TrainingData(train, valid, n_train, n_valid, moments, mode)
