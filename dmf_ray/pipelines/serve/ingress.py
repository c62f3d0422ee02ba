"""The HTTP edge: FastAPI routes, request limits, SMILES parsing, calls to the encoder
deployments, fusion (here by default, one hop fewer) and the JSON answer.

Deployments, composed through handles::

    HTTP proxy ─► Ingress      FastAPI: limits, SMILES parsing, JSON; the fusion model with
                   │            @serve.batch across concurrent requests (default)
                   ├─► Encoders              every CPU encoder of the model (fair work queue)
                   ├─► Encoder-<modality>    one per GPU encoder (num_gpus from its spec)
                   └─► FusionModel           with ``separate_fusion: true`` only

Why this composition (measured on a 2-core CPU container, ecfp + maccs + rdkit2d): the
per-molecule work is small (~0.5-1.5 ms of RDKit, ~2 ms for the fusion forward pass on one
row) while each Serve hop costs ~4 ms of CPU split between caller and callee. So the CPU
encoders share one deployment, GPU encoders get one each, and fusion runs inside the ingress
unless ``separate_fusion`` (a separate hop cost +7 ms at p50 for one-molecule requests).

Body decoding, parsing and JSON encoding run in one worker thread, so a large request never
holds the event loop that every other request needs (and a body over the size bound derived
from the limits is refused with 413 before it is read: ``limits.read_body_capped``). A request
cancelled (client gone, proxy timeout) or past ``request_timeout_s`` cancels its backend calls
(and a failed call its siblings), whose queued work is then dropped.

No ``from __future__ import annotations`` here: Serve ships the ingress class to replicas by
value, and FastAPI must resolve the route annotations there.
"""

import asyncio
import concurrent.futures
import itertools
import logging
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.exceptions import RayActorError

from dmf_ray import __version__
from dmf_ray.artifact import read_model_config
from dmf_ray.encoders import EncodedBatch
from dmf_ray.encoders.batch import EncodedInputs
from dmf_ray.inference import FusedBatch, choose_modalities, input_results
from dmf_ray.modalities import ModalityBatch
from dmf_ray.molecules import InvalidSmilesError, Molecule, iter_parsed, mol_to_bytes
from dmf_ray.pipelines.serve.api import (ERROR_RESPONSES, EmbedRequest, EmbedResponse, ModelCard, ReconstructRequest,
                                         ReconstructResponse)
from dmf_ray.pipelines.serve.args import ServeArgs
from dmf_ray.pipelines.serve.backends import FusionRunner
from dmf_ray.pipelines.serve.calls import EncodeCall, FuseCall, all_or_cancel
from dmf_ray.pipelines.serve.errors import (HTTPError, body_schema, encode_items, install_handlers, json_response,
                                            read_body)
from dmf_ray.pipelines.serve.limits import check_heavy_atoms, check_sizes, max_body_bytes, read_body_capped
from dmf_ray.pipelines.serve.responses import Clock, describe_model, hidden_item

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="dmf_ray fused molecular embeddings",
    version=__version__,
    description="SMILES in; dynamic multi-modal fusion embeddings, attention and reconstructions out.",
)
install_handlers(api)

PROBE = "CCO"
CHUNK = 16  # SMILES parsed, or items encoded as JSON, per turn of the CPU thread


@serve.deployment
@serve.ingress(api)
class Ingress(FusionRunner):
    """HTTP edge: validates and limits input, parses SMILES, calls the encoders, fuses (here, or
    through the FusionModel handle when ``fusion`` is given), builds JSON."""

    def __init__(self, args: dict, groups: dict[str, list[str]], encoders: dict[str, Any], fusion: Any = None):
        self.args = ServeArgs.model_validate(args)
        card = read_model_config(self.args.model_dir)  # refuses a model whose sizes disagree
        if fusion is None:
            f = self.args.fusion
            self.load_fusion(self.args.model_dir, "cpu", int(max(1, self.args.ingress.num_cpus)),
                             f.max_batch_molecules, f.batch_wait_timeout_s)
        self.modalities: list[str] = list(card["fusion"]["modalities"])
        self.dims: list[int] = list(card["fusion"]["dims"])
        self.groups = groups
        self.encoders = encoders
        self.fusion = fusion
        self.card = describe_model(card, self.args, groups)
        # One thread for parsing and JSON: CPU work off the event loop, and RDKit's error-log
        # capture is process-wide, so parses must not overlap.
        self._cpu = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingress-cpu")

    async def check_health(self) -> None:
        if self.fusion is None:
            self.check_fusion()

    # -- routes ------------------------------------------------------------------------------

    @api.get("/healthz", summary="the whole path answers: a probe molecule through every encoder and the fusion")
    async def healthz(self) -> Response:
        try:
            await asyncio.wait_for(self._probe(), self.args.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", said in the body
            return json_response({"status": "unhealthy", "detail": f"{type(exc).__name__}: {exc}"}, 503)
        return json_response({"status": "ok", "model": self.card["weights_sha256"]})

    @api.get("/v1/model", response_model=ModelCard, summary="the model card, from config.json")
    async def model_card(self) -> Response:
        return json_response(self.card)

    @api.post("/v1/embed", response_model=EmbedResponse, summary="fused embeddings, one item per input in order",
              openapi_extra=body_schema(EmbedRequest), responses=ERROR_RESPONSES)
    async def embed(self, request: Request) -> Response:
        body = await self._read(EmbedRequest, request)
        use = self._choose(body.modalities)
        return await self._timed(self._embed(body.smiles, use, "gates" in body.return_,
                                             "reconstructions" in body.return_))

    @api.post("/v1/reconstruct", response_model=ReconstructResponse,
              summary="reconstruct hidden modalities from the visible ones and score them against the truth",
              openapi_extra=body_schema(ReconstructRequest), responses=ERROR_RESPONSES)
    async def reconstruct(self, request: Request) -> Response:
        body = await self._read(ReconstructRequest, request)
        visible = self._choose(body.modalities, drop=body.hide)
        hidden = [m for m in self.modalities if m in body.hide]
        return await self._timed(self._reconstruct(body.smiles, visible, hidden))

    # -- steps -------------------------------------------------------------------------------

    async def _read(self, model, request: Request):
        """The validated body: its size capped first (413), decoded in the CPU thread."""
        raw = await read_body_capped(request, max_body_bytes(self.args.max_smiles_per_request,
                                                             self.args.max_smiles_length))
        return await self._in_thread(read_body, model, raw)

    def _choose(self, use: list[str] | None, drop: list[str] | None = None) -> list[str]:
        try:
            return choose_modalities(self.modalities, use, drop)
        except ValueError as exc:
            raise HTTPError(422, str(exc)) from None

    async def _timed(self, work) -> Response:
        try:
            return await asyncio.wait_for(work, self.args.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"request not answered within {self.args.request_timeout_s} s "
                                 "(request_timeout_s)") from None

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    async def _limit_and_parse(self, smiles: list[str]) -> tuple[list[Molecule], list[int], dict]:
        """Limits, then parse: (molecules, the input position of each, {position: parse error}),
        chunk by chunk in the CPU thread so another request's chunks can go in between."""
        check_sizes(smiles, self.args.max_smiles_per_request, self.args.max_smiles_length)
        for start in range(0, len(smiles), CHUNK):
            await self._in_thread(check_heavy_atoms, smiles[start:start + CHUNK], self.args.max_heavy_atoms, start)
        molecules, rows, errors = [], [], {}
        for start in range(0, len(smiles), CHUNK):
            parsed = await self._in_thread(lambda part: list(iter_parsed(part)), smiles[start:start + CHUNK])
            for i, item in enumerate(parsed, start=start):
                if isinstance(item, InvalidSmilesError):
                    errors[i] = item
                else:
                    molecules.append(item)
                    rows.append(i)
        return molecules, rows, errors

    def _batch(self, molecules: list[Molecule], encoded: dict[str, EncodedBatch]) -> ModalityBatch:
        """The molecules' vectors over the model's modalities (absent where not in ``encoded``)."""
        return ModalityBatch.from_encoded([m.mol_id for m in molecules], self.modalities, self.dims, encoded)

    async def _json(self, results: list[dict]) -> Response:
        """{"results": results} as JSON, encoded chunk by chunk in the CPU thread."""
        parts = []
        for start in range(0, len(results), CHUNK):
            parts.append(await self._in_thread(encode_items, results[start:start + CHUNK]))
        return Response(b'{"results": [' + b", ".join(p for p in parts if p) + b"]}", media_type="application/json")

    async def _call(self, method, *payload):
        """Await a backend call. Cancelled (request timed out or client gone): cancel the backend
        call too, so its queued work is dropped. Replica died under it: retry (the work is pure),
        Serve routes the retry to a live or replacement replica."""
        for attempt in itertools.count():
            response = method.remote(*payload)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except RayActorError as exc:
                if attempt >= self.args.handle_retries:
                    raise
                logger.warning("backend replica died (%s); retrying (%d/%d)", type(exc).__name__,
                               attempt + 1, self.args.handle_retries)

    async def _fuse(self, call: FuseCall) -> FusedBatch:
        return await (self.fuse(call) if self.fusion is None else self._call(self.fusion.fuse, call))

    async def _encode(self, molecules: list[Molecule], modalities: list[str]) -> dict[str, EncodedBatch]:
        payload = [(m.mol_id, m.smiles, mol_to_bytes(m.mol)) for m in molecules]
        calls = [(name, [m for m in mods if m in modalities]) for name, mods in self.groups.items()]
        parts = await all_or_cancel([self._call(self.encoders[name].encode, EncodeCall(payload, mods))
                                     for name, mods in calls if mods])
        return {m: b for part in parts for m, b in part.items()}

    async def _probe(self) -> None:
        molecules = list(iter_parsed([PROBE]))
        batch = self._batch(molecules, await self._encode(molecules, self.modalities))
        if not batch.present.all():
            raise RuntimeError(f"encoders fail on the probe molecule {PROBE}: {'; '.join(batch.errors[0])}")
        fused = await self._fuse(FuseCall(batch.float32(), batch.present))
        if fused.fused.shape != (1, self.card["latent_dim"]):
            raise RuntimeError(f"fusion answered shape {fused.fused.shape} for one molecule")

    @staticmethod
    def _require_one_valid(results: list[dict]) -> None:
        if any(r.get("error") is None for r in results):
            return
        reasons = "; ".join(f"smiles[{i}]: {r['error']}" for i, r in enumerate(results))
        raise HTTPError(422, f"no valid SMILES in the request: {reasons}", results=results)

    def _nothing_fused(self) -> FusedBatch:
        return FusedBatch(np.zeros((0, self.card["latent_dim"] or 0), np.float32),
                          np.zeros((0, len(self.modalities)), np.float32))

    async def _embed(self, smiles: list[str], use: list[str], gates: bool, recon: bool) -> Response:
        clock = Clock()
        molecules, rows, parse_errors = await self._limit_and_parse(smiles)
        clock.lap("parse")
        batch, fused = self._batch([], {}), self._nothing_fused()
        if molecules:
            batch = self._batch(molecules, await self._encode(molecules, use))
            clock.lap("encode")
            fused = await self._fuse(FuseCall(batch.float32(), batch.present, gates, recon))
            clock.lap("fuse")
        inputs = EncodedInputs(smiles, molecules, np.asarray(rows, np.int64), parse_errors, batch)
        results = input_results(inputs, fused, use)
        self._require_one_valid(results)
        response = await self._json(results)
        clock.lap("json")
        response.headers["Server-Timing"] = clock.header()
        return response

    async def _reconstruct(self, smiles: list[str], visible: list[str], hidden: list[str]) -> Response:
        molecules, rows, parse_errors = await self._limit_and_parse(smiles)
        batch, fused = self._batch([], {}), self._nothing_fused()
        if molecules:
            encoded = await self._encode(molecules, visible + hidden)
            batch = self._batch(molecules, {m: b for m, b in encoded.items() if m in visible})
            truth = {m: encoded[m].values for m in hidden}
            call = FuseCall(batch.float32(), batch.present)
            if self.fusion is None:
                fused, scores = await self.reconstruct_hidden(call, truth)
            else:
                fused, scores = await self._call(self.fusion.reconstruct_hidden, call, truth)
        inputs = EncodedInputs(smiles, molecules, np.asarray(rows, np.int64), parse_errors, batch)
        results = input_results(inputs, replace(fused, reconstructions=None), visible)
        for k, i in enumerate(rows):
            if results[i].get("error") is None:
                results[i]["hidden"] = {
                    m: hidden_item(fused.reconstructions[self.modalities.index(m)][k], scores[m], k, encoded[m].errors[k])
                    for m in hidden}
        self._require_one_valid(results)
        return await self._json(results)
