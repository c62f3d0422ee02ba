"""Ray Data featurisation: input files -> molecules -> encoders -> store.

Stages (all streaming, so memory stays bounded whatever the library size):

1. read    one task per input file cuts it into fixed chunks (shards) of rows;
2. parse   an actor pool; per shard: RDKit parse, canonical SMILES, molecule id; writes the
           shard's molecules and failures tables and commits them. Inline encoders (cheap
           RDKit ones: fingerprints, descriptors) run right here on the parsed molecules, each
           writing and committing its (shard, modality) as one file: shipping molecules to
           another actor costs more than an ECFP. The molecules some pooled encoder still
           lacks (new to the store, first occurrence in the shard) go on as RDKit binaries;
3. encode  one actor pool per pooled encoder (models, plugins; GPU ones get ``num_gpus``);
4. write   per (shard, modality) Parquet parts, each file atomic;
5. commit  the driver counts written rows and commits a pooled (shard, modality) once all its
           rows are on disk.

Before Ray starts, the driver compares the inputs' shard keys with the store's commits (and
says "nothing to do: N/N shards already committed" when every shard is there) and reads each
compressed input to its end (a truncated file is one line, before anything of it is stored).
Each run takes the store's write lease (``dmf_ray.store_commits``): actors of an earlier run,
killed or not, can no longer commit. Shards of an input file that changed since are replaced.
A rerun of the same command removes uncommitted leftovers and redoes only what is missing.
A molecule present in two shards of one run is encoded twice (neither shard knew of the
other) and the second row is removed at the end (``EmbeddingStore.deduplicate``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from dmf_ray.encoders import DEFAULT_ENCODERS, Encoder, encoder_from_option
from dmf_ray.inputs import InputError, InputFile, check_readable, discover_inputs
from dmf_ray.pipelines.featurize.stages import INPUT_ROWS, build_pipeline, known_ids
from dmf_ray.progress import ProgressCallback, Reporter, RowCount
from dmf_ray.store import INPUTS_TABLE, EmbeddingStore, modality_table



@dataclass
class FeaturizeResult:
    store: str
    modalities: list[str]
    shards_committed: int
    rows_read: int
    failed: int
    encoded: dict[str, int]
    duplicates_removed: dict[str, int]
    seconds: float
    nothing_to_do: bool = False


def resolve_encoders(options: list[str] | tuple[str, ...]) -> dict[str, Encoder]:
    encoders: dict[str, Encoder] = {}
    for option in options:
        name, encoder = encoder_from_option(option)
        if name in encoders:
            raise ValueError(f"encoder {name!r} is listed twice")
        encoders[name] = encoder
    return encoders


class _Shards:
    """What the driver knows of each shard from the status rows, for commits and progress."""

    def __init__(self) -> None:
        self.written: dict[tuple[str, str], int] = defaultdict(int)
        self.expected: dict[tuple[str, str], int] = {}
        self.waiting: dict[str, set[str]] = defaultdict(set)  # shard -> modalities short of rows
        self.inputs: dict[str, int] = {}  # shard -> input rows, from its INPUT_ROWS status, until complete
        self.rows_done = 0  # input rows of the complete shards
        self.vectors = 0

    def add(self, shard: str, name: str, rows: int, expected: int) -> bool:
        """Count one status row; True when it completes a (shard, modality) (rows now == expected)."""
        if name == INPUT_ROWS:
            self.inputs[shard] = rows
            return False
        key = (shard, name)
        self.written[key] += rows
        self.expected[key] = expected
        self.vectors += rows
        if self.written[key] > expected:
            raise RuntimeError(f"shard {shard} got {self.written[key]} rows of {name}, expected {expected}")
        if self.written[key] < expected:
            self.waiting[shard].add(name)
            return False
        self.waiting[shard].discard(name)
        return rows > 0

    def finish_complete(self) -> None:
        """Count the input rows of shards whose every modality has all its rows."""
        for shard in [s for s in self.inputs if not self.waiting.get(s)]:
            self.rows_done += self.inputs.pop(shard)


def _commit_statuses(
    statuses: Iterable[dict[str, np.ndarray]], store: EmbeddingStore, pooled: dict[str, Encoder], *,
    started: float, log: Callable[[str], None], progress_interval_s: float,
    report: Reporter, rows: RowCount | None,
) -> _Shards:
    """Count the rows written per (shard, modality), commit the pooled ones, report progress.

    Status rows: (shard, modality, rows written, rows the shard needs), plus one INPUT_ROWS row
    per shard (see ``stages``). Inline encoders commit their own (shard, modality) in the parse
    actors; pooled ones are committed here once all their rows are on disk. Progress: input rows
    of the shards complete in every modality, of the rows of the shards to do (``rows.total``)."""
    shards = _Shards()
    last_log = time.time()
    for status in statuses:
        for shard, name, count, expected in zip(status["shard"], status["modality"], status["rows"], status["expected"]):
            if shards.add(str(shard), str(name), int(count), int(expected)) and str(name) in pooled:
                store.commit_modality(str(name), str(shard), int(expected))
        before = shards.rows_done
        shards.finish_complete()
        if shards.rows_done > before:
            report(shards.rows_done, rows.total if rows else None)
        if time.time() - last_log > progress_interval_s:
            last_log = time.time()
            shards_done = len({k[0] for k in shards.written})
            log(f"featurize: so far {shards.vectors:,} vectors written (all modalities) for {shards_done} shard(s) "
                f"({shards.vectors / max(1e-9, last_log - started):,.0f} vectors/s)")
    return shards


def _files_to_do(store: EmbeddingStore, files: list[InputFile], names: list[str]) -> tuple[list[InputFile], int]:
    """The files some shard of which is missing (in the inputs table or a modality), and the
    count of shards already complete. A file is complete when its last chunk and every chunk
    before it are committed everywhere: known from the commits alone, before Ray starts."""
    inputs = store.committed(INPUTS_TABLE)
    complete = set(inputs).intersection(*(store.committed_keys(modality_table(n)) for n in names if n in store.modalities))
    if any(n not in store.modalities for n in names):
        complete = set()
    todo, done = [], 0
    for file in files:
        mine = {k: r for k, r in inputs.items() if k.rsplit("-", 1)[0] == file.key}
        last = [int(k.rsplit("-", 1)[1]) for k, r in mine.items() if r.get("last")]
        if last and all(file.chunk_key(i) in complete for i in range(last[0] + 1)):
            done += last[0] + 1
        else:
            todo.append(file)
            done += sum(k in complete for k in mine)
    return todo, done


def _unwrap_input_error(exc: BaseException) -> InputError | None:
    # A read task's InputError reaches the driver wrapped in Ray's task error: give the user the
    # one line, not the remote traceback.
    seen = exc
    while seen is not None:
        if isinstance(seen, InputError):
            return InputError(str(seen).strip().splitlines()[-1].split("InputError: ", 1)[-1])
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def _prepare_run(store: EmbeddingStore, files: list[InputFile], log: Callable[[str], None]) -> None:
    """Take the store's lease (fencing a previous run's writers), replace the shards of input
    files that changed, and delete what no commit vouches for."""
    store.begin_run()
    # Before anything is retracted, so the count is an interrupted run's files only (the
    # replaced shards' files are deleted just below, and said so).
    removed = store.remove_uncommitted()
    if removed:
        log(f"removed {removed} uncommitted file(s) left by an interrupted run")
    replaced = store.supersede({f.source: f.key for f in files})
    for source, count in replaced.items():
        log(f"{source} changed since it was featurized: its {count} old shard(s) are replaced")
    if replaced:
        store.remove_uncommitted()


def featurize(
    inputs: list[str],
    store_uri: str,
    encoders: list[str] | tuple[str, ...] = DEFAULT_ENCODERS,
    smiles_column: str | None = None,
    id_column: str | None = None,
    shard_rows: int | None = None,
    log: Callable[[str], None] = print,
    progress_interval_s: float = 10.0,
    format: str | None = None,
    start_ray: Callable[[], None] | None = None,
    progress: ProgressCallback | None = None,
) -> FeaturizeResult:
    """Featurise input files into the store; see the module docstring. ``start_ray`` is called
    once there is work to do (default: Ray must be running, ``dmf_ray.runtime.ensure_ray``).

    ``progress(done, total)`` (``dmf_ray.progress``; called from this thread only): ``done`` =
    input rows of the shards finished in this run (stored or recorded as failures, every
    modality written and committed), ``total`` = input rows of the shards to do, counted from
    the files in a background thread (None until counted); the last call has done == total.
    Not called when there is nothing to do.

    Raises InputError (one line naming the file) for an input that cannot be read whole, before
    anything of it is stored."""
    started = time.time()
    files = discover_inputs(list(inputs), smiles_column, id_column, format)
    chosen = resolve_encoders(encoders)
    store = EmbeddingStore.open_or_create(store_uri, **({"shard_rows": shard_rows} if shard_rows else {}))
    if shard_rows and shard_rows != store.shard_rows:
        log(f"note: this store cuts inputs into shards of {store.shard_rows} rows (set when it was created)")
    names = list(chosen)
    todo, done = _files_to_do(store, files, names)
    if not todo:
        log(f"nothing to do: {done}/{done} shards already committed")
        return FeaturizeResult(store_uri, names, 0, 0, 0, {n: 0 for n in names}, {n: 0 for n in names},
                               time.time() - started, nothing_to_do=True)
    for file in todo:
        note = check_readable(file)
        if note:
            log(f"note: {note}")
    if start_ray is not None:
        start_ray()
    store.register_modalities({name: enc.spec() for name, enc in chosen.items()})
    _prepare_run(store, files, log)
    try:
        return _run(store, store_uri, todo, chosen, started, log, progress_interval_s,
                    Reporter(progress, log, "featurize"))
    except Exception as exc:
        error = _unwrap_input_error(exc)
        if error is not None:
            raise error from None
        raise


def _run(store: EmbeddingStore, store_uri: str, files: list[InputFile], chosen: dict[str, Encoder], started: float,
         log: Callable[[str], None], progress_interval_s: float, report: Reporter) -> FeaturizeResult:
    from dmf_ray.runtime import cluster_resources, pipeline_actors_killed_on_failure

    names = list(chosen)
    specs = {n: store.modalities[n] for n in names}
    inputs_done = store.committed_keys(INPUTS_TABLE)
    modality_done = {n: store.committed_keys(modality_table(n)) for n in names}
    skip = set.intersection(inputs_done, *modality_done.values()) if names else set(inputs_done)
    known = {n: known_ids(store, n) for n in names}

    cpus, gpus = cluster_resources()
    inline = [name for name, encoder in chosen.items() if encoder.runs_inline()]
    pooled = {name: encoder for name, encoder in chosen.items() if name not in inline}
    ds = build_pipeline(files, store, store_uri, specs, inline, pooled, skip=skip, known=known,
                         inputs_done=inputs_done, modality_done=modality_done, cpus=cpus, gpus=gpus)
    rows = RowCount(files, store.shard_rows, skip) if report.wanted else None
    try:
        with pipeline_actors_killed_on_failure():
            shards = _commit_statuses(ds.iter_batches(batch_size=None, batch_format="numpy"), store, pooled,
                                      started=started, log=log, progress_interval_s=progress_interval_s,
                                      report=report, rows=rows)
    finally:
        if rows is not None:
            rows.stop()
    committed = {n: store.committed_keys(modality_table(n)) for n in {k[1] for k in shards.written}}
    incomplete = [k for k in shards.written if k[0] not in committed[k[1]]]
    if incomplete:
        raise RuntimeError(f"{len(incomplete)} shard-modalities were written only in part, e.g. {incomplete[0]}; rerun to finish them")
    report(shards.rows_done, shards.rows_done)
    current = store.molecules_table(["mol_id"]).column("mol_id").to_numpy(zero_copy_only=False)
    duplicates = {n: store.deduplicate(n, current) for n in names}
    # A replaced input file (this run's or an interrupted one's) leaves vectors of molecules no
    # input holds now in every modality, also those this run did not compute (a rerun with fewer
    # encoders): dropped there too. Costs a read of their mol_id columns.
    for other in sorted(set(store.modalities) - set(names)):
        store.deduplicate(other, current)
    # What this run added to each table: its committed rows less the copies of molecules that
    # several of its shards held (removed just above).
    encoded = {n: sum(record["rows"] for shard, record in store.committed(modality_table(n)).items()
                      if shard not in modality_done[n]) - duplicates[n] for n in names}
    inputs_now = store.committed(INPUTS_TABLE)
    new_shards = [k for k in inputs_now if k not in inputs_done]
    return FeaturizeResult(
        store=store_uri,
        modalities=names,
        shards_committed=len(new_shards),
        rows_read=sum(inputs_now[k]["inputs"] for k in new_shards),
        failed=sum(inputs_now[k]["failed"] for k in new_shards),
        encoded=encoded,
        duplicates_removed=duplicates,
        seconds=time.time() - started,
    )
