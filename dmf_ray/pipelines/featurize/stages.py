"""The featurize pipeline's stages (read, parse + inline encoders, pooled encoders, write) and
its assembly into one Ray Data pipeline; ``dmf_ray.pipelines.featurize`` drives it."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from dmf_ray.encoders import Encoder, encoder_from_spec
from dmf_ray.encoders.base import size_refusal
from dmf_ray.inputs import InputFile, read_chunks
from dmf_ray.molecules import InvalidSmilesError, Molecule, iter_parsed, mol_from_bytes, mol_to_bytes
from dmf_ray.runtime import actor_cpus
from dmf_ray.store import EmbeddingStore

ID_DTYPE = "S24"  # molecule ids as fixed-width bytes: compact and fast to search


# ---- stage 1: read ------------------------------------------------------------------------
# A shard travels as ONE row (list columns), so no block boundary can ever cut it in two.
# Blocks this small hold one row each, i.e. one shard (a row cannot be split).
SHARD_BLOCK_BYTES = 1 << 10
# With pooled encoders the parse stage emits molecules (RDKit binaries, ~1 KB each) under the same
# setting, and one-row blocks of those would drown the encoder pools in tiny tasks.
POOLED_BLOCK_BYTES = 1 << 20
# What a read task's worker holds (measured: ~135 MiB reading .smi, ~196 MiB reading MOSES'
# .csv.gz through pyarrow's CSV reader); declared so Ray schedules it honestly and its memory
# detector has nothing to flag.
READ_TASK_MEMORY = 256 << 20
# A write task's worker with pooled encoders (measured 167-186 MiB in benchmarks/bench_neural.py,
# where Ray Data's memory detector flagged it undeclared).
WRITE_TASK_MEMORY = 256 << 20
SHARD_SCHEMA = pa.schema([("shard", pa.string()), ("source", pa.string()), ("file", pa.string()), ("last", pa.bool_()),
                          ("rows", pa.list_(pa.int64())), ("smiles", pa.list_(pa.string())),
                          ("source_id", pa.list_(pa.string())), ("problem", pa.list_(pa.string()))])


def _read_stage(batch: dict[str, np.ndarray], chunk_rows: int, skip: set[str]):
    for payload in batch["file"]:
        file = InputFile(**payload)
        for chunk in read_chunks(file, chunk_rows, skip):
            yield pa.table({"shard": [chunk.shard], "source": [chunk.source], "file": [file.key], "last": [chunk.last],
                            "rows": [chunk.rows], "smiles": [chunk.smiles], "source_id": [chunk.ids],
                            "problem": [chunk.problems]}, schema=SHARD_SCHEMA)


# ---- stage 2: parse (and inline encoders) -------------------------------------------------
STATUS_SCHEMA = pa.schema([("shard", pa.string()), ("modality", pa.string()), ("rows", pa.int64()), ("expected", pa.int64())])
# The status row, once per shard, whose ``rows`` are the shard's input rows (for the driver's
# progress): no modality is named "" (encoder names are registry names).
INPUT_ROWS = ""


class _InlineModality:
    """One inline encoder's vectors for one shard, filled a molecule at a time."""

    def __init__(self, encoder: Encoder, capacity: int):
        self.encoder = encoder
        self.values = np.zeros((capacity, encoder.dim), dtype=encoder.dtype)
        self.ids: list[str] = []
        self.errors: list[str | None] = []

    def add(self, molecule: Molecule) -> None:
        self.errors.append(self.encoder.encode_into(molecule, self.values[len(self.ids)]))
        self.ids.append(molecule.mol_id)


def _is_known(sorted_ids: np.ndarray, mol_id: str) -> bool:
    if not len(sorted_ids):
        return False
    key = mol_id.encode()
    pos = int(sorted_ids.searchsorted(key))
    return pos < len(sorted_ids) and sorted_ids[pos] == key


class _ParseStage:
    """Parses whole shards (a shard is one row, so it is never split), writes their molecules and
    failures, and runs the inline encoders on each molecule as soon as it is parsed (while it is
    hot in the CPU cache), writing and committing each (shard, modality) in one file. Emits the
    molecules the pooled encoders still need and a header row per shard or, when there are no
    pooled encoders, one status row per inline (shard, modality) and one of the shard's input
    rows (``INPUT_ROWS``), for the driver's commits and progress.

    A modality needs a molecule when it is the shard's first occurrence of that molecule, the
    store lacks it for that modality, and the (shard, modality) is not committed yet."""

    def __init__(self, store_uri: str, run: str, specs: dict[str, dict[str, Any]], inline: list[str],
                 known_ids: dict[str, np.ndarray], inputs_done: set[str], modality_done: dict[str, set[str]]):
        self.store = EmbeddingStore.open(store_uri, run=run)
        self.specs = specs
        self.inline = {name: encoder_from_spec(specs[name]) for name in inline}
        self.pooled = [name for name in specs if name not in self.inline]
        self.known_ids = known_ids
        self.inputs_done = inputs_done
        self.modality_done = modality_done

    def output_schema(self) -> pa.Schema:
        return _encode_input_schema(self.pooled) if self.pooled else STATUS_SCHEMA

    def __call__(self, batch: pa.Table) -> pa.Table:
        outputs = [self.parse_shard(**shard) for shard in batch.to_pylist()]
        return pa.concat_tables(outputs) if outputs else self.output_schema().empty_table()

    def parse_shard(self, shard: str, source: str, file: str, last: bool, rows: list[int], smiles: list[str | None],
                    source_id: list[str | None], problem: list[str | None]) -> pa.Table:
        self.store.log.check_lease()  # a fenced run's actor stops before doing the work
        open_names = [name for name in self.specs if shard not in self.modality_done[name]]
        inline = {name: _InlineModality(self.inline[name], len(smiles)) for name in open_names if name in self.inline}
        pooled = [name for name in open_names if name not in self.inline]
        parsed_rows: list[tuple[int, str, str]] = []  # (index in shard, mol_id, canonical SMILES)
        failures: list[tuple[int, str | None, str]] = []
        to_pool: list[tuple[str, str, bytes, list[bool]]] = []  # molecules some pooled encoder needs
        seen: set[str] = set()
        if any(problem):  # malformed rows are failures as read; the parser never sees them
            failures = [(rows[i], smiles[i], p) for i, p in enumerate(problem) if p]
            smiles = [None if p else s for s, p in zip(smiles, problem)]
        for i, parsed in enumerate(iter_parsed(smiles)):
            if problem[i]:
                continue
            if isinstance(parsed, InvalidSmilesError):
                failures.append((rows[i], smiles[i], parsed.reason))
                continue
            # Keep the id and SMILES, not the molecule: it is freed after this iteration.
            parsed_rows.append((i, parsed.mol_id, parsed.smiles))
            if parsed.mol_id in seen:
                continue
            seen.add(parsed.mol_id)
            for name, out in inline.items():
                if not _is_known(self.known_ids[name], parsed.mol_id):
                    out.add(parsed)
            need = [not _is_known(self.known_ids[name], parsed.mol_id) for name in pooled]
            if any(need):
                to_pool.append((parsed.mol_id, parsed.smiles, mol_to_bytes(parsed.mol), need))
        if shard not in self.inputs_done:
            self.store.write_inputs(
                shard, source=source, file=file, last=last, inputs=len(rows), failures=sorted(failures),
                molecules={"mol_id": [m for _, m, _ in parsed_rows], "smiles": [c for _, _, c in parsed_rows],
                           "row": [rows[i] for i, _, _ in parsed_rows], "source_id": [source_id[i] for i, _, _ in parsed_rows]})
        written = {name: self.write_inline(shard, name, out) for name, out in inline.items()}
        expected = {name: sum(row[3][k] for row in to_pool) for k, name in enumerate(pooled)}
        for name, count in {**written, **expected}.items():
            if count == 0:  # nothing to add: the shard is complete for this modality
                self.store.commit_modality(name, shard, 0)
        if not self.pooled:
            status = {name: count for name, count in written.items() if count} | {INPUT_ROWS: len(rows)}
            return pa.table({"shard": [shard] * len(status), "modality": list(status),
                             "rows": list(status.values()), "expected": list(status.values())}, schema=STATUS_SCHEMA)
        return self.molecules_to_encode(shard, to_pool, pooled, expected, len(rows))

    def write_inline(self, shard: str, name: str, out: _InlineModality) -> int:
        """Write and commit the shard's part of an inline modality; returns its row count."""
        if out.ids:
            self.store.write_modality_part(name, shard, out.ids, out.values[: len(out.ids)], out.errors)
            self.store.commit_modality(name, shard, len(out.ids))
        return len(out.ids)

    def molecules_to_encode(self, shard: str, to_pool: list[tuple[str, str, bytes, list[bool]]], pooled: list[str],
                            expected: dict[str, int], inputs: int) -> pa.Table:
        """The molecules some pooled encoder needs, then the shard's header row: no molecule
        (every ``need__`` false), ``inputs`` = the shard's input rows (-1 on molecule rows).
        It travels through the encoders untouched, so every shard reaches the write stage and
        the driver, even one with nothing to encode."""
        to_pool = [*to_pool, ("", "", b"", [False] * len(pooled))]
        columns: dict[str, Any] = {
            "shard": pa.array([shard] * len(to_pool), pa.string()),
            "mol_id": pa.array([row[0] for row in to_pool], pa.string()),
            "smiles": pa.array([row[1] for row in to_pool], pa.string()),
            "mol": pa.array([row[2] for row in to_pool], pa.binary()),
            "inputs": pa.array([-1] * (len(to_pool) - 1) + [inputs], pa.int64()),
        }
        for name in self.pooled:  # a modality committed for this shard already needs nothing here
            k = pooled.index(name) if name in pooled else None
            columns[f"need__{name}"] = pa.array([k is not None and row[3][k] for row in to_pool], pa.bool_())
            columns[f"expect__{name}"] = pa.array([expected.get(name, 0)] * len(to_pool), pa.int64())
        return pa.table(columns, schema=_encode_input_schema(self.pooled))


def _encode_input_schema(modalities: list[str]) -> pa.Schema:
    fields = [("shard", pa.string()), ("mol_id", pa.string()), ("smiles", pa.string()), ("mol", pa.binary()),
              ("inputs", pa.int64())]
    for name in modalities:
        fields += [(f"need__{name}", pa.bool_()), (f"expect__{name}", pa.int64())]
    return pa.schema(fields)


# ---- stage 3: encode (pooled encoders) ------------------------------------------------------
class EncodeStage:
    """One encoder in an actor: the model (or fingerprint generator) is built once per actor."""

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name = name
        self.encoder = encoder_from_spec(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        need = batch[f"need__{self.name}"].astype(bool)
        values = np.zeros((len(need), self.encoder.dim), dtype=self.encoder.dtype)
        # "" = no error: Ray turns an all-None object column into floats between stages.
        errors = np.full(len(need), "", dtype=object)
        molecules, index = [], []
        for i in np.flatnonzero(need):
            molecule = Molecule(batch["mol_id"][i], batch["smiles"][i], mol_from_bytes(batch["mol"][i]))
            refused = size_refusal(self.encoder, molecule)  # a batched encode() may not check it
            if refused is None:
                molecules.append(molecule)
                index.append(i)
            else:
                errors[i] = refused
        if molecules:
            encoded = self.encoder.encode(molecules)
            values[index] = encoded.values
            errors[index] = np.array([e or "" for e in encoded.errors], dtype=object)
        batch[f"emb__{self.name}"] = values
        batch[f"err__{self.name}"] = errors
        return batch


# ---- stage 4: write -----------------------------------------------------------------------
def _write_stage(batch: dict[str, np.ndarray], store_uri: str, run: str, specs: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    store = EmbeddingStore.open(store_uri, run=run)
    status = defaultdict(list)
    shards = batch["shard"]
    for name, spec in specs.items():
        need = batch[f"need__{name}"].astype(bool)
        for shard in dict.fromkeys(shards[need]):
            rows = np.flatnonzero(need & (shards == shard))
            errors = [str(e) or None for e in batch[f"err__{name}"][rows]]
            store.write_modality_part(name, str(shard), list(batch["mol_id"][rows]), batch[f"emb__{name}"][rows], errors)
            status["shard"].append(shard)
            status["modality"].append(name)
            status["rows"].append(len(rows))
            status["expected"].append(int(batch[f"expect__{name}"][rows[0]]))
    for i in np.flatnonzero(batch["inputs"] >= 0):  # a shard's header row (see molecules_to_encode)
        # Its input rows, and each modality it waits for with 0 rows: the driver then knows the
        # whole shard, whichever of its rows arrive first.
        inputs = int(batch["inputs"][i])
        waits = [(name, 0, int(batch[f"expect__{name}"][i])) for name in specs if batch[f"expect__{name}"][i] > 0]
        for name, count, expected in [(INPUT_ROWS, inputs, inputs), *waits]:
            status["shard"].append(shards[i])
            status["modality"].append(name)
            status["rows"].append(count)
            status["expected"].append(expected)
    if not status:
        return {"shard": np.array([], dtype=object), "modality": np.array([], dtype=object), "rows": np.array([], dtype=np.int64), "expected": np.array([], dtype=np.int64)}
    return {k: np.array(v) for k, v in status.items()}


# ---- pipeline ------------------------------------------------------------------------------
def known_ids(store: EmbeddingStore, name: str) -> np.ndarray:
    if name not in store.modalities:
        return np.array([], dtype=ID_DTYPE)
    ids = store.modality_table(name, ["mol_id"]).column("mol_id").to_numpy(zero_copy_only=False)
    return np.sort(ids.astype(ID_DTYPE))


# Fewest bytes an input row can take (MOSES .csv.gz: 6.5): bounds the shard count from above.
MIN_BYTES_PER_ROW = 6


def _parse_pool_size(files: list[InputFile], shard_rows: int, cpus: float) -> int:
    """One parse actor per CPU, but no more than the inputs can have shards. File sizes only
    bound the shard count from above, so an actor may stay idle on a small library; Ray Data
    warns about that, which would only puzzle the user. The filter is set here, per run, rather
    than at import: pytest and warnings.catch_warnings callers reset filters set at import."""
    warnings.filterwarnings("ignore", message=r"The minimum number of concurrent actors for 'MapBatches\((_ParseStage|EncodeStage)\)'")
    shards = sum(max(1, math.ceil(f.size / (MIN_BYTES_PER_ROW * shard_rows))) for f in files)
    return max(1, min(int(cpus), shards))


def build_pipeline(
    files: list[InputFile], store: EmbeddingStore, store_uri: str, specs: dict[str, dict],
    inline: list[str], pooled: dict[str, Encoder], *, skip: set[str], known: dict[str, np.ndarray],
    inputs_done: set[str], modality_done: dict[str, set[str]], cpus: float, gpus: float,
) -> Any:
    """read -> parse (inline encoders write their own parts there) -> pooled encoders -> write
    the pooled encoders' parts. The pipeline yields status rows: see ``_commit_statuses``."""
    import ray

    cpus_per_actor = actor_cpus(cpus, 1 + len(pooled))
    ds = ray.data.from_items([{"file": f.__dict__} for f in files])
    # Ray Data merges a stage's small outputs into blocks up to this size, and a block goes to one
    # parse actor: at the 128 MiB default a whole file of shards would be parsed by one actor, and
    # even at 1 MiB two 20k-row shards of short SMILES (~0.5 MB each) shared a block and an actor
    # while the other actor sat idle. Below a shard's size, every shard is a block of its own.
    # (The setting is the whole dataset's; with pooled encoders a shard block may hold two shards.)
    ds.context.target_max_block_size = POOLED_BLOCK_BYTES if pooled else SHARD_BLOCK_BYTES
    ds = ds.map_batches(
        _read_stage, batch_size=1, batch_format="numpy", num_cpus=0.05, memory=READ_TASK_MEMORY,
        fn_kwargs={"chunk_rows": store.shard_rows, "skip": skip},
    )
    ds = ds.map_batches(
        _ParseStage, batch_size=None, batch_format="pyarrow", num_cpus=cpus_per_actor,
        # A fixed pool, one shard in flight per actor: with Ray Data's autoscaling pool (and 4
        # blocks in flight per actor) a 3-shard library queued on the first actor and the pool
        # never grew, so one core did all the work.
        compute=ray.data.ActorPoolStrategy(size=_parse_pool_size(files, store.shard_rows, cpus),
                                           max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"store_uri": store_uri, "run": store.log.run, "specs": specs, "inline": inline, "known_ids": known,
                               "inputs_done": inputs_done, "modality_done": modality_done},
    )
    for name, encoder in pooled.items():
        plan = encoder.actor_plan(cpus, gpus, cpus_per_actor)  # pool size and per-actor resources
        ds = ds.map_batches(
            EncodeStage,
            batch_size=encoder.default_batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_size, max_size=plan.max_size),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            **({"memory": plan.memory} if plan.memory else {}),
            fn_constructor_kwargs={"name": name, "spec": specs[name]},
        )
    if pooled:
        ds = ds.map_batches(_write_stage, batch_size=4096, batch_format="numpy", num_cpus=0.05, memory=WRITE_TASK_MEMORY,
                            fn_kwargs={"store_uri": store_uri, "run": store.log.run, "specs": {n: specs[n] for n in pooled}})
    return ds


