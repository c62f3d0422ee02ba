"""The encoder replica's work queue: fair between requests, and a cancelled request's work dropped.

Why not ``@serve.batch`` here: it runs a batch to the end, first come first served, on the
replica's event loop. Measured on a 2-core node: one request of three ~2,000-atom chains kept
every other client waiting ~70 s, and went on computing after its client had given up (504 at
30 s). Here each request is a job; the queue works in steps, and each step takes from every
waiting job a fair share of ``step_atoms`` heavy atoms (at least one molecule), so a one-molecule
request waits for at most one step of a large one (and within a step, small slices go first and
are answered at once). Steps run in a worker thread, which keeps the
event loop free to receive new requests and cancellations; a job whose request was cancelled
(client gone, request timed out) is skipped from the next encoder call on. Requests still batch:
one step encodes the molecules of every waiting job with one call per encoder.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from dmf_ray.encoders import EncodedBatch
from dmf_ray.molecules import Molecule


@dataclass
class Job:
    """One request's molecules, their heavy-atom counts, the modalities wanted, and progress."""

    molecules: list[Molecule]
    atoms: list[int]
    modalities: list[str]
    future: asyncio.Future
    done: int = 0  # molecules taken into a step so far
    cancelled: bool = False
    parts: dict[str, list[EncodedBatch]] = field(default_factory=dict)


@dataclass
class Stats:
    """Molecules encoded, and molecules dropped because their request was cancelled."""

    encoded: int = 0
    dropped: int = 0
    steps: int = 0


def take_step(jobs: list[Job], step_atoms: int, max_molecules: int) -> list[tuple[Job, int, int]]:
    """The next step: (job, start, stop) slices, a fair share of ``step_atoms`` per job in
    arrival order (at least one molecule each, ``max_molecules`` in all). Advances ``job.done``."""
    share = max(1, step_atoms // max(1, len(jobs)))
    step, total = [], 0
    for job in jobs:
        start = stop = job.done
        used = 0
        while stop < len(job.molecules) and total < max_molecules:
            if stop > start and used + job.atoms[stop] > share:
                break
            used += job.atoms[stop]
            stop += 1
            total += 1
        if stop > start:
            step.append((job, start, stop))
            job.done = stop
    return step


def merged(parts: list[EncodedBatch]) -> EncodedBatch:
    """The parts of one modality, in order, as one batch."""
    return EncodedBatch(np.concatenate([p.values for p in parts]), [e for p in parts for e in p.errors])


class EncodeQueue:
    """Runs ``encoders`` ({modality: Encoder}) over submitted jobs, step by step (see module doc)."""

    def __init__(self, encoders: dict, step_atoms: int, max_step_molecules: int, together: bool = False):
        self.encoders = encoders
        self.together = together
        self.step_atoms = step_atoms
        self.max_step_molecules = max_step_molecules
        self.jobs: list[Job] = []
        self.stats = Stats()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, molecules: list[Molecule], atoms: list[int], modalities: list[str]) -> dict[str, EncodedBatch]:
        """Encode ``molecules`` with each of ``modalities``; {modality: EncodedBatch} in order.
        Cancelling the awaiting task drops the molecules not encoded yet."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run())
        job = Job(list(molecules), list(atoms), [m for m in modalities if m in self.encoders], loop.create_future())
        if not job.molecules or not job.modalities:
            return {}
        self.jobs.append(job)
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self.stats.dropped += len(job.molecules) - job.done
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.jobs = [j for j in self.jobs if not j.cancelled and not j.future.done()]
            waiting = [j for j in self.jobs if j.done < len(j.molecules)]
            if not waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            step = take_step(waiting, self.step_atoms, self.max_step_molecules)
            try:
                await asyncio.to_thread(self._encode_step, step, loop)
            except Exception as exc:  # an encoder bug: fail these requests, keep serving others
                for job, _, _ in step:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _finish(self, job: Job) -> None:
        # On the event loop (call_soon_threadsafe from the worker thread).
        if job.done == len(job.molecules) and not job.future.done() and not job.cancelled:
            job.future.set_result({m: merged(p) for m, p in job.parts.items()})

    def _encode_step(self, step: list[tuple[Job, int, int]], loop: asyncio.AbstractEventLoop) -> None:
        """Encode one step (worker thread). Together: one call per encoder over every job's slice
        (a GPU batch costs about the same for 1 or 512 molecules; a neural encoder on the CPU has
        a fixed cost per call). Otherwise job by job, the
        smallest slice first, each job answered as soon as its last slice is done, so a small
        request does not wait for the rest of the step. A job cancelled meanwhile is left out."""
        self.stats.steps += 1
        groups = [step] if self.together else [[s] for s in sorted(step, key=lambda s: sum(s[0].atoms[s[1]:s[2]]))]
        for group in groups:
            for name, encoder in self.encoders.items():
                wanting = [(j, a, b) for j, a, b in group if name in j.modalities and not j.cancelled]
                if not wanting:
                    continue
                batch = encoder.encode([m for j, a, b in wanting for m in j.molecules[a:b]])
                start = 0
                for job, a, b in wanting:
                    stop = start + (b - a)
                    job.parts.setdefault(name, []).append(
                        EncodedBatch(batch.values[start:stop], batch.errors[start:stop]))
                    start = stop
            for job, a, b in group:
                if not job.cancelled:
                    self.stats.encoded += b - a
                    loop.call_soon_threadsafe(self._finish, job)
