"""Batch embedding: fused vectors for a whole library with Ray Data, streaming.

Two sources:
- input files: each actor loads the model and its encoders once (``FusionEmbedder``), and turns
  SMILES into fused vectors exactly as the online service does;
- a store: the stored modality vectors are fused directly (no featurisation); the store's
  encoders must be the ones the model was trained with. A store whose vectors fit in memory
  (``IN_MEMORY_JOIN_MAX_BYTES``) is joined and fused in the driver; a larger one through Ray
  Data joins and an actor pool.

Output: a Parquet dataset (a folder) with one row per input row, aligned with a status:
``mol_id``, ``smiles``, ``embedding`` (fixed_size_list<float32>, null on failure),
``attn_<modality>`` per model modality (0 where absent), ``present`` (modality names used),
``error`` (null or the reason), plus ``source``/``row`` to trace the row back. Rerunning
overwrites the output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from dmf_ray.files import resolve
from dmf_ray.artifact import read_model_config
from dmf_ray.inference import FusionEmbedder, choose_modalities, fuse, molecule_results
from dmf_ray.inputs import discover_inputs, read_rows_stage
from dmf_ray.modalities import ModalityBatch


@dataclass
class EmbedResult:
    out: str
    rows: int
    failed: int
    seconds: float


def output_schema(modalities: list[str], latent_dim: int) -> pa.Schema:
    fields = [
        ("mol_id", pa.string()),
        ("smiles", pa.string()),
        ("embedding", pa.list_(pa.float32(), latent_dim)),
        *[(f"attn_{m}", pa.float32()) for m in modalities],
        ("present", pa.list_(pa.string())),
        ("error", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
    ]
    return pa.schema(fields)


def _rows_to_table(results: list[dict[str, Any]], modalities: list[str], latent_dim: int, source, row) -> pa.Table:
    n = len(results)
    ok = np.array([r.get("error") is None for r in results], dtype=bool)
    vectors = np.zeros((n, latent_dim), dtype=np.float32)
    for i, r in enumerate(results):
        if ok[i]:
            vectors[i] = r["embedding"]
    flat = pa.array(vectors.reshape(-1))
    embedding = pa.FixedSizeListArray.from_arrays(flat, latent_dim, mask=None if ok.all() else pa.array(~ok))
    columns = {
        "mol_id": pa.array([r.get("mol_id") for r in results], pa.string()),
        "smiles": pa.array([r.get("smiles") for r in results], pa.string()),
        "embedding": embedding,
    }
    for m in modalities:
        columns[f"attn_{m}"] = pa.array([r["attention"][m] if ok[i] else 0.0 for i, r in enumerate(results)], pa.float32())
    columns["present"] = pa.array([r.get("modalities", []) for r in results], pa.list_(pa.string()))
    columns["error"] = pa.array([r.get("error") for r in results], pa.string())
    columns["source"] = pa.array(source, pa.string())
    columns["row"] = pa.array(row, pa.int64())
    return pa.table(columns, schema=output_schema(modalities, latent_dim))


class EmbedSmilesStage:
    """SMILES -> fused vectors; one model + encoders load per actor."""

    def __init__(self, model_dir: str, drop: list[str] | None):
        self.embedder = FusionEmbedder(model_dir)
        self.use = choose_modalities(self.embedder.modalities, None, drop)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows of ``read_rows_stage``: a row the reader found malformed keeps the reader's
        reason as its error (its raw text is not handed to RDKit as a SMILES)."""
        smiles = [s if s is not None else "" for s in batch.column("smiles").to_pylist()]
        problems = batch.column("problem").to_pylist() if "problem" in batch.column_names else [None] * len(smiles)
        readable = [i for i, p in enumerate(problems) if p is None]
        results: list[dict[str, Any]] = [{"input": s, "error": p} for s, p in zip(smiles, problems)]
        for i, result in zip(readable, self.embedder.embed_smiles([smiles[i] for i in readable], self.use)):
            results[i] = result
        return _rows_to_table(
            results, self.embedder.modalities, self.embedder.model.config.latent_dim,
            batch.column("source"), batch.column("row"),
        )


class FuseStoredStage:
    """Stored modality vectors -> fused vectors; the model only, no encoders."""

    def __init__(self, model_dir: str, drop: list[str] | None):
        from dmf_ray.artifact import load_fusion_model

        self.model, _ = load_fusion_model(model_dir)
        self.names = list(self.model.config.modalities)
        self.use = choose_modalities(self.names, None, drop)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Rows of molecules left-joined with ``EmbeddingStore.read_dataset(self.use)``: a
        molecule the join did not find has None in every store column; one it found has its
        modalities' vectors and the ``present`` mask in ``self.use`` order."""
        paired = ModalityBatch.empty(batch["mol_id"], self.names, self.model.config.dims)
        for i, mask in enumerate(batch["present"]):
            if mask is None:
                continue
            for k, name in enumerate(self.use):
                if mask[k]:
                    paired.values[name][i] = batch[name][i]
                    paired.present[i, self.names.index(name)] = True
        return self.fuse(paired, batch["smiles"], batch["source"], batch["row"])

    def fuse(self, paired: ModalityBatch, smiles, source, row) -> pa.Table:
        """Output rows for ``paired`` (model order; modalities outside ``use`` are withheld)."""
        paired = paired.withhold([m for m in self.names if m not in self.use])
        fused = fuse(self.model, paired)
        results = molecule_results(paired, fused, smiles, no_modality="no modality of the model is stored for this molecule")
        return _rows_to_table(results, self.names, self.model.config.latent_dim, source, row)


def _fuse_small_store(store, model_dir: str, drop: list[str] | None, batch_size: int) -> list[pa.Table]:
    """The whole output of a store that fits in memory, fused here: its modalities joined by
    read_numpy instead of two Ray Data hash joins (~20 s of fixed cost even for 5k molecules)."""
    import pyarrow.compute as pc

    stage = FuseStoredStage(model_dir, drop)
    stored = store.read_numpy(stage.use)
    molecules = store.molecules_table(["mol_id", "smiles", "source", "row"])
    where = pc.index_in(molecules.column("mol_id"), value_set=pa.array(stored.mol_ids, pa.string()))
    where = where.to_numpy(zero_copy_only=False)  # NaN: a molecule with none of the modalities
    columns = {c: molecules.column(c).to_numpy(zero_copy_only=False) for c in molecules.column_names}
    tables = []
    for start in range(0, molecules.num_rows, batch_size * 8):
        part = slice(start, start + batch_size * 8)
        index = where[part]
        has = ~np.isnan(index)
        rows = index[has].astype(np.int64)
        paired = ModalityBatch.empty(columns["mol_id"][part], stage.names, stage.model.config.dims)
        for j, name in enumerate(stage.names):
            if name in stored.names:
                paired.values[name][has] = stored.values[name][rows]
                paired.present[has, j] = stored.present[rows, stored.names.index(name)]
        tables.append(stage.fuse(paired, columns["smiles"][part], columns["source"][part], columns["row"][part]))
    failures = store.failures_table()
    if failures.num_rows:
        tables.append(_failures_as_rows(failures, stage.names, stage.model.config.latent_dim))
    return tables or [output_schema(stage.names, stage.model.config.latent_dim).empty_table()]


def _failures_as_rows(batch: pa.Table, modalities: list[str], latent_dim: int) -> pa.Table:
    results = [{"error": f"SMILES {i!r} is invalid: {r}"} for i, r in zip(batch.column("input").to_pylist(), batch.column("reason").to_pylist())]
    return _rows_to_table(results, modalities, latent_dim, batch.column("source"), batch.column("row"))


def _check_store_matches_model(store, card: dict[str, Any], needed: list[str]) -> None:
    from dmf_ray.store import encoder_identity

    problems = []
    for name in needed:
        if name not in store.modalities:
            problems.append(f"the store has no modality {name!r} (drop it with --drop-modalities {name})")
        elif encoder_identity(store.modalities[name]) != encoder_identity(card["modalities"][name]):
            problems.append(f"modality {name!r} was stored with a different encoder than the model was trained on")
    if problems:
        raise ValueError(f"{store.uri}: " + "; ".join(problems))


def _build_pipeline(
    model_dir: str, card: dict, inputs: list[str] | None, store_uri: str | None, smiles_column: str | None,
    id_column: str | None, drop_modalities: list[str] | None, batch_size: int,
) -> Any:
    """The rows to write: one per input row, a vector or the reason there is none."""
    import ray
    from ray.data import ActorPoolStrategy

    from dmf_ray.runtime import actor_cpus, cluster_resources

    modalities = list(card["fusion"]["modalities"])
    latent_dim = int(card["fusion"]["latent_dim"])
    use = choose_modalities(modalities, None, drop_modalities)
    cpus, _ = cluster_resources()
    pool = ActorPoolStrategy(min_size=1, max_size=max(1, int(cpus)))

    if inputs is not None:
        files = discover_inputs(list(inputs), smiles_column, id_column)
        ds = ray.data.from_items([{"file": f.__dict__} for f in files])
        ds = ds.map_batches(read_rows_stage, batch_size=1, batch_format="numpy", num_cpus=0.05, fn_kwargs={"chunk_rows": batch_size * 8})
        return ds.map_batches(
            EmbedSmilesStage, batch_size=batch_size, batch_format="pyarrow", compute=pool,
            num_cpus=actor_cpus(cpus, 1), fn_constructor_kwargs={"model_dir": model_dir, "drop": drop_modalities},
        )
    from dmf_ray.store import IN_MEMORY_JOIN_MAX_BYTES, EmbeddingStore

    store = EmbeddingStore.open(store_uri)
    _check_store_matches_model(store, card, use)
    if store.dense_bytes(use) <= IN_MEMORY_JOIN_MAX_BYTES:
        return ray.data.from_arrow(_fuse_small_store(store, model_dir, drop_modalities, batch_size))
    paired = store.read_dataset(use)
    molecules = ray.data.read_parquet(store.committed_files("molecules"), filesystem=store.fs).select_columns(["mol_id", "smiles", "source", "row"])
    joined = molecules.join(paired, join_type="left_outer", num_partitions=max(1, int(cpus)), on=("mol_id",))
    ds = joined.map_batches(
        FuseStoredStage, batch_size=batch_size, batch_format="numpy", compute=pool,
        num_cpus=actor_cpus(cpus, 1), fn_constructor_kwargs={"model_dir": model_dir, "drop": drop_modalities},
    )
    failure_files = store.committed_files("failures")
    if failure_files:
        failures = ray.data.read_parquet(failure_files, filesystem=store.fs)
        ds = ds.union(failures.map_batches(_failures_as_rows, batch_format="pyarrow", fn_kwargs={"modalities": modalities, "latent_dim": latent_dim}))
    return ds


def embed(
    model_dir: str,
    out: str,
    inputs: list[str] | None = None,
    store_uri: str | None = None,
    smiles_column: str | None = None,
    id_column: str | None = None,
    drop_modalities: list[str] | None = None,
    batch_size: int = 512,
    log: Callable[[str], None] = print,
) -> EmbedResult:
    """Embed input files or a whole store with a trained model; needs Ray running."""
    from ray.data import SaveMode

    from dmf_ray.runtime import pipeline_actors_killed_on_failure

    if (inputs is None) == (store_uri is None):
        raise ValueError("give input files or --store, not both")
    card = read_model_config(model_dir)
    started = time.time()
    ds = _build_pipeline(model_dir, card, inputs, store_uri, smiles_column, id_column, drop_modalities, batch_size)
    with pipeline_actors_killed_on_failure():
        ds.write_parquet(out, mode=SaveMode.OVERWRITE)
    rows, failed = _count_written(out)
    result = EmbedResult(out, rows, failed, time.time() - started)
    log(f"embedded {rows:,} rows ({failed:,} failed) into {out} in {result.seconds:.1f} s")
    return result


def _count_written(out: str) -> tuple[int, int]:
    """(rows, failed rows) of the written output from its error column alone: read here with
    pyarrow, since a Ray Data job for it cost ~5 s even for 5,000 rows."""
    import pyarrow.dataset as pads

    fs, path = resolve(out)
    errors = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["error"]).column("error")
    return len(errors), len(errors) - errors.null_count
