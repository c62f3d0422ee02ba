"""Serve's decisions without Ray: encoder batching from the GPUs given, attaching to a running
Serve, sibling backend calls cancelled, the body-size cap, per-modality encoder reasons."""

import asyncio
import json

import numpy as np
import pytest
from starlette.requests import Request

from dmf_ray.encoders import EncodedBatch
from dmf_ray.inference import FusedBatch, molecule_results
from dmf_ray.modalities import ModalityBatch
from dmf_ray.pipelines.serve.args import ServeArgs
from dmf_ray.pipelines.serve.builder import deployment_roles, encoder_groups, plan_encoders
from dmf_ray.pipelines.serve.calls import all_or_cancel
from dmf_ray.pipelines.serve.errors import HTTPError
from dmf_ray.pipelines.serve.limits import max_body_bytes, read_body_capped
from dmf_ray.pipelines.serve.server import AppNameTaken, check_app_name, gpu_fallback, served_url

CARD = {"fusion": {"modalities": ["ecfp", "chemnet"]}, "modalities": {"ecfp": {}, "chemnet": {"num_gpus": 1.0}}}


def plans(args: ServeArgs):
    groups = encoder_groups(CARD)
    return plan_encoders(args, groups, deployment_roles(args, groups, CARD["modalities"]))


def test_gpu_encoder_run_on_the_cpu_gets_cpu_steps_in_one_call():
    args = ServeArgs(model_dir="/m")
    on_gpu = plans(args)["Encoder-chemnet"]
    assert on_gpu.options["ray_actor_options"]["num_gpus"] == 1.0 and on_gpu.together
    assert on_gpu.step_atoms == 64 * args.gpu_encoders.max_batch_molecules
    fallback = gpu_fallback(args, attached=False, cluster_gpus=0.0)  # `dmf serve` on a machine without GPUs
    assert gpu_fallback(args, attached=True, cluster_gpus=0.0) is args
    # It fits beside the CPU encoders on a 2-CPU machine (the quickstart model's `dmf serve`).
    assert fallback.gpu_encoders.num_cpus == 0.1 and args.gpu_encoders.num_cpus == 1.0
    for plan in plans(fallback).values():
        assert plan.options["ray_actor_options"]["num_gpus"] == 0.0
    # On the CPU the RDKit encoders go request by request in small steps; the neural one encodes
    # every request's share of a larger step in one call (its cost is per call: 4 clients x 256
    # molecules got a third of one client's throughput job by job in 200-atom steps).
    cpu, neural = plans(fallback)["Encoders"], plans(fallback)["Encoder-chemnet"]
    assert not cpu.together and cpu.step_atoms == args.encode_step_atoms == 200
    assert neural.together and neural.step_atoms == args.neural_step_atoms == 800


def test_attaching_to_a_running_serve_refuses_a_taken_name_and_says_which_address():
    with pytest.raises(AppNameTaken, match="a Serve app named 'dmf' already runs") as info:
        check_app_name("dmf", {"dmf": object(), "other": object()})
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)  # dmf: error: ..., exit 2
    check_app_name("dmf", {"other": object()})
    assert served_url("127.0.0.1", 8001, False, None) == ("http://127.0.0.1:8001", None)  # this process started Serve
    assert served_url("127.0.0.1", 8001, True, ("127.0.0.1", 8001)) == ("http://127.0.0.1:8001", None)
    url, note = served_url("127.0.0.1", 8001, True, ("0.0.0.0", 8000))
    assert url == "http://0.0.0.0:8000" and "--port 8001 ignored" in note and "0.0.0.0:8000" in note
    assert "may have been ignored" in served_url("127.0.0.1", 8001, True, None)[1]


def test_a_failed_call_cancels_its_siblings_and_raises_its_own_error():
    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fails():
        await asyncio.sleep(0.01)
        raise ConnectionError("replica died")

    async def scenario():
        with pytest.raises(ConnectionError, match="replica died"):
            await asyncio.wait_for(all_or_cancel([slow(), fails()]), 5)
        assert cancelled == [True]  # at once, not when the loop closes
        assert await all_or_cancel([asyncio.sleep(0, "a"), asyncio.sleep(0.01, "b")]) == ["a", "b"]

    asyncio.run(scenario())


def request(body: bytes, chunks: int = 1, declared: bool = True) -> tuple[Request, list]:
    pieces = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    received: list = []

    async def receive():
        piece = pieces[len(received)]
        received.append(piece)
        return {"type": "http.request", "body": piece, "more_body": len(received) < len(pieces)}

    headers = [(b"content-length", str(len(body)).encode())] if declared else []
    return Request({"type": "http", "method": "POST", "path": "/v1/embed", "headers": headers}, receive), received


def test_body_over_the_bound_is_refused_before_it_is_read():
    args = ServeArgs(model_dir="/m")
    limit = max_body_bytes(args.max_smiles_per_request, args.max_smiles_length)
    # The largest valid request, pretty-printed and with every '/' escaped, still fits.
    largest = json.dumps({"smiles": ["C/C=C/" * (args.max_smiles_length // 6)] * args.max_smiles_per_request,
                          "modalities": ["ecfp", "maccs"], "return": ["gates", "reconstructions"]}, indent=2)
    assert len(largest.replace("/", "\\/")) <= limit

    async def read(body: bytes, **kw):
        req, received = request(body, **kw)
        try:
            return await read_body_capped(req, 100), received
        except HTTPError as exc:
            return exc, received

    ok, _ = asyncio.run(read(b"x" * 100, chunks=3))
    assert ok == b"x" * 100
    refused, received = asyncio.run(read(b"x" * 101))
    assert refused.status == 413 and "101 bytes; the limit is 100 bytes" in refused.detail and received == []
    refused, received = asyncio.run(read(b"x" * 300, chunks=3, declared=False))  # chunked: no Content-Length
    assert refused.status == 413 and len(received) == 2


def test_embed_items_keep_each_refused_modality_reason():
    names, dims = ["ecfp", "maccs", "chemnet"], [4, 3, 2]
    encoded = {"ecfp": EncodedBatch(np.ones((3, 4), np.float32), [None, None, "ecfp: too big"]),
               "maccs": EncodedBatch(np.ones((3, 3), np.float32), ["maccs: boom", None, "maccs: bad"])}
    batch = ModalityBatch.from_encoded(["a", "b", "c"], names, dims, encoded)  # chemnet withheld
    fused = FusedBatch(np.zeros((3, 5), np.float32), np.zeros((3, 3), np.float32))
    rows = molecule_results(batch, fused, ["A", "B", "C"], computed=["ecfp", "maccs"])
    assert rows[0]["modalities"] == ["ecfp"] and rows[0]["modality_errors"] == {"maccs": "maccs: boom"}
    assert rows[1]["modality_errors"] == {} and rows[1]["error"] is None
    assert rows[2]["modality_errors"] == {"ecfp": "ecfp: too big", "maccs": "maccs: bad"}
    assert "ecfp: too big; maccs: bad" in rows[2]["error"]
    assert "modality_errors" not in molecule_results(batch, fused, ["A", "B", "C"])[0]  # e.g. read from a store
