"""What travels between the deployments, and the batched fusion step.

An ``EncodeCall`` carries parsed molecules as RDKit binary (the Ingress parsed them once; the
encoder replica does not parse again); a ``FuseCall`` carries raw modality arrays plus the
presence mask, in the model's modality order. ``fuse_calls`` runs one forward pass over the rows
of several requests (``@serve.batch`` groups them) and hands each request its own rows back.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmf_ray.inference import FusedBatch, fuse_arrays


@dataclass
class EncodeCall:
    """Molecules for one encoder deployment: (mol_id, canonical smiles, RDKit binary mol) each,
    and the modalities wanted."""

    molecules: list[tuple[str, str, bytes]]
    modalities: list[str]


@dataclass
class FuseCall:
    """One request's rows for the fusion model: raw float32 [n, d_m] per modality (model order),
    presence bool [n, M], and which extras to return."""

    values: dict[str, np.ndarray]
    present: np.ndarray
    with_gates: bool = False
    with_reconstructions: bool = False


def call_size(call: EncodeCall | FuseCall) -> int:
    """Molecules in one call (``@serve.batch``'s batch_size_fn counts molecules, not requests)."""
    return len(call.molecules) if isinstance(call, EncodeCall) else len(call.present)


def batch_size(calls: list) -> int:
    return sum(call_size(c) for c in calls)


def offsets(calls: list) -> list[int]:
    """Row offsets of each call in the concatenated batch: [0, n_0, n_0 + n_1, ...]."""
    return list(itertools.accumulate((call_size(c) for c in calls), initial=0))


def fuse_calls(model, calls: list[FuseCall]) -> list[FusedBatch]:
    """One forward pass over the rows of every call; gates / reconstructions only where asked.

    ``model``: a ``DynamicFusion`` in eval mode. Returns one ``FusedBatch`` per call, its rows in
    the call's order."""
    names = model.config.modalities
    values = {m: np.concatenate([c.values[m] for c in calls]) for m in names}
    present = np.concatenate([c.present for c in calls])
    fused = fuse_arrays(model, values, present, any(c.with_gates for c in calls),
                        any(c.with_reconstructions for c in calls))
    out = []
    bounds = offsets(calls)
    for c, a, b in zip(calls, bounds, bounds[1:]):
        out.append(FusedBatch(
            fused.fused[a:b], fused.attention[a:b],
            [g[a:b] for g in fused.gates] if c.with_gates else None,
            [r[a:b] for r in fused.reconstructions] if c.with_reconstructions else None,
        ))
    return out


async def all_or_cancel(calls: list[Awaitable[Any]]) -> list[Any]:
    """Await every call; the results in order. The first call to fail cancels the others (a
    cancelled backend call drops its queued work: ``Ingress._call``) and its exception is raised
    as it is: the app's error handlers (503 for a dead replica or a full queue) match on its type.
    ``asyncio.gather`` would leave the others running for a request already answered. Cancelling
    the caller cancels every call. (``asyncio.TaskGroup`` does the same but wraps the exception
    in an ExceptionGroup, and needs Python 3.11; the package supports 3.10.)"""
    tasks = [asyncio.ensure_future(c) for c in calls]
    if not tasks:
        return []
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        raise
    failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # their cancel handlers run now
        raise failed[0]
    return [t.result() for t in tasks]
