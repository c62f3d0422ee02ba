"""Ray Serve app: SMILES in over HTTP, fused embeddings, attention and reconstructions out.

Deployments, composed through handles::

    HTTP proxy ─► Ingress      FastAPI: limits, SMILES parsing, JSON; the fusion model with
                   │            @serve.batch across concurrent requests (default)
                   ├─► Encoders              every CPU encoder of the model, @serve.batch
                   ├─► Encoder-<modality>    one per GPU encoder (num_gpus from its spec)
                   └─► FusionModel           with ``separate_fusion: true`` only

Why this composition (measured on a 2-core CPU container, ecfp + maccs + rdkit2d): the
per-molecule work is small (~0.5-1.5 ms of RDKit, ~2 ms for the fusion forward pass on one
row) while each Serve hop costs ~4 ms of CPU split between caller and callee (an empty
FastAPI route through the proxy: ~5 ms wall; each handle call behind it: +~5 ms). So
- the CPU encoders share one deployment: one per fingerprint would multiply hops for no gain
  (each is a single-threaded RDKit call); the deployment scales out as a unit;
- GPU encoders get their own deployment each, so they sit on GPU nodes and batch alone;
- the fusion model runs inside the ingress by default: a separate FusionModel hop cost
  +7 ms at p50 for single-molecule requests (30 vs 23 ms, same session), which the 20 ms
  target cannot afford, and the network is light enough for the ingress' CPU. Set
  ``separate_fusion: true`` to put it on a GPU or scale it apart from the HTTP edge.

The numbers equal ``FusionEmbedder(model_dir).embed_smiles`` (what ``dmf embed`` uses) by
construction: parsing, merging encoder output, fusing and building the result items are the
same functions from ``dmf_ray.inference``; only the process each step runs in differs.

Everything is rebuilt from the model directory (config.json + model.safetensors); the app is
built by ``build_app`` from typed ``ServeArgs``, so a Serve config file picks the model.

No ``from __future__ import annotations`` here: Serve ships the ingress class to replicas by
value, and FastAPI must resolve the route annotations there.
"""

import asyncio
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from dmf_ray import __version__
from dmf_ray.files import redact
from dmf_ray.artifact import load_fusion_model, read_model_config
from dmf_ray.encoders import EncodedBatch, encoder_from_spec
from dmf_ray.inference import FusedBatch, choose_modalities, fill_results, fuse_arrays, merge_encoded, parse_inputs
from dmf_ray.molecules import Molecule, mol_from_bytes, mol_to_bytes, parse_smiles
from dmf_ray.pipelines.serve.api import (ERROR_RESPONSES, EmbedRequest, EmbedResponse, ModelCard, ReconstructRequest,
                                  ReconstructResponse)
from dmf_ray.pipelines.serve.args import DeploymentArgs, ServeArgs

logger = logging.getLogger("ray.serve")

CPU_ENCODERS = "Encoders"
GPU_ENCODER_PREFIX = "Encoder-"
FUSION = "FusionModel"
INGRESS = "Ingress"


# --------------------------------------------------------------------------------------------
# What travels between deployments
# --------------------------------------------------------------------------------------------


@dataclass
class EncodeCall:
    molecules: list[tuple[str, str, bytes]]  # (mol_id, canonical smiles, RDKit binary mol)
    modalities: list[str]


@dataclass
class FuseCall:
    values: dict[str, np.ndarray]  # raw float32 [n, d_m] in model order
    present: np.ndarray  # bool [n, M]
    with_gates: bool = False
    with_reconstructions: bool = False


def _size(call: EncodeCall | FuseCall) -> int:
    return len(call.molecules) if isinstance(call, EncodeCall) else len(call.present)


def _batch_size(calls: list) -> int:
    return sum(_size(c) for c in calls)


def _offsets(calls: list) -> list[int]:
    return list(itertools.accumulate((_size(c) for c in calls), initial=0))


def encode_calls(encoders: dict[str, Any], calls: list[EncodeCall]) -> list[dict[str, EncodedBatch]]:
    """Run each encoder once over the molecules of every call that asked for it."""
    molecules = [[Molecule(i, s, mol_from_bytes(b)) for i, s, b in c.molecules] for c in calls]
    out: list[dict[str, EncodedBatch]] = [{} for _ in calls]
    for name, encoder in encoders.items():
        wanting = [k for k, c in enumerate(calls) if name in c.modalities and c.molecules]
        if not wanting:
            continue
        batch = encoder.encode([m for k in wanting for m in molecules[k]])
        start = 0
        for k in wanting:
            stop = start + len(molecules[k])
            out[k][name] = EncodedBatch(batch.values[start:stop], batch.errors[start:stop])
            start = stop
    return out


def fuse_calls(model, calls: list[FuseCall]) -> list[FusedBatch]:
    """One forward pass over the rows of every call; gates / reconstructions only where asked."""
    names = model.config.modalities
    values = {m: np.concatenate([c.values[m] for c in calls]) for m in names}
    present = np.concatenate([c.present for c in calls])
    fused = fuse_arrays(model, values, present, any(c.with_gates for c in calls),
                        any(c.with_reconstructions for c in calls))
    out = []
    bounds = _offsets(calls)
    for c, a, b in zip(calls, bounds, bounds[1:]):
        out.append(FusedBatch(
            fused.fused[a:b], fused.attention[a:b],
            [g[a:b] for g in fused.gates] if c.with_gates else None,
            [r[a:b] for r in fused.reconstructions] if c.with_reconstructions else None,
        ))
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; NaN where either row is all zeros (no direction to compare)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(1) / denom, np.nan)


# --------------------------------------------------------------------------------------------
# Backend deployments
# --------------------------------------------------------------------------------------------


class _QuietBatchSizeWarning(logging.Filter):
    # Serve warns when max_batch_size > max_ongoing_requests, reading max_batch_size as a count
    # of requests; here it counts molecules (batch_size_fn), so the warning is wrong.
    def filter(self, record: logging.LogRecord) -> bool:
        return "will never achieve the configured" not in record.getMessage()


def _set_batching(method, max_batch_molecules: int, batch_wait_timeout_s: float) -> None:
    if not any(isinstance(f, _QuietBatchSizeWarning) for f in logger.filters):
        logger.addFilter(_QuietBatchSizeWarning())
    method.set_max_batch_size(max_batch_molecules)
    method.set_batch_wait_timeout_s(batch_wait_timeout_s)


@serve.deployment
class Encoders:
    """Some of the model's encoders (all CPU ones, or one GPU one), rebuilt from the model card."""

    def __init__(self, model_dir: str, modalities: list[str], max_batch_molecules: int, batch_wait_timeout_s: float):
        specs = read_model_config(model_dir).get("modalities", {})
        self.encoders = {m: encoder_from_spec(specs[m]) for m in modalities}
        _set_batching(self.encode, max_batch_molecules, batch_wait_timeout_s)
        probe = parse_smiles("CCO")
        self._probe = EncodeCall([(probe.mol_id, probe.smiles, mol_to_bytes(probe.mol))], list(modalities))

    @serve.batch(max_batch_size=512, batch_wait_timeout_s=0.0, batch_size_fn=_batch_size)
    async def encode(self, calls: list[EncodeCall]) -> list[dict[str, EncodedBatch]]:
        return encode_calls(self.encoders, calls)

    async def check_health(self) -> None:
        # Ethanol must encode with every encoder; a broken model / device shows up here. Async,
        # so it runs on the replica's event loop between batches, never beside one in a thread.
        failed = {m: b.errors[0] for m, b in encode_calls(self.encoders, [self._probe])[0].items() if b.errors[0]}
        if failed:
            raise RuntimeError(f"encoders fail on the probe molecule: {failed}")


class FusionRunner:
    """The fusion network with cross-request batching (@serve.batch). FusionModel deploys it on
    its own; the Ingress embeds it when ``separate_fusion`` is false (one hop fewer)."""

    def load_fusion(self, model_dir: str, device: str, num_threads: int, max_batch_molecules: int,
                    batch_wait_timeout_s: float) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.model, _ = load_fusion_model(model_dir, device=device)
        _set_batching(self.fuse, max_batch_molecules, batch_wait_timeout_s)
        cfg = self.model.config
        self._fusion_probe = FuseCall({m: np.ones((1, d), np.float32) for m, d in zip(cfg.modalities, cfg.dims)},
                                      np.ones((1, len(cfg.modalities)), bool))

    @serve.batch(max_batch_size=4096, batch_wait_timeout_s=0.0, batch_size_fn=_batch_size)
    async def fuse(self, calls: list[FuseCall]) -> list[FusedBatch]:
        return fuse_calls(self.model, calls)

    async def reconstruct_hidden(
        self, call: FuseCall, truth: dict[str, np.ndarray]
    ) -> tuple[FusedBatch, dict[str, dict[str, np.ndarray]]]:
        """Fuse the visible modalities; reconstruct the hidden ones (``truth``: their raw true
        values) and score each by cosine to the truth, raw and standardised with the model's
        own statistics (the space training compares in; the raw cosine of descriptors is
        dominated by the largest-valued ones). Not batched: an analysis endpoint. Async, so it
        shares the event loop with ``fuse`` instead of running beside it in a thread."""
        import torch

        fused = fuse_calls(self.model, [replace(call, with_reconstructions=True)])[0]
        names = self.model.config.modalities
        device = next(self.model.parameters()).device
        scores = {}
        for name, true in truth.items():
            j = names.index(name)
            recon = fused.reconstructions[j]
            with torch.no_grad():  # np.array copies: arrays that crossed a Serve handle are read-only
                std = [self.model.normalizers[j](torch.as_tensor(np.array(x, dtype=np.float32), device=device))
                       .cpu().numpy() for x in (recon, true)]
            scores[name] = {"cosine": _cosine(recon, true), "cosine_standardized": _cosine(*std)}
        return fused, scores

    def check_fusion(self) -> None:
        out = fuse_calls(self.model, [self._fusion_probe])[0]
        if not np.isfinite(out.fused).all():
            raise RuntimeError("fusion model returns non-finite values on the probe input")


@serve.deployment
class FusionModel(FusionRunner):
    """The fusion network in its own deployment (``separate_fusion: true``)."""

    def __init__(self, model_dir: str, device: str, num_threads: int, max_batch_molecules: int,
                 batch_wait_timeout_s: float):
        self.load_fusion(model_dir, device, num_threads, max_batch_molecules, batch_wait_timeout_s)

    async def check_health(self) -> None:
        self.check_fusion()


# --------------------------------------------------------------------------------------------
# HTTP API
# --------------------------------------------------------------------------------------------


api = FastAPI(
    title="dmf_ray fused molecular embeddings",
    version=__version__,
    description="SMILES in; dynamic multi-modal fusion embeddings, attention and reconstructions out.",
)




class HTTPError(Exception):
    def __init__(self, status: int, detail: str, **extra: Any):
        self.status, self.detail, self.extra = status, detail, extra


def _json(body: Any, status: int = 200) -> Response:
    def default(obj):
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return Response(json.dumps(body, default=default), status_code=status, media_type="application/json")


class _Clock:
    """Per-step wall time of a request, sent as a Server-Timing header (ms) so a client can
    see where the time went without server logs."""

    def __init__(self):
        self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def header(self) -> str:
        return ", ".join(f"{name};dur={sec * 1e3:.2f}" for name, sec in self.laps)


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(loc: tuple) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


@api.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError) -> Response:
    return _json({"detail": exc.detail, **exc.extra}, exc.status)


def _invalid(errors: list[dict]) -> HTTPError:
    """One 4xx from pydantic's errors: 400 for malformed JSON, else 422 naming each field / index."""
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error") or e.get("msg", "JSON decode error")
            return HTTPError(400, f"malformed JSON body: {reason}")
    problems = []
    for e in errors:
        where = _where(tuple(e.get("loc", ())))
        if e.get("type") == "missing":
            problems.append(f"{where}: field required")
        else:
            shown = "" if e.get("type") == "extra_forbidden" else f" (got {_clip(e.get('input'))})"
            problems.append(f"{where}: {e.get('msg')}{shown}")
    return HTTPError(422, "; ".join(problems), errors=problems)


def _read(model: type[BaseModel], raw: bytes) -> Any:
    # The body is JSON whatever the Content-Type says (`curl -d` sends form-urlencoded).
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc.errors()) from None


def _body_schema(model: type[BaseModel]) -> dict:
    # Bodies are read by _read, so FastAPI does not see the model: document it for /docs.
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return await _http_error(request, _invalid(exc.errors()))


@api.exception_handler(BackPressureError)
async def _overloaded(request: Request, exc: BackPressureError) -> Response:
    return _json({"detail": f"the service is overloaded (a backend queue is full); retry later: {exc}"}, 503)


@api.exception_handler(RayActorError)
async def _backend_died(request: Request, exc: RayActorError) -> Response:
    detail = f"a backend replica died while handling this request; retry it ({type(exc).__name__})"
    return _json({"detail": detail}, 503)


def _hidden_item(reconstruction: np.ndarray, scores: dict[str, np.ndarray], k: int, error: str | None) -> dict:
    """One hidden modality of molecule k; no cosine where its true value could not be computed."""
    def number(x: float) -> float | None:
        return None if error is not None or not np.isfinite(x) else float(x)

    return {"reconstruction": reconstruction, "cosine": number(scores["cosine"][k]),
            "cosine_standardized": number(scores["cosine_standardized"][k]),
            "error": None if error is None else f"true value unavailable: {error}"}


def describe_model(card: dict, args: ServeArgs, groups: dict[str, list[str]]) -> dict:
    """GET /v1/model: what config.json says about the model, plus how this service runs it."""
    fusion = card["fusion"]
    modalities = list(fusion["modalities"])
    specs = card.get("modalities", {})
    return {
        "model_dir": redact(args.model_dir),
        "modalities": modalities,
        "dims": dict(zip(modalities, fusion["dims"])),
        "latent_dim": fusion.get("latent_dim"),
        "encoders": {m: specs.get(m, {}) for m in modalities},
        "versions": card.get("versions", {}),
        "training": card.get("training", {}),
        "metrics": card.get("metrics", {}),
        "fusion": fusion,
        "format_version": card.get("format_version"),
        "weights_sha256": card.get("weights_sha256"),
        "service": {
            "dmf_ray": __version__,
            "ray": ray.__version__,
            "encoder_deployments": groups,
            "fusion_deployment": FUSION if args.separate_fusion else INGRESS,
            "limits": {
                "max_smiles_per_request": args.max_smiles_per_request,
                "max_smiles_length": args.max_smiles_length,
                "request_timeout_s": args.request_timeout_s,
            },
        },
    }


@serve.deployment
@serve.ingress(api)
class Ingress(FusionRunner):
    """HTTP edge: validates and limits input, parses SMILES, calls the encoders, fuses (here, or
    through the FusionModel handle when ``fusion`` is given), builds JSON."""

    def __init__(self, args: dict, groups: dict[str, list[str]], encoders: dict[str, Any], fusion: Any = None):
        self.args = ServeArgs.model_validate(args)
        if fusion is None:
            f = self.args.fusion
            self.load_fusion(self.args.model_dir, "cpu", int(max(1, self.args.ingress.num_cpus)),
                             f.max_batch_molecules, f.batch_wait_timeout_s)
        card = read_model_config(self.args.model_dir)
        self.modalities: list[str] = list(card["fusion"]["modalities"])
        self.dims: list[int] = list(card["fusion"]["dims"])
        self.groups = groups
        self.encoders = encoders
        self.fusion = fusion
        self.card = describe_model(card, self.args, groups)

    # -- routes ------------------------------------------------------------------------------

    async def check_health(self) -> None:
        if self.fusion is None:
            self.check_fusion()

    @api.get("/healthz", summary="liveness of the HTTP edge (backend replicas are checked by Serve)")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.card["weights_sha256"]}

    @api.get("/v1/model", response_model=ModelCard, summary="the model card, from config.json")
    async def model_card(self) -> Response:
        return _json(self.card)

    @api.post("/v1/embed", response_model=EmbedResponse, summary="fused embeddings, one item per input in order",
              openapi_extra=_body_schema(EmbedRequest), responses=ERROR_RESPONSES)
    async def embed(self, request: Request) -> Response:
        body = _read(EmbedRequest, await request.body())
        use = self._choose(body.modalities)
        return await self._timed(self._embed(body.smiles, use, "gates" in body.return_,
                                             "reconstructions" in body.return_))

    @api.post("/v1/reconstruct", response_model=ReconstructResponse,
              summary="reconstruct hidden modalities from the visible ones and score them against the truth",
              openapi_extra=_body_schema(ReconstructRequest), responses=ERROR_RESPONSES)
    async def reconstruct(self, request: Request) -> Response:
        body = _read(ReconstructRequest, await request.body())
        visible = self._choose(body.modalities, drop=body.hide)
        hidden = [m for m in self.modalities if m in body.hide]
        return await self._timed(self._reconstruct(body.smiles, visible, hidden))

    # -- steps -------------------------------------------------------------------------------

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

    def _parse(self, smiles: list[str]):
        limit = self.args.max_smiles_per_request
        if len(smiles) > limit:
            raise HTTPError(413, f"{len(smiles)} SMILES in one request; the limit is {limit} "
                                 "(max_smiles_per_request): split the request")
        max_len = self.args.max_smiles_length
        for i, text in enumerate(smiles):
            if len(text) > max_len:
                raise HTTPError(422, f"smiles[{i}] is {len(text)} characters long; the limit is {max_len} "
                                     f"(max_smiles_length): {_clip(text)}")
        return parse_inputs(smiles)

    async def _call(self, method, *payload):
        """Await a backend call, retrying when the replica died under it (the work is pure, so
        a retry is safe); Serve routes the retry to a live or replacement replica."""
        for attempt in itertools.count():
            try:
                return await method.remote(*payload)
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
        calls = [(name, mods) for name, mods in calls if mods]
        parts = await asyncio.gather(*(self._call(self.encoders[name].encode, EncodeCall(payload, mods))
                                       for name, mods in calls))
        return {m: b for part in parts for m, b in part.items()}

    @staticmethod
    def _require_one_valid(results: list[dict]) -> None:
        if any(r.get("error") is None for r in results):
            return
        reasons = "; ".join(f"smiles[{i}]: {r['error']}" for i, r in enumerate(results))
        raise HTTPError(422, f"no valid SMILES in the request: {reasons}", results=results)

    async def _embed(self, smiles: list[str], use: list[str], gates: bool, recon: bool) -> Response:
        clock = _Clock()
        results, molecules, where = self._parse(smiles)
        clock.lap("parse")
        if molecules:
            batches = await self._encode(molecules, use)
            clock.lap("encode")
            values, present, errors = merge_encoded(self.modalities, self.dims, len(molecules), batches)
            fused = await self._fuse(FuseCall(values, present, gates, recon))
            clock.lap("fuse")
            fill_results(results, smiles, where, molecules, self.modalities, present, errors, fused)
        self._require_one_valid(results)
        response = _json({"results": results})
        clock.lap("json")
        response.headers["Server-Timing"] = clock.header()
        return response

    async def _reconstruct(self, smiles: list[str], visible: list[str], hidden: list[str]) -> Response:
        results, molecules, where = self._parse(smiles)
        if molecules:
            batches = await self._encode(molecules, visible + hidden)
            seen = {m: b for m, b in batches.items() if m in visible}
            values, present, errors = merge_encoded(self.modalities, self.dims, len(molecules), seen)
            truth = {m: batches[m].values for m in hidden}
            call = FuseCall(values, present)
            if self.fusion is None:
                fused, scores = await self.reconstruct_hidden(call, truth)
            else:
                fused, scores = await self._call(self.fusion.reconstruct_hidden, call, truth)
            fill_results(results, smiles, where, molecules, self.modalities, present, errors,
                         replace(fused, reconstructions=None))
            recon = {m: fused.reconstructions[self.modalities.index(m)] for m in hidden}
            for k, i in enumerate(where):
                if results[i].get("error") is None:
                    results[i]["hidden"] = {m: _hidden_item(recon[m][k], scores[m], k, batches[m].errors[k])
                                            for m in hidden}
        self._require_one_valid(results)
        return _json({"results": results})


# --------------------------------------------------------------------------------------------
# Builder and local server
# --------------------------------------------------------------------------------------------


def encoder_groups(card: dict) -> dict[str, list[str]]:
    """Deployment name -> modalities: every CPU encoder in one, each GPU encoder alone."""
    specs = card.get("modalities", {})
    modalities = list(card["fusion"]["modalities"])
    missing = [m for m in modalities if m not in specs]
    if missing:
        raise ValueError(f"config.json has no encoder spec for {', '.join(missing)}")
    groups: dict[str, list[str]] = {}
    for m in modalities:
        if float(specs[m].get("num_gpus", 0.0)) > 0:
            groups[GPU_ENCODER_PREFIX + "".join(c if c.isalnum() or c in "-_." else "_" for c in m)] = [m]
        else:
            groups.setdefault(CPU_ENCODERS, []).append(m)
    return groups


def deployment_options(d: DeploymentArgs, num_gpus: float = 0.0) -> dict[str, Any]:
    """Serve deployment options from typed args."""
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
    }
    if d.autoscaling is None:
        opts["num_replicas"] = d.num_replicas
    else:
        opts["autoscaling_config"] = d.autoscaling.model_dump(exclude_none=True)
    return opts


def build_app(args: ServeArgs | dict) -> serve.Application:
    """The Serve application for one model, from typed args (a dict is validated first)."""
    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    card = read_model_config(args.model_dir)  # fail at deploy time, naming the path
    groups = encoder_groups(card)
    specs = card["modalities"]
    encoders = {}
    for name, mods in groups.items():
        if name == CPU_ENCODERS:
            d, num_gpus = args.encoders, args.encoders.num_gpus or 0.0
        else:
            d = args.gpu_encoders
            num_gpus = d.num_gpus if d.num_gpus is not None else float(specs[mods[0]]["num_gpus"])
        encoders[name] = Encoders.options(name=name, **deployment_options(d, num_gpus)).bind(
            args.model_dir, mods, d.max_batch_molecules, d.batch_wait_timeout_s)
    fusion = None
    if args.separate_fusion:
        f = args.fusion
        gpus = f.num_gpus or 0.0
        fusion = FusionModel.options(name=FUSION, **deployment_options(f, gpus)).bind(
            args.model_dir, "cuda" if gpus > 0 else "cpu", int(max(1, f.num_cpus)), f.max_batch_molecules,
            f.batch_wait_timeout_s)
    return Ingress.options(name=INGRESS, **deployment_options(args.ingress)).bind(
        args.model_dump(), groups, encoders, fusion)


def run_server(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    args: ServeArgs | dict | None = None,
    app_name: str = "dmf",
    blocking: bool = True,
) -> str:
    """Serve ``model_dir`` at http://host:port/ on the Ray cluster of RAY_ADDRESS, else on a
    local one; returns the URL. ``args``: any other ServeArgs fields (limits, autoscaling...).
    Blocking: runs until Ctrl-C / SIGTERM, then deletes the app (and stops Serve if it started
    it). Non-blocking: returns once the app is up; the caller deletes it."""
    from dmf_ray.runtime import ensure_ray

    base = args.model_dump() if isinstance(args, ServeArgs) else dict(args or {})
    serve_args = ServeArgs.model_validate({**base, "model_dir": model_dir})
    encoder_groups(read_model_config(serve_args.model_dir))  # a bad model fails before Ray starts
    ensure_ray()
    if (not os.environ.get("RAY_ADDRESS") and serve_args.gpu_encoders.num_gpus is None
            and not ray.cluster_resources().get("GPU")):
        # A GPU encoder's replica would wait forever for a GPU this machine lacks; neural
        # encoders pick their device when they load, so they run on the CPU instead.
        serve_args = serve_args.model_copy(update={"gpu_encoders": serve_args.gpu_encoders.model_copy(
            update={"num_gpus": 0.0})})
    serve_was_running = bool(serve.status().proxies)
    # The proxy's own timeout backs up the app's: a little longer, so the app's 504 names the cause.
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": serve_args.request_timeout_s + 5})
    serve.run(build_app(serve_args), name=app_name, route_prefix="/")
    url = f"http://{host}:{port}"
    print(f"serving {serve_args.model_dir} at {url}  (docs: {url}/docs; Ctrl-C stops)", flush=True)
    if not blocking:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(app_name)
        if not serve_was_running:
            serve.shutdown()
    return url
