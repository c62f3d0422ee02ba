"""Input discovery and deterministic chunked reading of SMILES files.

Formats: .smi/.txt (SMILES as the first whitespace-separated token, an optional id as the
second), .csv/.tsv (named SMILES and id columns), .parquet; any of them gzipped (.gz), on any
filesystem pyarrow supports. A folder means every supported file directly inside it.

Each file is cut into chunks of a fixed number of rows; a chunk's key is derived from the
file's path and size plus the chunk index, so rerunning the same command produces the same
chunks, which is what makes store writes resumable and idempotent. ``row`` is the 1-based line
number for text files and the 1-based record number (header excluded) for CSV/TSV/Parquet.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dmf_ray.files import join_uri, redact, resolve

TEXT_FORMATS = {".smi": "smi", ".txt": "smi", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
SMILES_COLUMN_GUESSES = ("smiles", "SMILES", "Smiles", "canonical_smiles", "smi", "SMI")
HEADER_WORDS = {"smiles", "smi", "canonical_smiles", "structure", "molecule"}


class InputError(ValueError):
    """A problem with an input file, named in the message."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # as the user named it (folders expanded)
    size: int
    format: str  # smi | csv | tsv | parquet
    smiles_column: str | None = None
    id_column: str | None = None

    @property
    def key(self) -> str:
        # Path + size identify the content well enough to resume; a changed file gets new chunks.
        return hashlib.blake2b(f"{self.uri}|{self.size}".encode(), digest_size=6).hexdigest()

    def chunk_key(self, index: int) -> str:
        return f"{self.key}-{index:06d}"


@dataclass
class RawChunk:
    shard: str
    source: str
    rows: list[int]
    smiles: list[str | None]
    ids: list[str | None]


def _format_of(path: str) -> str:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in TEXT_FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise InputError(f"{path}: unsupported file type (expected one of {', '.join(TEXT_FORMATS)}, optionally .gz)")


def _columns_of(fs: pafs.FileSystem, path: str, fmt: str) -> list[str]:
    if fmt == "parquet":
        return pq.ParquetFile(fs.open_input_file(path)).schema_arrow.names
    with fs.open_input_stream(path, compression="detect") as stream:
        reader = pacsv.open_csv(stream, parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","))
        return reader.schema.names


def _pick_column(uri: str, columns: list[str], wanted: str | None, role: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{uri}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    if role == "id":
        return None
    for guess in SMILES_COLUMN_GUESSES:
        if guess in columns:
            return guess
    raise InputError(f"{uri}: no SMILES column found; name it with --smiles-column (columns: {', '.join(columns)})")


def discover_inputs(uris: list[str], smiles_column: str | None = None, id_column: str | None = None) -> list[InputFile]:
    """Expand folders, check every file exists and has the columns asked for."""
    if not uris:
        raise InputError("no input files given")
    files: list[InputFile] = []
    for uri in uris:
        fs, path = resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri}: no such file or folder")
        if info.type == pafs.FileType.Directory:
            found = [i for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
            supported = [i for i in found if _is_supported(i.path)]
            if not supported:
                raise InputError(f"{uri}: folder holds no supported input files")
            entries = [(join_uri(uri, i.base_name), i) for i in sorted(supported, key=lambda i: i.path)]
        else:
            entries = [(uri, info)]
        for file_uri, file_info in entries:
            fmt = _format_of(file_info.path)
            smiles_col = id_col = None
            if fmt != "smi":
                columns = _columns_of(fs, file_info.path, fmt)
                smiles_col = _pick_column(file_uri, columns, smiles_column, "smiles")
                id_col = _pick_column(file_uri, columns, id_column, "id")
            files.append(InputFile(file_uri, int(file_info.size or 0), fmt, smiles_col, id_col))
    return files


def _is_supported(path: str) -> bool:
    try:
        _format_of(path)
        return True
    except InputError:
        return False


def _smi_records(fs: pafs.FileSystem, path: str) -> Iterator[tuple[int, str | None, str | None]]:
    with fs.open_input_stream(path, compression="detect") as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
        for line_number, line in enumerate(text, start=1):
            tokens = line.split()
            if not tokens:
                continue  # blank lines are not rows
            if line_number == 1 and tokens[0].lower() in HEADER_WORDS:
                continue
            yield line_number, tokens[0], (tokens[1] if len(tokens) > 1 else None)


def _table_records(fs: pafs.FileSystem, file: InputFile, path: str) -> Iterator[tuple[int, str | None, str | None]]:
    columns = [c for c in (file.smiles_column, file.id_column) if c]
    if file.format == "parquet":
        batches = pq.ParquetFile(fs.open_input_file(path)).iter_batches(columns=columns, batch_size=65536)
        stream = None
    else:
        stream = fs.open_input_stream(path, compression="detect")
        batches = pacsv.open_csv(
            stream,
            parse_options=pacsv.ParseOptions(delimiter="\t" if file.format == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types={c: "string" for c in columns}
            ),
        )
    row = 0
    try:
        for batch in batches:
            smiles = batch.column(file.smiles_column).cast("string").to_pylist()
            ids = batch.column(file.id_column).cast("string").to_pylist() if file.id_column else [None] * len(smiles)
            for s, i in zip(smiles, ids):
                row += 1
                yield row, s, i
    finally:
        if stream is not None:
            stream.close()


def read_chunks(file: InputFile, chunk_rows: int, skip: set[str] = frozenset()) -> Iterator[RawChunk]:
    """The file's rows cut into chunks of ``chunk_rows``; chunks whose key is in ``skip``
    are read past but not returned (their work is already committed)."""
    fs, path = resolve(file.uri)
    records = _smi_records(fs, path) if file.format == "smi" else _table_records(fs, file, path)
    index = 0
    source = redact(file.uri)  # recorded in the store and in outputs
    chunk = RawChunk(file.chunk_key(0), source, [], [], [])
    for row, smiles, source_id in records:
        chunk.rows.append(row)
        chunk.smiles.append(smiles)
        chunk.ids.append(source_id)
        if len(chunk.rows) == chunk_rows:
            if chunk.shard not in skip:
                yield chunk
            index += 1
            chunk = RawChunk(file.chunk_key(index), source, [], [], [])
    if chunk.rows and chunk.shard not in skip:
        yield chunk


def read_rows_stage(batch: dict, chunk_rows: int) -> Iterator[pa.Table]:
    """Ray Data stage: InputFile payloads (column ``file``) -> tables of one row per input line
    (source, row, smiles, source_id), ``chunk_rows`` rows at a time."""
    for payload in batch["file"]:
        for chunk in read_chunks(InputFile(**payload), chunk_rows):
            yield pa.table({"source": pa.array([chunk.source] * len(chunk.rows), pa.string()),
                            "row": pa.array(chunk.rows, pa.int64()),
                            "smiles": pa.array(chunk.smiles, pa.string()),
                            "source_id": pa.array(chunk.ids, pa.string())})


def head_smiles(uri: str, n: int, smiles_column: str | None = None) -> list[str]:
    """The first ``n`` non-empty SMILES of one input file (for benchmarks and examples)."""
    (file,) = discover_inputs([uri], smiles_column)
    out: list[str] = []
    for chunk in read_chunks(file, chunk_rows=max(1, n)):
        out.extend(s for s in chunk.smiles if s)
        if len(out) >= n:
            break
    return out[:n]
