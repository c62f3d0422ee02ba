"""Bytes of an input file: gzip that tolerates trailing bytes and names truncation, the text
encoding from a byte-order mark, and the format of a file from its first bytes.

Why not pyarrow's ``compression="detect"``: on bytes after the end of the gzip data (which
``zcat`` reads with a warning) it fails with "zlib inflate failed: incorrect header check", and
on a truncated file with "Truncated compressed stream", neither naming the file.
"""

from __future__ import annotations

import contextlib
import io
import zlib
from collections.abc import Iterator

import pyarrow.fs as pafs
from rdkit import Chem, rdBase

GZIP_MAGIC = b"\x1f\x8b"
READ_BYTES = 1 << 20


class InputError(ValueError):
    """A problem with an input file, named in the message (one line)."""


class _GzipRaw(io.RawIOBase):
    """Concatenated gzip members, decompressed; stops at the first bytes that are not a gzip
    member (``note`` says how many were ignored when the stream is read to the end)."""

    def __init__(self, raw, uri: str, check_end: bool):
        self.raw, self.uri, self.check_end = raw, uri, check_end
        self.inflate = zlib.decompressobj(wbits=31)
        self.pending = b""
        self.text_bytes = 0
        self.done = False
        self.note: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending and not self.done:
            self.pending = self._next_block()
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        self.text_bytes += n
        return n

    def _next_block(self) -> bytes:
        if self.inflate.eof:  # a member ended: another member, trailing bytes, or the end
            data = self.inflate.unused_data
            while len(data) < 2 and (more := self.raw.read(READ_BYTES)):
                data += more
            if data[:2] != GZIP_MAGIC:
                if data:
                    self._ignore_trailing(data)
                self.done = True
                return b""
            self.inflate = zlib.decompressobj(wbits=31)
        else:
            data = self.inflate.unconsumed_tail or self.raw.read(READ_BYTES)
            if not data:
                self.done = True
                if self.check_end:
                    raise InputError(f"{self.uri}: truncated gzip file: its compressed data ends early "
                                     f"(after {self.text_bytes:,} bytes of text); it cannot be read whole")
                return b""
        try:
            return self.inflate.decompress(data, READ_BYTES)
        except zlib.error as exc:
            raise InputError(f"{self.uri}: corrupt gzip data after {self.text_bytes:,} bytes of text ({exc})") from None

    def _ignore_trailing(self, rest: bytes) -> None:
        self.done = True
        ignored = len(rest)
        while more := self.raw.read(READ_BYTES):
            ignored += len(more)
        self.note = f"{self.uri}: ignored {ignored:,} byte(s) after the end of the gzip data (as zcat does)"


class _Buffered(io.BufferedReader):
    @property
    def note(self) -> str | None:
        return getattr(self.raw, "note", None)


@contextlib.contextmanager
def open_bytes(fs: pafs.FileSystem, path: str, uri: str, gz: bool, check_end: bool = True) -> Iterator[io.BufferedReader]:
    """The file's (decompressed) bytes as a buffered binary stream."""
    with fs.open_input_stream(path, compression=None) as raw:
        yield _Buffered(_GzipRaw(raw, uri, check_end) if gz else raw, READ_BYTES)


def text_encoding(head: bytes) -> str:
    """The text encoding a byte-order mark names (UTF-8 without one)."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    return "utf-8-sig" if head[:3] == b"\xef\xbb\xbf" else "utf-8"


def arrow_encoding(encoding: str) -> str:
    # pyarrow's CSV reader drops a UTF-8 byte-order mark itself; other encodings it transcodes.
    return "utf8" if encoding.startswith("utf-8") else encoding


def _looks_like_smiles(token: str) -> bool:
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(token) is not None


def sniff_format(uri: str, head: bytes, smiles_columns: tuple[str, ...], strict: bool = True) -> str | None:
    """The format of a file from its first (decompressed) bytes: parquet, a csv/tsv header with
    a SMILES column, or smi (most first tokens of the first lines parse as SMILES).

    Raises InputError (``strict``) when none fits; else returns None for "not csv/tsv"."""
    if head[:4] == b"PAR1":
        return "parquet"
    text = head.decode(text_encoding(head), errors="replace")
    lines = [ln for ln in text.splitlines()[:21] if ln.strip()]
    if lines:
        for sep, fmt in (("\t", "tsv"), (",", "csv")):
            fields = [f.strip().strip('"') for f in lines[0].split(sep)]
            if len(fields) > 1 and any(f in smiles_columns for f in fields):
                return fmt
    if not strict:
        return None
    tokens = [ln.split()[0] for ln in lines[:20]]
    if tokens and tokens[0].lower() in {c.lower() for c in smiles_columns}:
        tokens = tokens[1:]  # a header line
    parsed = sum(_looks_like_smiles(t) for t in tokens)
    if tokens and parsed * 2 >= len(tokens):
        return "smi"
    raise InputError(f"{uri}: unknown file type (not Parquet, no CSV/TSV header naming a SMILES column, and its "
                     f"lines do not start with SMILES); name it with --format smi|csv|tsv|parquet")
