"""Encoding task molecules for evaluation: every distinct SMILES parsed and encoded once with
every modality of the model, in a process pool (no Ray needed)."""

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

_WORKER_ENCODERS: dict[str, dict] = {}


def _encoders_for(specs: Mapping[str, dict]) -> dict:
    from dmf_ray.encoders import encoder_from_spec

    key = json.dumps(specs, sort_keys=True, default=str)
    if key not in _WORKER_ENCODERS:
        _WORKER_ENCODERS.clear()
        _WORKER_ENCODERS[key] = {m: encoder_from_spec(dict(s)) for m, s in specs.items()}
    return _WORKER_ENCODERS[key]


def encode_chunk(smiles: Sequence[str], specs: Mapping[str, dict]) -> dict[str, Any]:
    """Parse and encode one chunk of SMILES with every modality (runs in a pool worker).

    Returns ``{"mol_ids": [id or None], "parse_errors": [reason or None], "values": {m: [k, d]},
    "errors": {m: [reason or None]}}`` where the value rows are those of the parsed molecules,
    in input order.
    """
    from rdkit import rdBase

    from dmf_ray.molecules import InvalidSmilesError, parse_smiles

    encoders = _encoders_for(specs)
    molecules, mol_ids, parse_errors = [], [], []
    values, errors = {}, {}
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
        for name, enc in encoders.items():
            if molecules:
                batch = enc.encode(molecules)
                values[name], errors[name] = batch.values, list(batch.errors)
            else:
                values[name], errors[name] = np.zeros((0, enc.dim), dtype=enc.dtype), []
    return {"mol_ids": mol_ids, "parse_errors": parse_errors, "values": values, "errors": errors}


def _encode_chunk_args(args):
    return encode_chunk(*args)


@dataclass
class MoleculeFeatures:
    """Raw modality vectors of distinct SMILES strings, and which are present.

    ``index[s]`` is the row of SMILES string ``s`` (as given); ``mol_ids[row]`` is None where
    the SMILES did not parse (``parse_errors[row]`` says why), and then no modality is present.
    """

    modalities: list[str]
    index: dict[str, int]
    mol_ids: list[str | None]
    parse_errors: list[str | None]
    values: dict[str, np.ndarray]  # [n, d_m], the encoder's dtype; zero rows where absent
    present: np.ndarray  # [n, M] bool
    encoder_errors: dict[str, int]
    workers: int
    seconds: float

    def rows(self, smiles: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.index[s] for s in smiles), dtype=np.int64, count=len(smiles))


def featurize_smiles(
    smiles: Sequence[str],
    specs: Mapping[str, dict],
    workers: int | None = None,
    chunk_size: int = _ENCODE_CHUNK,
    log: Callable[[str], None] = print,
) -> MoleculeFeatures:
    """Encode each distinct SMILES string once per modality with the encoders of ``specs``.

    ``workers``: processes (None: one per core for >= 3,000 molecules, else in-process).
    Invalid SMILES and encoder failures are kept as absent entries, never dropped.
    """
    started = time.perf_counter()
    distinct = list(dict.fromkeys(s if isinstance(s, str) else "" for s in smiles))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers is None:
        workers = cores if len(distinct) >= _POOL_MIN_MOLECULES else 1
    workers = max(1, min(workers, math.ceil(len(distinct) / chunk_size) or 1))
    chunks = [distinct[i : i + chunk_size] for i in range(0, len(distinct), chunk_size)]
    specs = {m: dict(s) for m, s in specs.items()}
    names = list(specs)
    parts: list[dict] = []
    last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            rate = done / (last - started)
            log(f"featurize: {done:,}/{len(distinct):,} molecules ({rate:,.0f}/s, {workers} process(es))")

    if workers == 1:
        for chunk in chunks:
            parts.append(encode_chunk(chunk, specs))
            progress(sum(len(p["mol_ids"]) for p in parts))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork where there is one: spawn would re-run the caller's script in every worker
        # (a script without an `if __name__ == "__main__"` guard then breaks the pool) and
        # re-import RDKit (~1 s each). The children only run RDKit and numpy, never torch or
        # Ray, so the parent's threads (torch intra-op, Ray) being copied mid-state is harmless.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            for part in pool.map(_encode_chunk_args, [(c, specs) for c in chunks]):
                parts.append(part)
                progress(sum(len(p["mol_ids"]) for p in parts))

    n = len(distinct)
    mol_ids = [i for p in parts for i in p["mol_ids"]]
    parse_errors = [e for p in parts for e in p["parse_errors"]]
    ok = np.array([i is not None for i in mol_ids], dtype=bool)
    ok_rows = np.flatnonzero(ok)
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
    return MoleculeFeatures(
        modalities=names,
        index={s: i for i, s in enumerate(distinct)},
        mol_ids=mol_ids,
        parse_errors=parse_errors,
        values=values,
        present=present,
        encoder_errors=encoder_errors,
        workers=workers,
        seconds=time.perf_counter() - started,
    )
