"""Input discovery and deterministic chunked reading of SMILES files.

Formats: smi (SMILES as the first whitespace-separated token, an optional id as the second),
csv/tsv (named SMILES and id columns), parquet; any of them gzipped, on any filesystem pyarrow
supports. The format comes from the extension (.smi .txt .ism .can .csv .tsv .parquet .pq, then
.gz), else from ``format=``, else from the content (Parquet magic, a CSV/TSV header naming a
SMILES column, or lines whose first token parses as SMILES). A folder means every supported
file directly inside it.

Input rules (README, "Input files"):

- Text may start with a byte-order mark (UTF-8 or UTF-16); it is not part of the first row.
- A CSV/TSV row with too many or too few fields is not fatal: it is recorded as a failed row
  with its line number and the problem, and the rest of the file goes in.
- gzip: bytes after the end of the compressed data are ignored with a note (as ``zcat`` does);
  a truncated gzip file cannot be read whole and is refused with one line, before anything of
  it is stored (``check_readable`` runs before the pipeline).
- A Parquet SMILES column must hold text; an id column anything castable to text.

Each file is cut into chunks of a fixed number of rows; a chunk's key is the file's key plus the
chunk index. The file's key follows its path and content: SHA-256 of the whole file up to 256
MiB, above that size + mtime + the first and last MiB. A changed file gets new keys, and the
store replaces the old file's shards. ``row`` is the 1-based line number for smi files and the
1-based record number (header excluded) for CSV/TSV/Parquet.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dmf_ray.files import join_uri, redact, resolve
from dmf_ray.input_streams import GZIP_MAGIC, InputError, arrow_encoding, open_bytes, sniff_format, text_encoding

EXTENSIONS = {".smi": "smi", ".txt": "smi", ".ism": "smi", ".can": "smi", ".csv": "csv", ".tsv": "tsv",
              ".parquet": "parquet", ".pq": "parquet"}
FORMATS = ("smi", "csv", "tsv", "parquet")
SMILES_COLUMN_GUESSES = ("smiles", "SMILES", "Smiles", "canonical_smiles", "smi", "SMI")
HEADER_WORDS = {"smiles", "smi", "canonical_smiles", "structure", "molecule"}
# Up to this size the file key hashes every byte (~0.2 s at 256 MiB, README); above it, size +
# mtime + the first and last MiB, so a rerun of a multi-GB library starts at once.
FULL_HASH_MAX_BYTES = 256 << 20
EDGE_BYTES = 1 << 20

__all__ = ["InputError", "InputFile", "RawChunk", "discover_inputs", "read_chunks", "check_readable"]


@dataclass(frozen=True)
class InputFile:
    uri: str  # as the user named it (folders expanded)
    size: int
    format: str  # smi | csv | tsv | parquet
    smiles_column: str | None = None
    id_column: str | None = None
    fingerprint: str = ""  # of the content, see the module docstring
    encoding: str = "utf-8"
    gzip: bool = False

    @property
    def key(self) -> str:
        return hashlib.blake2b(f"{redact(self.uri)}|{self.fingerprint}".encode(), digest_size=6).hexdigest()

    @property
    def source(self) -> str:
        return redact(self.uri)

    def chunk_key(self, index: int) -> str:
        return f"{self.key}-{index:06d}"


@dataclass
class RawChunk:
    shard: str
    source: str
    rows: list[int]
    smiles: list[str | None]
    ids: list[str | None]
    problems: list[str | None] = field(default_factory=list)  # a malformed row's problem, else None
    last: bool = False  # the file's last chunk (an empty file has one, empty)


def _format_of_name(path: str) -> str | None:
    name = path.lower().removesuffix(".gz")
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def _fingerprint(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> str:
    size = int(info.size or 0)
    digest = hashlib.sha256()  # 3x blake2b's speed here (SHA extensions): 1.3 GB/s
    with fs.open_input_file(path) as f:
        if size <= FULL_HASH_MAX_BYTES:
            while block := f.read(8 << 20):
                digest.update(block)
            return f"full:{digest.hexdigest()}"
        digest.update(f.read_at(EDGE_BYTES, 0))
        digest.update(f.read_at(EDGE_BYTES, size - EDGE_BYTES))
    return f"edges:{size}:{info.mtime_ns}:{digest.hexdigest()}"


def _columns_of(fs: pafs.FileSystem, uri: str, path: str, fmt: str, encoding: str, gz: bool) -> pa.Schema:
    try:
        if fmt == "parquet":
            return pq.ParquetFile(fs.open_input_file(path)).schema_arrow
        with open_bytes(fs, path, uri, gz) as stream:
            # Malformed rows are skipped here: the read records each of them.
            reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(encoding=arrow_encoding(encoding), use_threads=False),
                                    parse_options=_csv_parse_options(fmt, lambda row: "skip"))
            return reader.schema
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{uri}: cannot be read as {fmt} ({str(exc).splitlines()[0]})") from None


def _pick_column(uri: str, schema: pa.Schema, wanted: str | None, role: str) -> str | None:
    columns = schema.names
    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{uri}: no column {wanted!r} (columns: {', '.join(columns)})")
        chosen = wanted
    elif role == "id":
        return None
    else:
        chosen = next((g for g in SMILES_COLUMN_GUESSES if g in columns), None)
        if chosen is None:
            raise InputError(f"{uri}: no SMILES column found; name it with --smiles-column (columns: {', '.join(columns)})")
    if columns.count(chosen) > 1:  # which one is meant is anyone's guess (and pyarrow refuses to pick)
        raise InputError(f"{uri}: the header names column {chosen!r} {columns.count(chosen)} times; rename all but one")
    kind = schema.field(chosen).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if role == "smiles" and not text:
        raise InputError(f"{uri}: column {chosen!r} holds {kind} values, not SMILES text")
    if role == "id" and not (text or pa.types.is_integer(kind) or pa.types.is_binary(kind)):
        raise InputError(f"{uri}: id column {chosen!r} holds {kind} values; ids must be text or integers")
    return chosen


def _describe(fs: pafs.FileSystem, uri: str, info: pafs.FileInfo, fmt: str | None,
              smiles_column: str | None, id_column: str | None) -> InputFile:
    with fs.open_input_file(info.path) as f:
        head = f.read(min(int(info.size or 0), 1 << 16))
    gz = head[:2] == GZIP_MAGIC
    if gz:
        with open_bytes(fs, info.path, uri, True, check_end=False) as stream:
            head = stream.read(1 << 16)
    fmt = fmt or _format_of_name(info.path) or sniff_format(uri, head, SMILES_COLUMN_GUESSES)
    if fmt not in FORMATS:
        raise InputError(f"{uri}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    encoding = text_encoding(head)
    if fmt == "smi" and sniff_format(uri, head, SMILES_COLUMN_GUESSES, strict=False) == "tsv":
        fmt = "tsv"  # a tab-separated table with a SMILES column named in its header (ChEMBL's .txt)
    smiles_col = id_col = None
    if fmt != "smi":
        schema = _columns_of(fs, uri, info.path, fmt, encoding, gz)
        smiles_col = _pick_column(uri, schema, smiles_column, "smiles")
        id_col = _pick_column(uri, schema, id_column, "id")
    return InputFile(uri, int(info.size or 0), fmt, smiles_col, id_col, _fingerprint(fs, info.path, info), encoding, gz)


def discover_inputs(uris: list[str], smiles_column: str | None = None, id_column: str | None = None,
                    format: str | None = None) -> list[InputFile]:
    """Expand folders, check every file exists, has a known format and the columns asked for.

    ``format``: smi | csv | tsv | parquet for every file named (not for folder contents).
    Raises InputError, one line naming the file."""
    if not uris:
        raise InputError("no input files given")
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown --format {format!r} (expected one of {', '.join(FORMATS)})")
    files: list[InputFile] = []
    for uri in uris:
        fs, path = resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri}: no such file or folder")
        if info.type == pafs.FileType.Directory:
            found = [i for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
            supported = [i for i in found if _format_of_name(i.path)]
            if not supported:
                raise InputError(f"{uri}: folder holds no supported input files")
            entries = [(join_uri(uri, i.base_name), i, None) for i in sorted(supported, key=lambda i: i.path)]
        else:
            entries = [(uri, info, format)]
        for file_uri, file_info, fmt in entries:
            described = _describe(fs, file_uri, file_info, fmt, smiles_column, id_column)
            if described.key not in {f.key for f in files}:  # the same file named twice is read once
                files.append(described)
    return files


def check_readable(file: InputFile) -> str | None:
    """Read a compressed file to its end before anything of it is stored: raises InputError
    (one line) for a truncated or corrupt file; returns a note for ignored trailing bytes."""
    if not file.gzip:
        return None
    fs, path = resolve(file.uri)
    with open_bytes(fs, path, file.uri, True) as stream:
        while stream.read(8 << 20):
            pass
        return stream.note


def _csv_parse_options(fmt: str, handler=None) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", invalid_row_handler=handler)


def _smi_records(fs: pafs.FileSystem, file: InputFile, path: str) -> Iterator[tuple]:
    with open_bytes(fs, path, file.uri, file.gzip) as stream:
        text = io.TextIOWrapper(stream, encoding=file.encoding, errors="replace")
        for line_number, line in enumerate(text, start=1):
            tokens = line.split()
            if not tokens:
                continue  # blank lines are not rows
            if line_number == 1 and tokens[0].lower() in HEADER_WORDS:
                continue
            smiles, rest = _cxsmiles_split(tokens)
            yield line_number, smiles, (rest[0] if rest else None), None


def _cxsmiles_split(tokens: list[str]) -> tuple[str, list[str]]:
    """A .smi line's SMILES and the tokens after it. A CXSMILES extension (``C[C@H](O)CC
    |&1:1| name``: a space, then a block between bars) belongs to the SMILES, so the id is the
    token after it, not the block; RDKit reads the extension with the SMILES."""
    if len(tokens) > 1 and tokens[1].startswith("|"):
        end = next((i for i in range(1, len(tokens)) if tokens[i].endswith("|") and (i > 1 or len(tokens[1]) > 1)), None)
        if end is not None:
            return " ".join(tokens[: end + 1]), tokens[end + 1 :]
    return tokens[0], tokens[1:]


def _table_batches(fs: pafs.FileSystem, file: InputFile, path: str, bad: list):
    columns = [c for c in (file.smiles_column, file.id_column) if c]
    if file.format == "parquet":
        yield from pq.ParquetFile(fs.open_input_file(path)).iter_batches(columns=columns, batch_size=65536)
        return

    def handler(row) -> str:
        # Serial parsing (use_threads=False) is what gives row.number, the file's line number.
        bad.append((row.number, row.text, f"malformed {file.format.upper()} row at line {row.number}: "
                                          f"expected {row.expected_columns} fields, got {row.actual_columns}"))
        return "skip"

    with open_bytes(fs, path, file.uri, file.gzip) as stream:
        yield from pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(encoding=arrow_encoding(file.encoding), use_threads=False),
            parse_options=_csv_parse_options(file.format, handler),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types={c: "string" for c in columns}),
        )


def _table_records(fs: pafs.FileSystem, file: InputFile, path: str) -> Iterator[tuple]:
    """(record number, SMILES, id, problem): a malformed row keeps its place in the numbering
    (record = line - 1, exact unless a quoted field spans lines) and carries its problem."""
    bad: list[tuple[int, str, str]] = []
    row = 0

    def malformed_up_to(limit: float):
        nonlocal row
        while bad and (bad[0][0] or 0) - 1 <= limit:
            _, text, problem = bad.pop(0)
            row += 1
            yield row, text, None, problem

    for batch in _table_batches(fs, file, path, bad):
        smiles = batch.column(file.smiles_column).cast("string").to_pylist()
        ids = batch.column(file.id_column).cast("string").to_pylist() if file.id_column else [None] * len(smiles)
        for s, i in zip(smiles, ids):
            yield from malformed_up_to(row + 1)
            row += 1
            yield row, s, i, None
    yield from malformed_up_to(float("inf"))


def _records(file: InputFile) -> Iterator[tuple]:
    fs, path = resolve(file.uri)
    try:
        yield from (_smi_records(fs, file, path) if file.format == "smi" else _table_records(fs, file, path))
    except InputError:
        raise
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        raise InputError(f"{file.uri}: cannot be read ({str(exc).splitlines()[0]})") from None


def read_chunks(file: InputFile, chunk_rows: int, skip: set[str] = frozenset()) -> Iterator[RawChunk]:
    """The file's rows cut into chunks of ``chunk_rows``; the last one says so (an empty file
    gives one empty last chunk). Chunks whose key is in ``skip`` are read past, not returned."""
    index = 0
    chunk = RawChunk(file.chunk_key(0), file.source, [], [], [], [])
    for row, smiles, source_id, problem in _records(file):
        if len(chunk.rows) == chunk_rows:  # full, and not the last: a row follows
            if chunk.shard not in skip:
                yield chunk
            index += 1
            chunk = RawChunk(file.chunk_key(index), file.source, [], [], [], [])
        chunk.rows.append(row)
        chunk.smiles.append(smiles)
        chunk.ids.append(source_id)
        chunk.problems.append(problem)
    chunk.last = True
    if chunk.shard not in skip:
        yield chunk


def read_rows_stage(batch: dict, chunk_rows: int) -> Iterator[pa.Table]:
    """Ray Data stage: InputFile payloads (column ``file``) -> tables of one row per input line
    (source, row, smiles, source_id, problem), ``chunk_rows`` rows at a time. A malformed CSV
    row comes as its raw text in ``smiles`` with ``problem`` saying why (file line, fields
    expected and found); ``problem`` is null for every other row."""
    for payload in batch["file"]:
        for chunk in read_chunks(InputFile(**payload), chunk_rows):
            yield pa.table({"source": pa.array([chunk.source] * len(chunk.rows), pa.string()),
                            "row": pa.array(chunk.rows, pa.int64()),
                            "smiles": pa.array(chunk.smiles, pa.string()),
                            "source_id": pa.array(chunk.ids, pa.string()),
                            "problem": pa.array(chunk.problems, pa.string())})


def head_smiles(uri: str, n: int, smiles_column: str | None = None) -> list[str]:
    """The first ``n`` non-empty SMILES of one input file (for benchmarks and examples)."""
    (file,) = discover_inputs([uri], smiles_column)
    out: list[str] = []
    for chunk in read_chunks(file, chunk_rows=max(1, n)):
        out.extend(s for s, p in zip(chunk.smiles, chunk.problems) if s and p is None)
        if len(out) >= n:
            break
    return out[:n]
