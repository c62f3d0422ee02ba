"""Batch embedding: fused vectors for a whole library with Ray Data, streaming.

Two sources:
- input files: each actor loads the model and its encoders once (``FusionEmbedder``), and turns
  SMILES into fused vectors exactly as the online service does;
- a store: the stored modality vectors are fused directly (no featurisation); the store's
  encoders must be the ones the model was trained with. A store whose vectors fit in memory
  (``IN_MEMORY_JOIN_MAX_BYTES``) is joined, fused and written in the driver (no Ray job); a
  larger one through Ray Data joins and an actor pool.

Output: a Parquet dataset (a folder) with one row per input row, aligned with a status:
``mol_id``, ``smiles``, ``embedding`` (fixed_size_list<float32>, null on failure),
``attn_<modality>`` per model modality (0 where absent), ``present`` (modality names used),
``modality_errors`` (map modality -> why its encoder refused this molecule; null for a row that
never reached the encoders, and for rows fused from a store, whose modality files hold those
reasons), ``error`` (null or the reason), plus
``source``/``row``/``source_id`` to trace the row back. Each Parquet
file (``part-<random>.parquet``) is written whole by the task that fused its rows, which tells
the driver its row count (the progress reports). Rerunning replaces the output; an ``out``
holding anything else is refused (``check_output``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from dmf_ray.files import join, redact, resolve, write_parquet
from dmf_ray.artifact import read_model_config
from dmf_ray.inference import FusionEmbedder, choose_modalities, fuse, molecule_results
from dmf_ray.inputs import discover_inputs, read_rows_stage
from dmf_ray.modalities import ModalityBatch
from dmf_ray.progress import ProgressCallback, Reporter, RowCount


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
        ("modality_errors", pa.map_(pa.string(), pa.string())),
        ("error", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("source_id", pa.string()),  # the input's id (--id-column, or a .smi line's second token); else null
    ]
    return pa.schema(fields)


def _rows_to_table(results: list[dict[str, Any]], modalities: list[str], latent_dim: int, source, row,
                   source_id=None) -> pa.Table:
    """The output rows (``output_schema``) of ``results`` (``inference.molecule_results`` rows or
    ``{"error"}``), with each input row's ``source``, ``row`` and ``source_id`` (None: all null)."""
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
    columns["modality_errors"] = pa.array(
        [list(r["modality_errors"].items()) if "modality_errors" in r else None for r in results],
        pa.map_(pa.string(), pa.string()))
    columns["error"] = pa.array([r.get("error") for r in results], pa.string())
    columns["source"] = pa.array(source, pa.string())
    columns["row"] = pa.array(row, pa.int64())
    columns["source_id"] = pa.nulls(n, pa.string()) if source_id is None else pa.array(source_id, pa.string())
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
            batch.column("source_id") if "source_id" in batch.column_names else None,
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
        return self.fuse(paired, batch["smiles"], batch["source"], batch["row"], batch["source_id"])

    def fuse(self, paired: ModalityBatch, smiles, source, row, source_id) -> pa.Table:
        """Output rows for ``paired`` (model order; modalities outside ``use`` are withheld)."""
        paired = paired.withhold([m for m in self.names if m not in self.use])
        fused = fuse(self.model, paired)
        results = molecule_results(paired, fused, smiles, no_modality="no modality of the model is stored for this molecule")
        return _rows_to_table(results, self.names, self.model.config.latent_dim, source, row, source_id)


def _fuse_small_store(store, model_dir: str, drop: list[str] | None, batch_size: int) -> tuple[int, Iterator[pa.Table]]:
    """The output rows of a store that fits in memory (their count, and the rows a part at a
    time), fused here: its modalities joined by read_numpy instead of two Ray Data hash joins
    (~20 s of fixed cost even for 5k molecules)."""
    import pyarrow.compute as pc

    stage = FuseStoredStage(model_dir, drop)
    stored = store.read_numpy(stage.use)
    molecules = store.molecules_table(["mol_id", "smiles", "source", "row", "source_id"])
    failures = store.failures_table()
    where = pc.index_in(molecules.column("mol_id"), value_set=pa.array(stored.mol_ids, pa.string()))
    where = where.to_numpy(zero_copy_only=False)  # NaN: a molecule with none of the modalities
    columns = {c: molecules.column(c).to_numpy(zero_copy_only=False) for c in molecules.column_names}

    def parts() -> Iterator[pa.Table]:
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
            yield stage.fuse(paired, columns["smiles"][part], columns["source"][part], columns["row"][part],
                             columns["source_id"][part])
        if failures.num_rows:
            yield _failures_as_rows(failures, stage.names, stage.model.config.latent_dim)

    return molecules.num_rows + failures.num_rows, parts()


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
    id_column: str | None, drop_modalities: list[str] | None, batch_size: int, count_rows: bool,
) -> tuple[Any, Callable[[], int | None], Callable[[], None]]:
    """The rows to write, one per input row (a vector or the reason there is none): a Ray
    Dataset, or an iterator of tables fused here for a store that fits in memory; with the count
    of rows (a callable: None while unknown) and what to call once written."""
    import ray
    from ray.data import ActorPoolStrategy

    from dmf_ray.runtime import actor_cpus, cluster_resources

    modalities = list(card["fusion"]["modalities"])
    latent_dim = int(card["fusion"]["latent_dim"])
    use = choose_modalities(modalities, None, drop_modalities)

    if inputs is not None:
        files = discover_inputs(list(inputs), smiles_column, id_column)
        counted = RowCount(files, batch_size * 8) if count_rows else None
        cpus, _ = cluster_resources()
        ds = ray.data.from_items([{"file": f.__dict__} for f in files])
        ds = ds.map_batches(read_rows_stage, batch_size=1, batch_format="numpy", num_cpus=0.05, fn_kwargs={"chunk_rows": batch_size * 8})
        ds = ds.map_batches(
            EmbedSmilesStage, batch_size=batch_size, batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=1, max_size=max(1, int(cpus))),
            num_cpus=actor_cpus(cpus, 1), fn_constructor_kwargs={"model_dir": model_dir, "drop": drop_modalities},
        )
        return ds, lambda: counted and counted.total, counted.stop if counted else lambda: None
    from dmf_ray.store import IN_MEMORY_JOIN_MAX_BYTES, INPUTS_TABLE, EmbeddingStore

    store = EmbeddingStore.open(store_uri)
    _check_store_matches_model(store, card, use)
    if store.dense_bytes(use) <= IN_MEMORY_JOIN_MAX_BYTES:
        total, tables = _fuse_small_store(store, model_dir, drop_modalities, batch_size)
        return tables, lambda: total, lambda: None
    total = sum(int(r["inputs"]) for r in store.committed(INPUTS_TABLE).values())  # = molecules + failures
    cpus, _ = cluster_resources()
    paired = store.read_dataset(use)
    molecules = ray.data.read_parquet(store.committed_files("molecules"), filesystem=store.fs).select_columns(["mol_id", "smiles", "source", "row", "source_id"])
    joined = molecules.join(paired, join_type="left_outer", num_partitions=max(1, int(cpus)), on=("mol_id",))
    ds = joined.map_batches(
        FuseStoredStage, batch_size=batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, int(cpus))),
        num_cpus=actor_cpus(cpus, 1), fn_constructor_kwargs={"model_dir": model_dir, "drop": drop_modalities},
    )
    failure_files = store.committed_files("failures")
    if failure_files:
        failures = ray.data.read_parquet(failure_files, filesystem=store.fs)
        ds = ds.union(failures.map_batches(_failures_as_rows, batch_format="pyarrow", fn_kwargs={"modalities": modalities, "latent_dim": latent_dim}))
    return ds, lambda: total, lambda: None


def write_part(table: pa.Table, out: str, empty_ok: bool = False) -> pa.Table:
    """Write one Parquet file of output rows into the folder ``out`` (atomic; named at random,
    as Ray's own writer names its files); returns its (rows, failed) as a one-row table."""
    if table.num_rows or empty_ok:
        fs, path = resolve(out)
        write_parquet(fs, join(path, f"part-{uuid.uuid4().hex}.parquet"), table, dictionary=["source"])
    return pa.table({"rows": [table.num_rows], "failed": [table.num_rows - table.column("error").null_count]})


# What an embed leaves in ``out``: write_part's part files and, after a crash mid-write on a local
# disk, atomic_write's hidden temp files; or, from an embed before 2026-12-03, Ray Data's own
# names (<dataset uuid>[_<write uuid>]_<task:06>[_<block:06>].parquet).
_OUTPUT_FILE = re.compile(r"(\.tmp-[0-9a-f]{32}-)?part-[0-9a-f]{32}\.parquet"
                          r"|[0-9a-f]{32}(_[0-9a-f]{32})?_\d{6}(_\d{6})?\.parquet")


def check_output(out: str) -> None:
    """Refuse an ``out`` that a rerun may not overwrite: a file, or a folder holding anything but
    an earlier embed's output (``_OUTPUT_FILE``), so a mistyped ``--out`` (``.``, the
    model's folder, a folder of notes) never deletes what it holds. ValueError names one
    stranger and how many there are; changes nothing."""
    fs, path = resolve(out)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        raise ValueError(f"out {redact(out)} is a file; give a folder (new, empty, or an earlier embed output)")
    held = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    strangers = sorted(i.base_name for i in held if i.type != pafs.FileType.File or not _OUTPUT_FILE.fullmatch(i.base_name))
    if strangers:
        raise ValueError(f"out {redact(out)} holds {len(strangers)} entr{'y' if len(strangers) == 1 else 'ies'} that "
                         f"{'is' if len(strangers) == 1 else 'are'} not an earlier embed output (e.g. {strangers[0]!r}); "
                         f"embed replaces what out holds, so give a new or empty folder")


def _empty_output(out: str) -> None:
    """Make ``out`` an empty folder (a rerun overwrites its earlier output, as Ray's
    ``SaveMode.OVERWRITE`` does); ``check_output`` first, so nothing else is ever deleted."""
    check_output(out)
    fs, path = resolve(out)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)


def _written_parts(source: Any, out: str) -> Iterator[pa.Table]:
    """Write ``source`` (tables fused here, or a Ray Dataset: written by Ray tasks) into ``out``;
    yields the (rows, failed) table of each file as it is written."""
    if isinstance(source, Iterator):
        yield from (write_part(table, out) for table in source)
        return
    from dmf_ray.runtime import pipeline_actors_killed_on_failure

    statuses = source.map_batches(write_part, batch_size=None, batch_format="pyarrow", num_cpus=0.05,
                                  fn_kwargs={"out": out})
    with pipeline_actors_killed_on_failure():
        yield from statuses.iter_batches(batch_size=None, batch_format="pyarrow")


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
    progress: ProgressCallback | None = None,
) -> EmbedResult:
    """Embed input files or a whole store with a trained model; needs Ray running (except for
    a store whose vectors fit in memory: fused and written here).

    ``progress(done, total)`` (``dmf_ray.progress``; called from this thread only): ``done`` =
    output rows written so far (one per input row: a fused vector or the reason there is none);
    ``total`` = the input rows: of the files, counted in a background thread (None until
    counted), or of the store, from its commits. The last call has done == total."""
    if (inputs is None) == (store_uri is None):
        raise ValueError("give input files or --store, not both")
    check_output(out)  # before any work
    card = read_model_config(model_dir)
    started = time.time()
    report = Reporter(progress, log, "embed")
    source, total, finished = _build_pipeline(model_dir, card, inputs, store_uri, smiles_column, id_column,
                                              drop_modalities, batch_size, count_rows=report.wanted)
    _empty_output(out)
    rows = failed = 0
    try:
        for part in _written_parts(source, out):
            rows += sum(part.column("rows").to_pylist())
            failed += sum(part.column("failed").to_pylist())
            report(rows, total())
    finally:
        finished()
    if not rows:  # no input row at all: one empty file gives readers the schema
        write_part(output_schema(list(card["fusion"]["modalities"]), int(card["fusion"]["latent_dim"])).empty_table(),
                   out, empty_ok=True)
    report(rows, rows)
    result = EmbedResult(out, rows, failed, time.time() - started)
    log(f"embedded {rows:,} rows ({failed:,} failed) into {out} in {result.seconds:.1f} s")
    return result
