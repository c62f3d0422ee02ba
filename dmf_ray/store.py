"""The partially-paired embedding store.

Layout of a store directory (local or any pyarrow filesystem, e.g. s3://bucket/store)::

    manifest.json                       format version, modalities (encoder specs), versions
    molecules/<shard>.parquet           one row per valid input row: mol_id, smiles, source, row, source_id
    failures/<shard>.parquet            one row per input row that did not parse: source, row, input, reason
    modalities/<name>/<shard>--<h>.parquet   mol_id, embedding (fixed_size_list, null if the encoder
                                        failed on that molecule), error; each mol_id at most once
    _commits/inputs/<shard>.json        written last for a shard: its molecules+failures are complete
    _commits/modality=<name>/<shard>.json   the shard's rows of that modality are complete

A shard is a fixed chunk of one input file (see ``inputs``). Every file is written atomically and
a shard's commit marker is written after its files, so readers only trust committed shards and a
rerun of a crashed run deletes uncommitted leftovers and redoes exactly the missing shards.
Each modality covers its own subset of molecules (partially paired); reads join them on mol_id.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmf_ray import __version__
from dmf_ray.files import exists, join, list_files, pafs, read_json, resolve, write_json, write_parquet
from dmf_ray.modalities import ModalityBatch, embedding_matrix
from dmf_ray.molecules import ID_SCHEME

FORMAT = "dmf_ray.store"
FORMAT_VERSION = 1
DEFAULT_SHARD_ROWS = 20_000
INPUTS_TABLE = "inputs"

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


class StoreError(ValueError):
    """A store that is missing, damaged, or written by an incompatible version."""


def modality_table(name: str) -> str:
    return f"modality={name}"


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


class EmbeddingStore:
    def __init__(self, uri: str, manifest: dict[str, Any]):
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.manifest = manifest

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str) -> "EmbeddingStore":
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
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{uri}: store format version {version} is not supported by dmf_ray {__version__} "
                f"(it reads version {FORMAT_VERSION})"
            )
        return cls(uri, manifest)

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

    def molecules_path(self, shard: str) -> str:
        return self._path("molecules", f"{shard}.parquet")

    def failures_path(self, shard: str) -> str:
        return self._path("failures", f"{shard}.parquet")

    def modality_dir(self, name: str) -> str:
        return self._path("modalities", name)

    def commit_dir(self, table: str) -> str:
        return self._path("_commits", table)

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

    # ---- commits -------------------------------------------------------------------------
    def committed(self, table: str) -> dict[str, dict[str, Any]]:
        """Shard key -> commit record for one table (``inputs`` or ``modality=<name>``)."""
        out = {}
        for path in list_files(self.fs, self.commit_dir(table), ".json"):
            out[path.rsplit("/", 1)[-1][: -len(".json")]] = read_json(self.fs, path)
        return out

    def committed_keys(self, table: str) -> set[str]:
        return {p.rsplit("/", 1)[-1][: -len(".json")] for p in list_files(self.fs, self.commit_dir(table), ".json")}

    def commit(self, table: str, shard: str, record: dict[str, Any]) -> None:
        write_json(self.fs, join(self.commit_dir(table), f"{shard}.json"), record)

    def modality_files(self, name: str, committed_only: bool = True) -> list[str]:
        files = list_files(self.fs, self.modality_dir(name), ".parquet")
        if not committed_only:
            return files
        done = self.committed_keys(modality_table(name))
        return [f for f in files if _shard_of(f) in done]

    def committed_files(self, folder: str) -> list[str]:
        """Parquet files of ``molecules`` or ``failures`` whose shard is committed."""
        done = self.committed_keys(INPUTS_TABLE)
        return [f for f in list_files(self.fs, self._path(folder), ".parquet") if _shard_of(f) in done]

    def remove_uncommitted(self) -> int:
        """Delete files a crashed run left without a commit marker; returns how many."""
        removed = 0
        done_inputs = self.committed_keys(INPUTS_TABLE)
        folders = [(self._path("molecules"), done_inputs), (self._path("failures"), done_inputs)]
        folders += [(self.modality_dir(m), self.committed_keys(modality_table(m))) for m in self.modalities]
        for folder, done in folders:
            for path in list_files(self.fs, folder):
                name = path.rsplit("/", 1)[-1]
                if name.startswith(".tmp-") or _shard_of(path) not in done:
                    self.fs.delete_file(path)
                    removed += 1
        return removed

    # ---- reads ---------------------------------------------------------------------------
    def _read(self, files: list[str], columns: list[str], schema: pa.Schema) -> pa.Table:
        if not files:
            return schema.empty_table().select(columns)
        return pq.read_table(files, filesystem=self.fs, columns=columns, schema=schema)

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
        first = pd.Index(table.column("mol_id").to_numpy(zero_copy_only=False)).duplicated(keep="first")
        table = table.filter(pa.array(~first))
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
            keep = ~pd.isna(position)
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
        return joined.map_batches(_paired_batch, batch_format="pyarrow", fn_kwargs={"dims": dims})

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
    def deduplicate(self, name: str) -> int:
        """Keep one row per mol_id in a modality (the first in file order); returns rows removed.

        Two shards of one run can hold the same molecule (it was in two files); neither knew
        of the other while encoding. Both rows hold the same vector, so either may stay."""
        files = self.modality_files(name)
        if not files:
            return 0
        ids = [pq.read_table(f, filesystem=self.fs, columns=["mol_id"]).column("mol_id") for f in files]
        all_ids = pd.Index(np.concatenate([c.to_numpy(zero_copy_only=False) for c in ids]) if ids else [])
        duplicated = all_ids.duplicated(keep="first")
        if not duplicated.any():
            return 0
        spec = self.modalities[name]
        start = 0
        for path, column in zip(files, ids):
            drop = duplicated[start : start + len(column)]
            start += len(column)
            if drop.any():
                table = pq.read_table(path, filesystem=self.fs, schema=modality_schema(spec["dtype"], spec["dim"]))
                write_parquet(self.fs, path, table.filter(pa.array(~drop)), dictionary=DICTIONARY_COLUMNS)
        return int(duplicated.sum())


def _drop_failed_rows(batch: pa.Table) -> pa.Table:
    # A row whose encoder failed has a null embedding: the modality is absent there.
    return batch.filter(pc.is_valid(batch.column("embedding")))


def _paired_batch(batch: pa.Table, dims: dict[str, int]) -> dict[str, np.ndarray]:
    return ModalityBatch.from_arrow(batch, dims).to_columns()


def encoder_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What must match for two specs to give the same vectors (not the class path or resources)."""
    return {k: spec.get(k) for k in ("encoder", "args", "dim", "dtype", "version")}


def _shard_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.split("--", 1)[0].removesuffix(".parquet")
