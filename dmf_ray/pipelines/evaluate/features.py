"""Encoding task molecules for evaluation: every distinct SMILES parsed and encoded once with
every modality of the model (no Ray needed), through the one batch driver
(:func:`dmf_ray.encoders.batch.encode_smiles`) into the one batch type
(:class:`dmf_ray.modalities.ModalityBatch`).

Where the work runs, and why:

- inline encoders (cheap RDKit fingerprints, ``Encoder.runs_inline()``) go to a process pool
  forked from this process when there are many molecules (``workers``); fork, not spawn: spawn
  would re-run the caller's script in every worker and re-import RDKit (~1 s each), and these
  children never run torch or Ray, so the parent's threads being copied mid-state is harmless.
- every other encoder (models: torch) runs here, in this process, a chunk at a time: a pool
  forked after this process used torch (the fusion model is loaded before the molecules are
  encoded) deadlocks on the children's first OpenMP region (issue 13: ``dmf evaluate`` hung
  forever from ~3,000 molecules), and torch spreads one batch over the cores by itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmf_ray.modalities import ModalityBatch

_ENCODE_CHUNK = 500
_POOL_MIN_MOLECULES = 3000  # below this a process pool costs more to start than it saves

# spec (as JSON) -> encoder, built once per process: provenance reads an encoder's trained_on,
# the pool workers inherit the built encoders by fork. Emptied when featurize_smiles is done
# (the last use), so a notebook or long-lived process does not keep ChemNet/Chemprop loaded.
_ENCODERS: dict[str, Any] = {}


def release_encoders() -> None:
    """Forget every encoder :func:`encoders_for` built (their models are freed with them)."""
    _ENCODERS.clear()


def encoders_for(specs: Mapping[str, dict]) -> dict:
    """The encoders of ``specs`` (modality -> spec), each built once per process and kept."""
    from dmf_ray.encoders import encoder_from_spec

    out = {}
    for m, spec in specs.items():
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in _ENCODERS:
            _ENCODERS[key] = encoder_from_spec(dict(spec))
        out[m] = _ENCODERS[key]
    return out


def _forkable(spec: Mapping[str, Any]) -> bool:
    """Whether the encoder of ``spec`` may run in a forked child: only inline (RDKit-only) ones."""
    return bool(encoders_for({"m": spec})["m"].runs_inline())


def encode_chunk(smiles: Sequence[str], specs: Mapping[str, dict]) -> tuple[ModalityBatch, list[str | None]]:
    """Parse and encode one chunk of SMILES with the encoders of ``specs`` (runs in a pool worker
    or here). Returns one batch row per input (mol_id None where it did not parse; then nothing
    is present) and the parse error per input (None where it parsed)."""
    from rdkit import rdBase

    from dmf_ray.encoders.batch import encode_smiles

    encoders = encoders_for(specs)
    # RDKit's warnings ("not removing hydrogen atom without neighbors", thousands on HIV) are
    # silenced; a parse failure still carries RDKit's reason, and is counted in the report.
    with rdBase.BlockLogs():
        out = encode_smiles(list(smiles), encoders)
    names = list(encoders)
    full = ModalityBatch.empty([None] * len(smiles), names, [encoders[m].dim for m in names],
                               [encoders[m].dtype for m in names])
    for m in names:
        full.values[m][out.rows] = out.batch.values[m]
    full.mol_ids[out.rows] = out.batch.mol_ids
    full.present[out.rows] = out.batch.present
    for k, i in enumerate(out.rows):
        full.errors[i] = list(out.batch.errors[k])
    parse_errors: list[str | None] = [None] * len(smiles)
    for i, exc in out.parse_errors.items():
        parse_errors[i] = exc.reason
    return full, parse_errors


def _encode_chunk_args(args: tuple) -> tuple[ModalityBatch, list[str | None]]:
    return encode_chunk(*args)


def join_modalities(a: ModalityBatch, b: ModalityBatch, names: Sequence[str]) -> ModalityBatch:
    """The modalities of ``a`` and ``b`` (the same rows) side by side, in the order ``names``."""
    both = {**a.values, **b.values}
    present = np.concatenate([a.present, b.present], axis=1)
    order = [(a.names + b.names).index(m) for m in names]
    errors = [ea + eb for ea, eb in zip(a.errors or [[]] * len(a), b.errors or [[]] * len(b))]
    return ModalityBatch(a.mol_ids, list(names), {m: both[m] for m in names}, present[:, order], errors)


@dataclass
class FeaturizedSmiles:
    """Every distinct SMILES string of a run, encoded once: ``batch`` holds one row per string
    (``index[s]`` is the row of string ``s`` as given; ``batch.mol_ids[row]`` is None where it
    did not parse, ``parse_errors[row]`` says why, and then no modality is present)."""

    batch: ModalityBatch
    index: dict[str, int]
    parse_errors: list[str | None]
    encoder_errors: dict[str, int]
    workers: int
    seconds: float

    def rows(self, smiles: Sequence[str]) -> np.ndarray:
        """Row of each SMILES string (int64 ``[len(smiles)]``); KeyError for one never encoded."""
        return np.fromiter((self.index[s] for s in smiles), dtype=np.int64, count=len(smiles))


def featurize_smiles(
    smiles: Sequence[str],
    specs: Mapping[str, dict],
    workers: int | None = None,
    chunk_size: int = _ENCODE_CHUNK,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> FeaturizedSmiles:
    """Encode each distinct SMILES string once per modality with the encoders of ``specs``.

    ``workers``: processes for the inline encoders (None: one per core for >= 3,000 molecules,
    else in-process); other encoders always run in this process (module docstring). Invalid
    SMILES and encoder failures are kept as absent entries, never dropped.

    ``progress(done, total)``, called in this process after each chunk: distinct SMILES encoded
    with every modality (an invalid one counts once it is found invalid) of all distinct SMILES.
    With both a process pool and in-process encoders, ``done`` moves with the in-process pass,
    the second one (no molecule has every modality before it).
    """
    started = time.perf_counter()
    distinct = list(dict.fromkeys(s if isinstance(s, str) else "" for s in smiles))
    specs = {m: dict(s) for m, s in specs.items()}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers is None:
        workers = cores if len(distinct) >= _POOL_MIN_MOLECULES else 1
    workers = max(1, min(workers, math.ceil(len(distinct) / chunk_size) or 1))
    pooled = {m: s for m, s in specs.items() if workers > 1 and _forkable(s)}
    local = {m: s for m, s in specs.items() if m not in pooled}
    workers = workers if pooled else 1  # the report says how many processes really encoded
    chunks = [distinct[i:i + chunk_size] for i in range(0, len(distinct), chunk_size)]
    last = time.perf_counter()

    def log_progress(done: int, stage: str) -> None:
        nonlocal last
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log(f"featurize ({stage}): {done:,}/{len(distinct):,} molecules ({done / (last - started):,.0f}/s)")

    def pool_done(done: int) -> None:
        log_progress(done, f"{workers} processes")
        if progress is not None and not local:
            progress(done, len(distinct))

    parts: list[tuple[ModalityBatch, list[str | None]]] = []
    if pooled:
        parts = _encode_in_pool(chunks, pooled, workers, pool_done)
    if local:
        done = 0
        for k, chunk in enumerate(chunks):
            batch, parse_errors = encode_chunk(chunk, local)
            if pooled:  # the same rows: add the local modalities beside the pool's
                batch = join_modalities(parts[k][0], batch, list(specs))
                parts[k] = (batch, parse_errors)
            else:
                parts.append((batch, parse_errors))
            done += len(chunk)
            log_progress(done, "in-process")
            if progress is not None:
                progress(done, len(distinct))
    return _assemble(distinct, specs, parts, workers, time.perf_counter() - started)


def _encode_in_pool(chunks: list[list[str]], specs: Mapping[str, dict], workers: int,
                    progress: Callable[[int], None]) -> list[tuple[ModalityBatch, list[str | None]]]:
    """:func:`encode_chunk` of every chunk in a forked pool of ``workers`` processes, in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    parts: list[tuple[ModalityBatch, list[str | None]]] = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        for part in pool.map(_encode_chunk_args, [(c, dict(specs)) for c in chunks]):
            parts.append(part)
            progress(sum(len(p[0]) for p in parts))
    return parts


def _assemble(distinct: list[str], specs: Mapping[str, dict], parts: list[tuple[ModalityBatch, list]],
              workers: int, seconds: float) -> FeaturizedSmiles:
    """One :class:`FeaturizedSmiles` from the chunks' parts (rows in the order of ``distinct``)."""
    names = list(specs)
    encoders = encoders_for(specs)
    if parts:
        batch = ModalityBatch.concat([p[0] for p in parts])
    else:
        batch = ModalityBatch.empty([], names, [encoders[m].dim for m in names], [encoders[m].dtype for m in names])
    parse_errors = [e for p in parts for e in p[1]]
    parsed = np.array([i is not None for i in batch.mol_ids], dtype=bool)
    encoder_errors = {m: int((parsed & ~batch.present[:, j]).sum()) for j, m in enumerate(names)}
    release_encoders()  # featurisation was their last use in a run
    return FeaturizedSmiles(batch, {s: i for i, s in enumerate(distinct)}, parse_errors, encoder_errors, workers,
                            seconds)
