"""The partially-paired embedding store.

Layout of a store directory (local or any pyarrow filesystem, e.g. s3://bucket/store)::

    manifest.json                       format version, modalities (encoder specs), versions
    molecules/<shard>~<run>.parquet     one row per valid input row: mol_id, smiles, source, row, source_id
    failures/<shard>~<run>.parquet      one row per input row that did not parse: source, row, input, reason
    modalities/<name>/<shard>~<run>--<h>.parquet   mol_id, embedding (fixed_size_list, null if the
                                        encoder failed on that molecule), error; each mol_id at most once
    _commits/inputs/<shard>~<run>.json  written last for a shard: its molecules+failures are complete
                                        (source, file key, last chunk of its file?, row counts)
    _commits/modality=<name>/<shard>~<run>.json   the shard's rows of that modality are complete
    _runs/lease.json, _runs/<run>.json  the run allowed to commit; what a fenced run committed

A shard is a fixed chunk of one version of an input file (see ``inputs``: its key follows the
file's path and content). Every file is written atomically and a shard's commit marker is written
after its files, so readers only trust committed shards and a rerun of a crashed run deletes
uncommitted leftovers and redoes exactly the missing shards. Only the run holding the lease can
commit (``store_commits``). A new version of an input file replaces the old version's shards.
Format version 2 (ids from the stable canonical SMILES, run-scoped names) cannot read version 1.
Each modality covers its own subset of molecules (partially paired); reads join them on mol_id.
"""

from __future__ import annotations

import hashlib
import platform
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmf_ray import __version__
from dmf_ray.files import (exists, join, list_files, pafs, read_json, read_parquet_files, resolve, write_json,
                           write_parquet)
from dmf_ray.modalities import ModalityBatch, columns_from_arrow, embedding_matrix
from dmf_ray.store_commits import CommitLog, LeaseLostError, split_name

from dmf_ray.store_schema import (  # noqa: F401  (part of this module's interface)
    DICTIONARY_COLUMNS, FAILURES_SCHEMA, IN_MEMORY_JOIN_MAX_BYTES, MOLECULES_SCHEMA, embedding_array, embedding_type,
    modality_schema)

FORMAT = "dmf_ray.store"
FORMAT_VERSION = 2  # 2: molecule ids from the stable canonical SMILES; run-scoped file names
DEFAULT_SHARD_ROWS = 20_000
INPUTS_TABLE = "inputs"


class StoreError(ValueError):
    """A store that is missing, damaged, or written by an incompatible version."""


def modality_table(name: str) -> str:
    return f"modality={name}"


class EmbeddingStore:
    def __init__(self, uri: str, manifest: dict[str, Any], run: str | None = None):
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.manifest = manifest
        # Commits go through the log, under ``run`` (a featurize run's id; None: read only).
        self.log = CommitLog(self.fs, self.root, run)

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str, run: str | None = None) -> "EmbeddingStore":
        fs, root = resolve(uri)
        path = join(root, "manifest.json")
        if not exists(fs, path):
            raise StoreError(f"{uri}: not a dmf_ray store (no manifest.json)")
        try:
            manifest = read_json(fs, path)
        except ValueError as exc:
            raise StoreError(f"{uri}: manifest.json is not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{uri}: manifest.json is not a dmf_ray store manifest")
        version = manifest.get("format_version")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise StoreError(
                f"{uri}: store format version {version} was written by an older dmf_ray whose molecule ids "
                f"can differ (this dmf_ray {__version__} writes version {FORMAT_VERSION}); featurize into a new store"
            )
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{uri}: store format version {version} is not supported by dmf_ray {__version__} "
                f"(it reads version {FORMAT_VERSION})"
            )
        return cls(uri, manifest, run)

    @classmethod
    def open_or_create(cls, uri: str, shard_rows: int = DEFAULT_SHARD_ROWS) -> "EmbeddingStore":
        fs, root = resolve(uri)
        if exists(fs, join(root, "manifest.json")):
            return cls.open(uri)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            raise StoreError(f"{uri}: is a file, not a store directory")
        if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(root)):
            raise StoreError(f"{uri}: folder exists, is not empty and is not a dmf_ray store")
        import rdkit

        from dmf_ray.molecules import ID_SCHEME  # imports RDKit: only when a store is created

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": now,
            "updated_at": now,
            "created_by": f"dmf_ray {__version__}",
            "versions": {"dmf_ray": __version__, "rdkit": rdkit.__version__, "python": platform.python_version()},
            "id_scheme": ID_SCHEME,
            "shard_rows": int(shard_rows),
            "modalities": {},
        }
        store = cls(uri, manifest)
        store._write_manifest()
        return store

    def _write_manifest(self) -> None:
        self.manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(self.fs, self._path("manifest.json"), self.manifest)

    # ---- layout --------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def modalities(self) -> dict[str, dict[str, Any]]:
        return self.manifest["modalities"]

    @property
    def shard_rows(self) -> int:
        return int(self.manifest["shard_rows"])

    def modality_dir(self, name: str) -> str:
        return self._path("modalities", name)

    def _data_path(self, folder: str, shard: str) -> str:
        return self._path(folder, f"{shard}~{self.log.run}.parquet")

    def register_modalities(self, specs: dict[str, dict[str, Any]]) -> None:
        """Add modalities to the manifest; refuse to mix two encoders under one name."""
        problems = []
        for name, spec in specs.items():
            old = self.modalities.get(name)
            if old is not None and encoder_identity(old) != encoder_identity(spec):
                problems.append(
                    f"modality {name!r} is stored with {encoder_identity(old)} but this run asks for {encoder_identity(spec)}"
                )
        if problems:
            raise StoreError(f"{self.uri}: " + "; ".join(problems))
        changed = False
        for name, spec in specs.items():
            if name not in self.modalities:
                self.modalities[name] = dict(spec)
                changed = True
        if changed:
            self._write_manifest()

    def require_modalities(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.modalities]
        if missing:
            raise StoreError(
                f"{self.uri}: no modality {', '.join(map(repr, missing))} (stored: {', '.join(self.modalities) or 'none'})"
            )

    # ---- runs and commits ----------------------------------------------------------------
    def tables(self) -> list[str]:
        return [INPUTS_TABLE, *(modality_table(m) for m in self.modalities)]

    def begin_run(self) -> str:
        """Take the write lease for a new featurize run, fencing the previous run (see
        ``dmf_ray.store_commits``: its actors can no longer commit); returns the run id."""
        return self.log.begin_run(self.tables())

    def committed(self, table: str) -> dict[str, dict[str, Any]]:
        """Shard key -> commit record for one table (``inputs`` or ``modality=<name>``)."""
        return self.log.records(table)

    def committed_keys(self, table: str) -> set[str]:
        return set(self.log.counted(table))

    def commit(self, table: str, shard: str, record: dict[str, Any]) -> None:
        """Raises LeaseLostError when another run holds the lease."""
        self.log.commit(table, shard, record)

    def _counted_files(self, folder: str, table: str) -> list[str]:
        counted = {(shard, run) for shard, (run, _) in self.log.counted(table).items()}
        return [f for f in list_files(self.fs, folder, ".parquet") if split_name(f) in counted]

    def modality_files(self, name: str, committed_only: bool = True) -> list[str]:
        if not committed_only:
            return list_files(self.fs, self.modality_dir(name), ".parquet")
        return self._counted_files(self.modality_dir(name), modality_table(name))

    def committed_files(self, folder: str) -> list[str]:
        """Parquet files of ``molecules`` or ``failures`` whose shard is committed."""
        return self._counted_files(self._path(folder), INPUTS_TABLE)

    def remove_uncommitted(self) -> int:
        """Delete markers and files no counted commit vouches for (a crashed or fenced run's
        leftovers); returns how many. Only the run holding the lease calls this."""
        removed = 0
        for table in self.tables():
            for path in self.log.uncounted_markers(table):
                self.fs.delete_file(path)
                removed += 1
        folders = [(self._path("molecules"), INPUTS_TABLE), (self._path("failures"), INPUTS_TABLE)]
        folders += [(self.modality_dir(m), modality_table(m)) for m in self.modalities]
        for folder, table in folders:
            counted = {(shard, run) for shard, (run, _) in self.log.counted(table).items()}
            for path in list_files(self.fs, folder):
                if path.rsplit("/", 1)[-1].startswith(".tmp-") or split_name(path) not in counted:
                    self.fs.delete_file(path)
                    removed += 1
        return removed

    def supersede(self, current: dict[str, str]) -> dict[str, int]:
        """Retract the input shards of each source (``{source: file key}``) that belong to
        another version of that file; returns the count per source. Their modality rows stay
        until ``deduplicate`` drops the molecules no current shard holds."""
        replaced: dict[str, int] = {}
        for shard, record in self.committed(INPUTS_TABLE).items():
            source = record.get("source")
            if source in current and record.get("file") != current[source]:
                self.log.retract(INPUTS_TABLE, shard)
                replaced[source] = replaced.get(source, 0) + 1
        return replaced

    # ---- writes (the featurize run holding the lease) --------------------------------------
    def write_inputs(self, shard: str, *, source: str, file: str, last: bool, inputs: int,
                     molecules: dict[str, list], failures: list[tuple[int, str | None, str]]) -> None:
        """Write a shard's molecules (columns of MOLECULES_SCHEMA but ``source``) and failures
        ((row, input, reason)), then commit them; ``inputs`` = rows read = molecules + failures."""
        valid = len(molecules["mol_id"])
        if valid + len(failures) != inputs:
            raise ValueError(f"shard {shard}: {valid} molecules + {len(failures)} failures != {inputs} inputs")
        table = pa.table({**molecules, "source": [source] * valid}, schema=MOLECULES_SCHEMA)
        write_parquet(self.fs, self._data_path("molecules", shard), table, dictionary=DICTIONARY_COLUMNS)
        if failures:
            rows, texts, reasons = zip(*failures)
            ftable = pa.table({"source": [source] * len(failures), "row": list(rows), "input": list(texts),
                               "reason": list(reasons)}, schema=FAILURES_SCHEMA)
            write_parquet(self.fs, self._data_path("failures", shard), ftable, dictionary=DICTIONARY_COLUMNS)
        self.commit(INPUTS_TABLE, shard, {"source": source, "file": file, "last": bool(last), "inputs": int(inputs),
                                          "valid": valid, "failed": len(failures)})

    def write_modality_part(self, name: str, shard: str, ids: list[str], values: np.ndarray,
                            errors: list[str | None]) -> None:
        """One Parquet part of modality ``name`` for some of a shard's molecules: ``values``
        [len(ids), dim] in the modality's dtype, ``errors`` None or why that row has no vector.
        Named by its content, so a retried task rewrites the same file instead of adding one."""
        spec = self.modalities[name]
        valid = np.array([e is None for e in errors], dtype=bool)
        table = pa.table({"mol_id": pa.array(ids, pa.string()),
                          "embedding": embedding_array(np.asarray(values, dtype=spec["dtype"]), valid),
                          "error": pa.array(errors, pa.string())}, schema=modality_schema(spec["dtype"], spec["dim"]))
        digest = hashlib.blake2b("".join(ids).encode(), digest_size=8).hexdigest()
        path = join(self.modality_dir(name), f"{shard}~{self.log.run}--{digest}.parquet")
        write_parquet(self.fs, path, table, dictionary=DICTIONARY_COLUMNS)

    def commit_modality(self, name: str, shard: str, rows: int) -> None:
        self.commit(modality_table(name), shard, {"rows": int(rows)})

    # ---- reads ---------------------------------------------------------------------------
    def _read(self, files: list[str], columns: list[str], schema: pa.Schema) -> pa.Table:
        return read_parquet_files(self.fs, files, columns, schema)

    def molecules_table(self, columns: list[str] | None = None) -> pa.Table:
        """One row per valid input row (a molecule read twice appears twice)."""
        return self._read(self.committed_files("molecules"), columns or MOLECULES_SCHEMA.names, MOLECULES_SCHEMA)

    def failures_table(self) -> pa.Table:
        return self._read(self.committed_files("failures"), FAILURES_SCHEMA.names, FAILURES_SCHEMA)

    def modality_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        self.require_modalities([name])
        spec = self.modalities[name]
        schema = modality_schema(spec["dtype"], spec["dim"])
        return self._read(self.modality_files(name), columns or schema.names, schema)

    def dense_bytes(self, names: list[str]) -> int:
        """Upper bound of the chosen modalities as dense float32 arrays, from file metadata."""
        rows = max((sum(pq.read_metadata(f, filesystem=self.fs).num_rows for f in self.modality_files(n)) for n in names),
                   default=0)
        return rows * sum(int(self.modalities[n]["dim"]) for n in names) * 4

    def distinct_molecules(self) -> pa.Table:
        """(mol_id, smiles), one row per distinct molecule, sorted by mol_id."""
        table = self.molecules_table(["mol_id", "smiles"])
        if table.num_rows == 0:
            return table
        table = table.filter(pa.array(~_duplicated(table.column("mol_id").to_numpy(zero_copy_only=False))))
        return table.take(pc.sort_indices(table, [("mol_id", "ascending")]))

    def read_numpy(
        self, modalities: list[str] | None = None, include_all: bool = False, with_smiles: bool = False
    ) -> ModalityBatch:
        """Join the chosen modalities on mol_id into dense arrays with a presence mask.

        Rows are the molecules that have at least one chosen modality (``include_all``: every
        distinct molecule of the store, e.g. to report the ones that have none)."""
        names = list(modalities or self.modalities)
        self.require_modalities(names)
        tables = {}
        for name in names:
            t = self.modality_table(name, ["mol_id", "embedding"])
            tables[name] = t.filter(pc.is_valid(t.column("embedding")))
        if include_all or with_smiles:
            molecules = self.distinct_molecules()
        if include_all:
            ids = molecules.column("mol_id")
        else:
            chunks = [c for t in tables.values() for c in t.column("mol_id").chunks]
            ids = pc.unique(pa.chunked_array(chunks, pa.string())) if chunks else pa.array([], pa.string())
            ids = ids.take(pc.sort_indices(ids))
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        n = len(ids)
        values, present = {}, np.zeros((n, len(names)), dtype=bool)
        for j, name in enumerate(names):
            spec = self.modalities[name]
            t = tables[name]
            position = pc.index_in(t.column("mol_id"), value_set=ids).to_numpy(zero_copy_only=False)
            keep = ~np.isnan(position.astype(np.float64))
            position = position[keep].astype(np.int64)
            matrix = np.zeros((n, spec["dim"]), dtype=spec["dtype"])
            if len(position):
                matrix[position] = embedding_matrix(t.column("embedding").filter(pa.array(keep)), spec["dim"])
            values[name] = matrix
            present[position, j] = True
        smiles = None
        if with_smiles:
            where = pc.index_in(ids, value_set=molecules.column("mol_id")).to_numpy(zero_copy_only=False)
            smiles = molecules.column("smiles").to_numpy(zero_copy_only=False)[where.astype(np.int64)]
        return ModalityBatch(ids.to_numpy(zero_copy_only=False), names, values, present, smiles=smiles)

    def read_dataset(self, modalities: list[str] | None = None, num_partitions: int | None = None):
        """A Ray Dataset joined on mol_id over the chosen modalities (a distributed full
        outer join, so it scales past one machine's memory). Columns: ``mol_id``; one float32
        tensor column per modality (zeros where absent); ``present``, a bool [M] mask in the
        order of ``modalities``. Rows: molecules with at least one chosen modality."""
        import ray

        names = list(modalities or self.modalities)
        self.require_modalities(names)
        if not names:
            raise StoreError(f"{self.uri}: no modalities to read")
        parts = []
        for name in names:
            files = self.modality_files(name)
            if not files:
                raise StoreError(f"{self.uri}: modality {name!r} has no committed rows")
            ds = ray.data.read_parquet(files, filesystem=self.fs).select_columns(["mol_id", "embedding"])
            ds = ds.map_batches(_drop_failed_rows, batch_format="pyarrow", batch_size=None)
            parts.append(ds.rename_columns({"embedding": name}))
        joined = parts[0]
        partitions = num_partitions or max(1, len(self.modality_files(names[0])))
        for part in parts[1:]:
            joined = joined.join(part, join_type="full_outer", num_partitions=partitions, on=("mol_id",))
        dims = {n: int(self.modalities[n]["dim"]) for n in names}
        return joined.map_batches(columns_from_arrow, batch_format="pyarrow", fn_kwargs={"dims": dims})

    # ---- summary -------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        inputs = self.committed(INPUTS_TABLE)
        mol_ids = self.molecules_table(["mol_id"]).column("mol_id")
        modalities = {}
        for name, spec in self.modalities.items():
            t = self.modality_table(name, ["error"])
            failed = t.num_rows - t.column("error").null_count
            modalities[name] = {
                "dim": int(spec["dim"]),
                "dtype": spec["dtype"],
                "count": int(t.num_rows - failed),
                "failed": int(failed),
                "encoder": spec["encoder"],
                "args": spec.get("args", {}),
                "version": spec.get("version"),
            }
        return {
            "store": self.uri,
            "format_version": self.manifest["format_version"],
            "inputs": int(sum(r["inputs"] for r in inputs.values())),
            "stored_rows": int(len(mol_ids)),
            "molecules": int(pc.count_distinct(mol_ids).as_py()) if len(mol_ids) else 0,
            "failed": int(sum(r["failed"] for r in inputs.values())),
            "shards": len(inputs),
            "modalities": modalities,
            "bytes": self.size_bytes(),
            "versions": self.manifest.get("versions", {}),
            "id_scheme": self.manifest.get("id_scheme"),
        }

    def size_bytes(self) -> int:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        return int(sum(i.size or 0 for i in infos if i.type == pafs.FileType.File))

    # ---- maintenance ---------------------------------------------------------------------
    def deduplicate(self, name: str, current: np.ndarray | None = None) -> int:
        """Keep one row per mol_id in a modality (the first in file order), and only molecules
        some committed input shard holds (``current``: their ids, if the caller has read them
        already); returns the duplicate rows removed.

        Two shards of one run can hold the same molecule (it was in two files); neither knew
        of the other while encoding. Both rows hold the same vector, so either may stay. A
        replaced version of an input file can leave vectors of molecules no shard holds now."""
        files = self.modality_files(name)
        if not files:
            return 0
        ids = [pq.read_table(f, filesystem=self.fs, columns=["mol_id"]).column("mol_id") for f in files]
        all_ids = np.concatenate([c.to_numpy(zero_copy_only=False) for c in ids]) if ids else np.array([], object)
        if current is None:
            current = self.molecules_table(["mol_id"]).column("mol_id").to_numpy(zero_copy_only=False)
        orphan = ~np.isin(all_ids, current)
        duplicated = _duplicated(all_ids) & ~orphan
        if not (duplicated | orphan).any():
            return 0
        spec = self.modalities[name]
        start = 0
        for path, column in zip(files, ids):
            drop = (duplicated | orphan)[start : start + len(column)]
            start += len(column)
            if drop.any():
                table = pq.read_table(path, filesystem=self.fs, schema=modality_schema(spec["dtype"], spec["dim"]))
                write_parquet(self.fs, path, table.filter(pa.array(~drop)), dictionary=DICTIONARY_COLUMNS)
        return int(duplicated.sum())


def _drop_failed_rows(batch: pa.Table) -> pa.Table:
    # A row whose encoder failed has a null embedding: the modality is absent there.
    return batch.filter(pc.is_valid(batch.column("embedding")))


def encoder_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What must match for two specs to give the same vectors (not the class path or resources)."""
    return {k: spec.get(k) for k in ("encoder", "args", "dim", "dtype", "version")}


def _duplicated(ids: np.ndarray) -> np.ndarray:
    """[n] bool: True for every occurrence of an id after its first (input order)."""
    seen = np.ones(len(ids), dtype=bool)
    if len(ids):
        seen[np.unique(ids, return_index=True)[1]] = False
    return seen
