"""Encoding task molecules for evaluation: every distinct SMILES parsed and encoded once with
every modality of the model (no Ray needed).

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

_ENCODE_CHUNK = 500
_POOL_MIN_MOLECULES = 3000  # below this a process pool costs more to start than it saves

_ENCODERS: dict[str, Any] = {}  # spec (as JSON) -> encoder, built once per process


def _encoders_for(specs: Mapping[str, dict]) -> dict:
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
    return bool(_encoders_for({"m": spec})["m"].runs_inline())


def _parse(smiles: Sequence[str]) -> tuple[list, list[str | None], list[str | None]]:
    """(parsed molecules, id per input or None, parse error per input or None)."""
    from rdkit import rdBase

    from dmf_ray.molecules import InvalidSmilesError, parse_smiles

    molecules, mol_ids, parse_errors = [], [], []
    # RDKit's warnings ("not removing hydrogen atom without neighbors", thousands on HIV) are
    # silenced; a parse failure still carries RDKit's reason, and is counted in the report.
    with rdBase.BlockLogs():
        for s in smiles:
            try:
                m = parse_smiles(s)
            except InvalidSmilesError as exc:
                mol_ids.append(None)
                parse_errors.append(exc.reason)
                continue
            molecules.append(m)
            mol_ids.append(m.mol_id)
            parse_errors.append(None)
    return molecules, mol_ids, parse_errors


def _encode(molecules: list, specs: Mapping[str, dict]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Values ``{m: [k, d_m]}`` (encoder dtype) and errors ``{m: [reason or None]}`` of k molecules."""
    values, errors = {}, {}
    for name, enc in _encoders_for(specs).items():
        if molecules:
            batch = enc.encode(molecules)
            values[name], errors[name] = batch.values, list(batch.errors)
        else:
            values[name], errors[name] = np.zeros((0, enc.dim), dtype=enc.dtype), []
    return values, errors


def encode_chunk(smiles: Sequence[str], specs: Mapping[str, dict]) -> dict[str, Any]:
    """Parse and encode one chunk of SMILES with every modality of ``specs``.

    Returns ``{"mol_ids": [id or None], "parse_errors": [reason or None], "values": {m: [k, d]},
    "errors": {m: [reason or None]}}`` where the k value rows are those of the parsed molecules,
    in input order.
    """
    molecules, mol_ids, parse_errors = _parse(smiles)
    values, errors = _encode(molecules, specs)
    return {"mol_ids": mol_ids, "parse_errors": parse_errors, "values": values, "errors": errors}


def _encode_chunk_args(args: tuple) -> dict[str, Any]:
    return encode_chunk(*args)


@dataclass
class MoleculeFeatures:
    """Raw modality vectors of distinct SMILES strings, and which are present.

    ``index[s]`` is the row of SMILES string ``s`` (as given); ``mol_ids[row]`` is None where
    the SMILES did not parse (``parse_errors[row]`` says why), and then no modality is present.
    ``values[m]`` is ``[n, d_m]`` in the encoder's dtype (zero rows where absent); ``present``
    ``[n, M]`` bool in the order of ``modalities``.
    """

    modalities: list[str]
    index: dict[str, int]
    mol_ids: list[str | None]
    parse_errors: list[str | None]
    values: dict[str, np.ndarray]
    present: np.ndarray
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
) -> MoleculeFeatures:
    """Encode each distinct SMILES string once per modality with the encoders of ``specs``.

    ``workers``: processes for the inline encoders (None: one per core for >= 3,000 molecules,
    else in-process); other encoders always run in this process (module docstring). Invalid
    SMILES and encoder failures are kept as absent entries, never dropped.
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

    def progress(done: int, stage: str) -> None:
        nonlocal last
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            rate = done / (last - started)
            log(f"featurize ({stage}): {done:,}/{len(distinct):,} molecules ({rate:,.0f}/s)")

    if pooled:
        parts = _encode_in_pool(chunks, pooled, workers, lambda d: progress(d, f"{workers} processes"))
    else:
        parts = [{"mol_ids": None, "parse_errors": None, "values": {}, "errors": {}} for _ in chunks]
    if local:
        _encode_here(parts, chunks, local, lambda d: progress(d, "in-process"))
    return _assemble(distinct, specs, parts, workers, time.perf_counter() - started)


def _encode_in_pool(chunks: list[list[str]], specs: Mapping[str, dict], workers: int,
                    progress: Callable[[int], None]) -> list[dict[str, Any]]:
    """:func:`encode_chunk` of every chunk in a forked pool of ``workers`` processes, in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    parts: list[dict[str, Any]] = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        for part in pool.map(_encode_chunk_args, [(c, dict(specs)) for c in chunks]):
            parts.append(part)
            progress(sum(len(p["mol_ids"]) for p in parts))
    return parts


def _encode_here(parts: list[dict[str, Any]], chunks: list[list[str]], specs: Mapping[str, dict],
                 progress: Callable[[int], None]) -> None:
    """Encode every chunk with ``specs`` in this process, adding to ``parts`` (parsed here when
    the pool did not run)."""
    done = 0
    for part, chunk in zip(parts, chunks):
        molecules, mol_ids, parse_errors = _parse(chunk)
        if part["mol_ids"] is None:
            part["mol_ids"], part["parse_errors"] = mol_ids, parse_errors
        values, errors = _encode(molecules, specs)
        part["values"].update(values)
        part["errors"].update(errors)
        done += len(chunk)
        progress(done)


def _assemble(distinct: list[str], specs: Mapping[str, dict], parts: list[dict[str, Any]], workers: int,
              seconds: float) -> MoleculeFeatures:
    """One :class:`MoleculeFeatures` from the chunks' parts (rows in the order of ``distinct``)."""
    names = list(specs)
    n = len(distinct)
    mol_ids = [i for p in parts for i in p["mol_ids"]]
    parse_errors = [e for p in parts for e in p["parse_errors"]]
    ok_rows = np.flatnonzero(np.array([i is not None for i in mol_ids], dtype=bool))
    encs = _encoders_for(specs)
    values, present, encoder_errors = {}, np.zeros((n, len(names)), dtype=bool), {}
    for j, m in enumerate(names):
        arr = np.zeros((n, encs[m].dim), dtype=encs[m].dtype)
        if ok_rows.size:
            arr[ok_rows] = np.concatenate([p["values"][m] for p in parts], axis=0)
        errs = [e for p in parts for e in p["errors"][m]]
        good = np.array([e is None for e in errs], dtype=bool)
        present[ok_rows[good], j] = True
        encoder_errors[m] = int((~good).sum())
        values[m] = arr
    return MoleculeFeatures(modalities=names, index={s: i for i, s in enumerate(distinct)}, mol_ids=mol_ids,
                            parse_errors=parse_errors, values=values, present=present,
                            encoder_errors=encoder_errors, workers=workers, seconds=seconds)
