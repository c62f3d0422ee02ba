"""Stores and model directories on S3: featurize, train, embed and load through s3:// URIs.

The S3 endpoint is moto's server on 127.0.0.1 (an S3 API emulator speaking real HTTP); pyarrow's
S3 filesystem talks to it exactly as to AWS. The endpoint and the keys ride in the URI, so Ray
workers reach it with no environment of their own.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import requests

from dmf_ray.cli import main as dmf
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.inference import FusionEmbedder
from dmf_ray.files import local_model_dir
from dmf_ray.store import EmbeddingStore
from dmf_ray.pipelines.train import TRAIN_DIR, TrainConfig, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = ["ecfp", "maccs"]
TINY = dict(model=dict(latent_dim=16, gate_hidden=16, attention_hidden=8, decoder_hidden=32, dropout=0.0),
            batch_size=64, val_fraction=0.1, lr=3e-3)


@pytest.fixture(scope="module")
def s3(ray_session):
    """(uri maker, pyarrow filesystem) for a bucket on a local S3 endpoint."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is a test dependency")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fs = pafs.S3FileSystem(access_key="test", secret_key="test", endpoint_override=f"{host}:{port}",
                           scheme="http", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("dmf-test")

    def uri(path: str) -> str:
        return f"s3://test:test@dmf-test/{path}?endpoint_override={host}:{port}&scheme=http&region=us-east-1"

    yield uri, fs
    server.stop()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    import os

    import rdkit

    with open(os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")) as f:
        lines = [next(f) for _ in range(300)]
    path = tmp_path_factory.mktemp("remote") / "lib.smi"
    path.write_text("".join(lines) + "not_a_smiles\n")
    return path


def test_store_model_and_embeddings_live_on_s3(s3, library, tmp_path, monkeypatch):
    uri, fs = s3
    monkeypatch.setenv("DMF_RAY_CACHE", str(tmp_path / "cache"))  # the driver's staging and fetches

    # Featurize into an S3 store: the same accounting as on local disk.
    store_uri = uri("stores/lib")
    result = featurize([str(library)], store_uri, NAMES, shard_rows=100, log=lambda m: None)
    info = EmbeddingStore.open(store_uri).info()
    assert (info["inputs"], info["failed"]) == (301, 1)
    assert info["molecules"] + info["failed"] <= 301 and result.encoded["ecfp"] == info["modalities"]["ecfp"]["count"]
    listed = {i.path for i in fs.get_file_info(pafs.FileSelector("dmf-test/stores/lib", recursive=True))}
    assert any(p.endswith(".parquet") and "/modalities/ecfp/" in p for p in listed)

    # Train with --out on S3: checkpoints and the model land there; a rerun finds it complete.
    model_uri = uri("models/m1")
    config = TrainConfig(store=store_uri, out=model_uri, workers=1, epochs=2, **TINY)
    result = train(config, log=lambda m: None)
    assert result.model_dir == model_uri and result.metrics_file.startswith(uri("models/m1/metrics.jsonl").split("?")[0])
    files = {i.path for i in fs.get_file_info(pafs.FileSelector("dmf-test/models/m1", recursive=True))}
    for name in ("config.json", "model.safetensors", "metrics.jsonl", f"{TRAIN_DIR}/run.json"):
        assert f"dmf-test/models/m1/{name}" in files
    assert any("/checkpoint_" in p for p in files)  # Ray Train wrote its checkpoints to S3 itself
    with fs.open_input_stream("dmf-test/models/m1/config.json") as f:
        text = f.read().decode()
    card = json.loads(text)
    assert card["training"]["out"] == model_uri.replace("test:test@", "***@") and card["training"]["epochs"] == 2
    assert "test:test" not in text  # credentials in URIs are never recorded
    again = train(TrainConfig(store=store_uri, out=model_uri, workers=1, epochs=2, **TINY), log=lambda m: None)
    assert again.already_complete
    with pytest.raises(ValueError, match="epochs: 2 -> 3"):
        train(TrainConfig(store=store_uri, out=model_uri, workers=1, epochs=3, **TINY), log=lambda m: None)

    # Load from S3 (fetched once into the cache, verified) and embed on the cluster from S3.
    local = local_model_dir(model_uri)
    assert local == local_model_dir(model_uri) and (local / "model.safetensors").is_file()
    smiles = ["CCO", "c1ccccc1O"]
    remote_vectors = [r["embedding"] for r in FusionEmbedder(model_uri).embed_smiles(smiles)]
    local_vectors = [r["embedding"] for r in FusionEmbedder(str(local)).embed_smiles(smiles)]
    np.testing.assert_allclose(remote_vectors, local_vectors)

    out = tmp_path / "fused.parquet"
    assert dmf(["embed", "--model", model_uri, str(library), "--out", str(out)]) == 0
    table = pq.read_table(out).to_pandas()
    assert len(table) == 301 and table.error.notna().sum() == 1

    # Serve straight from the URI: each replica fetches the model on its own node.
    from ray import serve

    from dmf_ray.pipelines.serve import build_app

    serve.shutdown()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        small = {"num_cpus": 0.1, "autoscaling": None}
        serve.run(build_app({"model_dir": model_uri, "ingress": small, "encoders": small}), name="dmf-s3", route_prefix="/")
        response = requests.post(f"http://127.0.0.1:{port}/v1/embed", json={"smiles": smiles}, timeout=60)
        assert response.status_code == 200, response.text
        served = [r["embedding"] for r in response.json()["results"]]
        np.testing.assert_allclose(served, local_vectors, atol=1e-5)
    finally:
        serve.delete("dmf-s3")
        serve.shutdown()


def test_evaluate_reads_a_task_and_writes_its_report_on_s3(s3, library, tmp_path, monkeypatch):
    """A model on S3 (a random-weights one here), task files on S3, the report written to S3."""
    from dmf_ray.testing import save_random_model
    from dmf_ray.files import publish_model

    uri, fs = s3
    monkeypatch.setenv("DMF_RAY_CACHE", str(tmp_path / "cache"))
    smiles = [line.split()[0] for line in library.read_text().splitlines()[:240]]
    local_model = save_random_model(tmp_path / "model", smiles[:100], NAMES, latent_dim=16)
    publish_model(local_model, uri("models/random"))
    for split, part in (("train", smiles[:120]), ("valid", smiles[120:180]), ("test", smiles[180:240])):
        rows = "".join(f"{s},{int('N' in s)}\n" for s in part)
        with fs.open_output_stream(f"dmf-test/tasks/nitrogen/{split}.csv") as f:
            f.write(("smiles,y\n" + rows).encode())

    code = dmf(["evaluate", "--model", uri("models/random"), "--task", uri("tasks/nitrogen"), "--label", "y",
                "--out", uri("reports/r1"), "--seeds", "1", "--robustness", "none", "--n-estimators", "20"])
    assert code == 0
    with fs.open_input_stream("dmf-test/reports/r1/summary.json") as f:
        summary = json.loads(f.read())
    assert list(summary["tasks"]) == ["nitrogen"]  # the task is named after its S3 folder
    assert set(summary["tasks"]["nitrogen"]["rows"]) == {"ecfp", "maccs", "ecfp+maccs", "fusion"}
    listed = {i.base_name for i in fs.get_file_info(pafs.FileSelector("dmf-test/reports/r1", recursive=True))}
    assert "report.md" in listed


def test_a_missing_remote_model_is_one_clear_error(s3, capsys):
    uri, _ = s3
    assert dmf(["embed", "--model", uri("models/none"), "in.smi", "--out", "x.parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json not found" in err and len(err.splitlines()) == 1
