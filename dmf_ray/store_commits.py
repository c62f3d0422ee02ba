"""A store's commit markers and its write lease: which shards are complete, and which run may
still commit.

Every featurize run takes the store's lease (``_runs/lease.json``, a fresh run id) before it
writes. A commit marker is named by shard and run (``_commits/<table>/<shard>~<run>.json``) and
so are the data files it vouches for. A marker counts when its run holds the lease, or when the
run's fence record (``_runs/<run>.json``, written by the next run as it takes the lease) lists
it: markers a dead run's actors write after that are never counted, and their files are
removed as uncommitted. Writers also check the lease before each commit and stop with
``LeaseLostError`` once another run holds it, which ends a dead run's stragglers early.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from dmf_ray.files import exists, join, list_files, read_json, write_json

RUNS_DIR = "_runs"
COMMITS_DIR = "_commits"
SEP = "~"  # between shard and run in marker and data file names


class LeaseLostError(RuntimeError):
    """This run no longer holds the store's write lease: another run took over."""


def split_name(name: str) -> tuple[str, str]:
    """(shard, run) of a marker or data file name: ``<shard>~<run>[--<digest>].<ext>``."""
    stem = name.rsplit("/", 1)[-1].split("--", 1)[0].rsplit(".", 1)[0]
    shard, _, run = stem.partition(SEP)
    return shard, run


class CommitLog:
    def __init__(self, fs: pafs.FileSystem, root: str, run: str | None = None):
        self.fs, self.root, self.run = fs, root, run
        self._fences: dict[str, set[str]] = {}  # run -> its counted marker names (never change)

    # ---- the lease -----------------------------------------------------------------------
    def holder(self) -> str | None:
        path = join(self.root, RUNS_DIR, "lease.json")
        return read_json(self.fs, path)["run"] if exists(self.fs, path) else None

    def begin_run(self, tables: list[str]) -> str:
        """Fence the run holding the lease (record the markers it wrote so far: only those
        count), then take the lease for a new run; returns its id."""
        previous = self.holder()
        if previous and not exists(self.fs, self._fence_path(previous)):
            names = [f"{t}/{p.rsplit('/', 1)[-1]}" for t in tables for p in self._marker_paths(t)
                     if split_name(p)[1] == previous]
            write_json(self.fs, self._fence_path(previous), {"counted": sorted(names)})
        self.run = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        write_json(self.fs, join(self.root, RUNS_DIR, "lease.json"),
                   {"run": self.run, "host": platform.node(), "pid": os.getpid(), "started": time.time()})
        return self.run

    def check_lease(self) -> None:
        holder = self.holder()
        if self.run is None or holder != self.run:
            raise LeaseLostError(f"another featurize run ({holder}) took over this store; run {self.run} stops")

    def _fence_path(self, run: str) -> str:
        return join(self.root, RUNS_DIR, f"{run}.json")

    def _fence(self, run: str) -> set[str]:
        if run not in self._fences:
            path = self._fence_path(run)
            if not exists(self.fs, path):
                return set()  # not fenced (yet): counts only while it holds the lease
            self._fences[run] = set(read_json(self.fs, path)["counted"])
        return self._fences[run]

    # ---- markers -------------------------------------------------------------------------
    def _dir(self, table: str) -> str:
        return join(self.root, COMMITS_DIR, table)

    def _marker_paths(self, table: str) -> list[str]:
        return list_files(self.fs, self._dir(table), ".json")

    def counted(self, table: str) -> dict[str, tuple[str, str]]:
        """shard -> (run, marker path) of the markers that count, for one table."""
        holder = self.holder()
        out: dict[str, tuple[str, str]] = {}
        for path in self._marker_paths(table):
            shard, run = split_name(path)
            if run == holder or f"{table}/{path.rsplit('/', 1)[-1]}" in self._fence(run):
                out.setdefault(shard, (run, path))
        return out

    def records(self, table: str) -> dict[str, dict[str, Any]]:
        return {shard: read_json(self.fs, path) for shard, (_, path) in self.counted(table).items()}

    def commit(self, table: str, shard: str, record: dict[str, Any]) -> None:
        """Write the marker (after the data files it vouches for), if this run holds the lease."""
        self.check_lease()
        write_json(self.fs, join(self._dir(table), f"{shard}{SEP}{self.run}.json"), record)

    def uncounted_markers(self, table: str) -> list[str]:
        counted = {path for _, path in self.counted(table).values()}
        return [p for p in self._marker_paths(table) if p not in counted]

    def retract(self, table: str, shard: str) -> None:
        """Delete a shard's counted marker (its data files then count as uncommitted)."""
        entry = self.counted(table).get(shard)
        if entry is not None:
            self.fs.delete_file(entry[1])
