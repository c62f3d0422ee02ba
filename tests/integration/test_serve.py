"""The Serve app over real HTTP on 127.0.0.1: same numbers as the in-process embedder, clean
JSON 4xx for bad requests (oversized molecules included), the model card, autoscaling up and
down, recovery from a killed replica (the Ingress included), and a timed-out request's work
dropped. Two apps run side by side on one Serve: the default (fusion inside the ingress) and
``separate_fusion`` (fusion in its own deployment, and large limits for the timeout test), so
both compositions are checked.
"""

import concurrent.futures as cf
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from dmf_ray.pipelines.serve import ServeArgs, build_app
from dmf_ray.pipelines.serve.builder import CPU_ENCODERS, deployment_options, encoder_groups
from dmf_ray.pipelines.serve.errors import PROXY_HOOK, PROXY_HOOK_ENV
from dmf_ray.pipelines.serve.limits import max_body_bytes
from dmf_ray.pipelines.serve.responses import INGRESS

pytestmark = pytest.mark.integration

# Serve's proxy reads its hook from the environment the local Ray inherits at start (collection
# runs before any fixture starts Ray): error answers from the proxy itself become JSON too.
os.environ.setdefault(PROXY_HOOK_ENV, PROXY_HOOK)

REPO = Path(__file__).resolve().parents[2]
MODALITIES = ["ecfp", "maccs", "rdkit2d"]
APP, SPLIT_APP = "dmf-serve-test", "dmf-serve-split"
MAX_SMILES, MAX_LENGTH, MAX_ATOMS = 16, 300, 100
SPLIT_MAX_SMILES, SPLIT_MAX_ATOMS = 256, 400  # room for one request with minutes of encoder work
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def sample_smiles(n: int, skip: int = 0) -> list[str]:
    import rdkit

    with open(os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")) as f:
        return [line.split()[0] for line in f][skip : skip + n]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A random-weights model whose normalisation comes from real molecules, so values are sane."""
    from dmf_ray.testing import save_random_model

    path = tmp_path_factory.mktemp("serve") / "model"
    card = {"training": {"epochs": 0, "note": "random"}, "metrics": {"val_reconstruction": 1.23},
            "versions": {"dmf_ray": "test"}}
    return save_random_model(path, sample_smiles(100, skip=200), MODALITIES, card=card,
                             latent_dim=32, gate_hidden=32, attention_hidden=16, decoder_hidden=32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(model_dir: str, **overrides) -> dict:
    """Small reservations so both apps, and an extra replica, fit on a 2-CPU test cluster; fast
    autoscaling so a test sees it within seconds; two Ingress replicas with a 1 s health check."""
    fast = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
            "downscale_delay_s": 2, "look_back_period_s": 2, "metrics_interval_s": 0.5}
    args = {
        "model_dir": model_dir, "max_smiles_per_request": MAX_SMILES, "max_smiles_length": MAX_LENGTH,
        "max_heavy_atoms": MAX_ATOMS, "request_timeout_s": 60,
        "ingress": {"num_cpus": 0.1, "autoscaling": None, "num_replicas": 2, "health_check_period_s": 1},
        "encoders": {"num_cpus": 0.1, "max_batch_molecules": 64, "autoscaling": fast},
        "fusion": {"num_cpus": 0.1, "max_batch_molecules": 64, "autoscaling": None},
    }
    return {**args, **overrides}


def split_args(model_dir: str) -> dict:
    pinned = {"num_cpus": 0.1, "autoscaling": None, "max_batch_molecules": SPLIT_MAX_SMILES}
    return app_args(model_dir, separate_fusion=True, max_smiles_per_request=SPLIT_MAX_SMILES,
                    max_smiles_length=2000, max_heavy_atoms=SPLIT_MAX_ATOMS,
                    ingress={"num_cpus": 0.1, "autoscaling": None}, encoders=pinned, fusion=pinned)


@pytest.fixture(scope="module")
def service(ray_session, model_dir):
    from ray import serve

    serve.shutdown()  # a Serve left by someone else would keep its own http options
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([  # both apps start at once: replica start-up dominates this module's time
        serve.RunTarget(build_app(app_args(model_dir)), name=APP, route_prefix="/"),
        serve.RunTarget(build_app(split_args(model_dir)), name=SPLIT_APP, route_prefix="/split"),
    ])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for app in (APP, SPLIT_APP):
            serve.delete(app)
        serve.shutdown()


@pytest.fixture(scope="module")
def embedder(model_dir):
    from dmf_ray.inference import FusionEmbedder

    return FusionEmbedder(model_dir)


def post(url: str, path: str, body, **kw) -> requests.Response:
    if isinstance(body, (str, bytes)):
        return requests.post(url + path, data=body, headers={"content-type": "application/json"}, timeout=60, **kw)
    return requests.post(url + path, json=body, timeout=60, **kw)


def assert_same_item(served: dict, local: dict) -> None:
    assert served["error"] is None and local["error"] is None
    for key in ("input", "mol_id", "smiles", "modalities", "modality_errors"):
        assert served[key] == local[key]
    np.testing.assert_allclose(served["embedding"], local["embedding"], atol=1e-5)
    assert served["attention"] == pytest.approx(local["attention"], abs=1e-5)
    for extra in ("gates", "reconstructions"):
        assert (extra in served) == (extra in local)
        for m, value in local.get(extra, {}).items():
            np.testing.assert_allclose(served[extra][m], value, atol=1e-4, rtol=1e-5)


# ---- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/split"], ids=["fusion-in-ingress", "separate-fusion"])
def test_embeddings_equal_in_process_embedder(service, embedder, prefix):
    smiles = sample_smiles(MAX_SMILES) + [ASPIRIN, "c1ccccc1", "[Na+].[Cl-]"]
    for part in (smiles[:MAX_SMILES], smiles[MAX_SMILES:]):
        r = post(service, prefix + "/v1/embed", {"smiles": part})
        assert r.status_code == 200, r.text
        served = r.json()["results"]
        local = embedder.embed_smiles(part)
        assert len(served) == len(part)
        for s, l in zip(served, local):
            assert_same_item(s, l)
            assert len(s["embedding"]) == 32 and s["modalities"] == MODALITIES

    # A subset of modalities and the extras.
    body = {"smiles": [ASPIRIN, "CCO"], "modalities": ["maccs", "rdkit2d"], "return": ["gates", "reconstructions"]}
    served = post(service, prefix + "/v1/embed", body).json()["results"]
    local = embedder.embed_smiles(body["smiles"], modalities=body["modalities"], with_gates=True,
                                  with_reconstructions=True)
    for s, l in zip(served, local):
        assert_same_item(s, l)
        assert s["attention"]["ecfp"] == 0.0 and sorted(s["gates"]) == ["maccs", "rdkit2d"]


def test_concurrent_requests_each_get_their_own_rows(service, embedder):
    """Requests that meet in one @serve.batch (encoders, fusion) get their own rows back."""
    smiles = sample_smiles(24, skip=50)
    local = embedder.embed_smiles(smiles)
    with cf.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(lambda s: post(service, "/v1/embed", {"smiles": [s]}).json()["results"][0], smiles))
    for s, l in zip(served, local):
        assert_same_item(s, l)


def test_mixed_valid_and_invalid_smiles(service, embedder):
    smiles = ["CCO", "not-a-smiles", "", "C1CC", "c1ccccc1"]
    r = post(service, "/v1/embed", {"smiles": smiles})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["input"] for x in results] == smiles
    assert [x["error"] is None for x in results] == [True, False, False, False, True]
    assert "not-a-smiles" in results[1]["error"] and "embedding" not in results[1]
    assert "empty" in results[2]["error"]
    assert "C1CC" in results[3]["error"] and "ring" in results[3]["error"].lower()
    local = embedder.embed_smiles(smiles)
    for s, l in zip(results, local):
        if l["error"] is None:
            assert_same_item(s, l)
        else:
            assert s == l


def test_reconstruct_hidden_modalities(service, embedder):
    smiles = [ASPIRIN, "bad(", "c1ccc2ccccc2c1"]
    r = post(service, "/v1/reconstruct", {"smiles": smiles, "hide": ["ecfp"]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[1]["error"] and "hidden" not in results[1]
    local = embedder.embed_smiles(smiles, drop=["ecfp"], with_reconstructions=True)
    truth = embedder.encoders["ecfp"].encode([embedder_molecule(s) for s in (smiles[0], smiles[2])]).values
    for item, ref, true in zip((results[0], results[2]), (local[0], local[2]), truth):
        assert item["modalities"] == ["maccs", "rdkit2d"]
        np.testing.assert_allclose(item["embedding"], ref["embedding"], atol=1e-5)
        hidden = item["hidden"]["ecfp"]
        np.testing.assert_allclose(hidden["reconstruction"], ref["reconstructions"]["ecfp"], atol=1e-4, rtol=1e-5)
        recon = np.asarray(hidden["reconstruction"])
        expected = recon @ true / (np.linalg.norm(recon) * np.linalg.norm(true))
        assert hidden["cosine"] == pytest.approx(expected, abs=1e-5)
        assert -1 <= hidden["cosine_standardized"] <= 1 and hidden["error"] is None
    split = post(service, "/split/v1/reconstruct", {"smiles": smiles, "hide": ["ecfp"]}).json()["results"]
    assert split[0]["hidden"]["ecfp"]["cosine"] == pytest.approx(results[0]["hidden"]["ecfp"]["cosine"], abs=1e-6)


def embedder_molecule(smiles: str):
    from dmf_ray.molecules import parse_smiles

    return parse_smiles(smiles)


# ---- bad requests ----------------------------------------------------------------------------


TOO_LONG = "C" * (MAX_LENGTH + 1)
TOO_HEAVY = "C" * (MAX_ATOMS + 1)


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/v1/embed", '{"smiles": ["CCO"', 400, ["malformed JSON"]),
        ("/v1/embed", "[1, 2]", 422, ["body"]),
        ("/v1/embed", {}, 422, ["smiles", "required"]),
        ("/v1/embed", {"smiles": []}, 422, ["smiles", "at least 1"]),
        ("/v1/embed", {"smiles": ["CCO", 7]}, 422, ["smiles[1]", "string", "7"]),
        ("/v1/embed", {"smiles": ["CCO"] * (MAX_SMILES + 1)}, 413, [str(MAX_SMILES + 1), str(MAX_SMILES),
                                                                    "max_smiles_per_request"]),
        ("/v1/embed", '{"smiles": ["' + "C" * 80_000 + '"]}', 413,
         [f"80016 bytes; the limit is {max_body_bytes(MAX_SMILES, MAX_LENGTH)} bytes"]),
        ("/v1/embed", {"smiles": ["CCO", TOO_LONG]}, 422, ["smiles[1]", str(MAX_LENGTH + 1), "max_smiles_length"]),
        ("/v1/embed", {"smiles": ["CCO", "c1ccccc1", TOO_HEAVY]}, 422, ["smiles[2]", f"{MAX_ATOMS + 1} heavy atoms",
                                                                      f"limit is {MAX_ATOMS}", "max_heavy_atoms"]),
        ("/v1/embed", {"smiles": ["xyz", "C1CC"]}, 422, ["no valid SMILES", "smiles[0]", "'xyz'", "smiles[1]"]),
        ("/v1/embed", {"smiles": ["CCO"], "modalities": ["ecfp", "graph"]}, 422, ["unknown modality", "'graph'"]),
        ("/v1/embed", {"smiles": ["CCO"], "return": ["latents"]}, 422, ["return[0]", "latents"]),
        ("/v1/embed", {"smile": ["CCO"]}, 422, ["smile", "Extra inputs"]),
        ("/v1/reconstruct", {"smiles": ["CCO"], "hide": MODALITIES}, 422, ["no modality left"]),
        ("/v1/reconstruct", {"smiles": ["CCO"], "hide": ["graph"]}, 422, ["unknown modality", "'graph'"]),
        ("/v1/reconstruct", {"smiles": ["CCO"]}, 422, ["hide", "required"]),
    ],
    ids=["malformed-json", "not-an-object", "no-smiles", "empty-list", "non-string", "too-many", "body-too-large",
         "too-long", "too-heavy",
         "no-valid-item", "unknown-modality", "unknown-return", "unknown-field", "hide-all", "hide-unknown",
         "no-hide"],
)
def test_bad_requests_get_a_4xx_naming_the_problem(service, path, body, status, words):
    r = post(service, path, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


def test_dmf_serve_refuses_to_replace_a_running_app(service, model_dir):
    from dmf_ray.pipelines.serve import run_server
    from dmf_ray.pipelines.serve.server import AppNameTaken

    with pytest.raises(AppNameTaken, match=f"named '{APP}' already runs"):
        run_server(model_dir, port=free_port(), args=app_args(model_dir), app_name=APP, blocking=False)
    assert post(service, "/v1/embed", {"smiles": ["CCO"]}).status_code == 200  # left as it was


def test_body_is_json_whatever_the_content_type(service):
    # `curl -X POST ... -d '{...}'` sends application/x-www-form-urlencoded.
    r = requests.post(service + "/v1/embed", data='{"smiles": ["CCO", "c1ccccc1"]}', timeout=60,
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert [x["smiles"] for x in r.json()["results"]] == ["CCO", "c1ccccc1"]


def test_no_valid_item_lists_every_result(service):
    r = post(service, "/v1/embed", {"smiles": ["xyz", ""]})
    assert r.status_code == 422
    assert [x["input"] for x in r.json()["results"]] == ["xyz", ""]


def test_request_timeout_header_gives_408(service):
    r = post(service, "/v1/embed", {"smiles": sample_smiles(MAX_SMILES)},
             headers={"x-request-timeout-seconds": "0.001"})
    assert r.status_code == 408, r.text
    assert "timed out" in r.json()["detail"]  # the proxy's own answer, made JSON by its hook


def test_unknown_path_and_method_are_json(service):
    r = requests.get(service + "/v1/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["detail"]
    r = requests.get(service + "/v1/embed", timeout=30)
    assert r.status_code == 405 and r.json()["detail"]


def encoder_stats(app: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(CPU_ENCODERS, app).stats.remote().result(timeout_s=60)


def test_timed_out_request_work_is_dropped(service):
    """256 chains of 400 atoms: minutes of rdkit2d. The proxy gives up after 5 s (408), once
    the request has reached the encoders (parsing it takes ~1-2 s); the encoder replica must
    stop within one step instead of computing the rest for nobody."""
    chain = "C" * SPLIT_MAX_ATOMS
    before = encoder_stats(SPLIT_APP)
    r = post(service, "/split/v1/embed", {"smiles": [chain] * SPLIT_MAX_SMILES},
             headers={"x-request-timeout-seconds": "5"})
    assert r.status_code == 408, r.text
    time.sleep(3)  # the step under way when the cancel came may finish
    settled = encoder_stats(SPLIT_APP)
    time.sleep(3)
    after = encoder_stats(SPLIT_APP)
    # Nothing more computed (but Serve's health check, one probe molecule per 10 s).
    assert after["encoded"] - settled["encoded"] <= 1, (before, settled, after)
    assert after["encoded"] - before["encoded"] < SPLIT_MAX_SMILES // 4
    assert after["dropped"] - before["dropped"] > SPLIT_MAX_SMILES // 2
    # The service answers at once afterwards.
    r = post(service, "/split/v1/embed", {"smiles": ["CCO"]})
    assert r.status_code == 200 and r.elapsed.total_seconds() < 5


# ---- model card, health, docs ----------------------------------------------------------------


def test_model_card_health_and_docs(service, model_dir):
    card = requests.get(service + "/v1/model", timeout=30).json()
    assert card["model_dir"] == model_dir
    assert card["modalities"] == MODALITIES
    assert card["dims"] == {"ecfp": 2048, "maccs": 167, "rdkit2d": 35}
    assert card["latent_dim"] == 32
    assert card["encoders"]["ecfp"]["encoder"] == "ecfp" and card["encoders"]["ecfp"]["version"]
    assert card["metrics"] == {"val_reconstruction": 1.23}
    assert card["training"]["note"] == "random" and card["versions"] == {"dmf_ray": "test"}
    assert card["service"]["limits"]["max_smiles_per_request"] == MAX_SMILES
    assert card["service"]["limits"]["max_heavy_atoms"] == MAX_ATOMS
    assert card["service"]["encoder_deployments"] == {CPU_ENCODERS: MODALITIES}
    assert card["service"]["fusion_deployment"] == INGRESS
    health = requests.get(service + "/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert requests.get(service + "/docs", timeout=30).status_code == 200
    paths = requests.get(service + "/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/embed", "/v1/reconstruct", "/v1/model", "/healthz"} <= set(paths)
    body = paths["/v1/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"smiles", "modalities", "return"} <= set(body["properties"])


# ---- scaling and failure ---------------------------------------------------------------------


def replicas(deployment: str, app: str = APP) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return states.get("RUNNING", 0)


def wait_for(predicate, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


class Load:
    """Clients posting in a loop until stopped; counts successes and failures."""

    def __init__(self, url: str, clients: int, smiles: list[str]):
        self.url, self.smiles = url, smiles
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                r = session.post(self.url + "/v1/embed", json={"smiles": self.smiles}, timeout=60)
                good, why = r.status_code == 200, f"{r.status_code} {r.text[:2000]}"
            except requests.RequestException as exc:
                good, why = False, repr(exc)
            with self.lock:
                self.ok += good
                self.failed += not good
                if not good:
                    self.failures.append(why)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


@pytest.mark.slow
def test_autoscales_up_under_load_and_back_down(service):
    wait_for(lambda: replicas(CPU_ENCODERS) == 1, 40, "Encoders at 1 replica before the load")
    with Load(service, clients=6, smiles=sample_smiles(8, skip=300)) as load:
        took = wait_for(lambda: replicas(CPU_ENCODERS) >= 2, 45, "scaling Encoders up to 2 replicas")
        print(f"scaled up after {took:.1f} s of load")
    assert load.failed == 0, load.failures[:3]
    took = wait_for(lambda: replicas(CPU_ENCODERS) == 1, 40, "scaling Encoders back down to 1 replica")
    print(f"scaled down {took:.1f} s after the load stopped")


@pytest.mark.slow
@pytest.mark.parametrize("deployment", [CPU_ENCODERS, INGRESS])
def test_service_recovers_from_a_killed_replica(service, deployment):
    import ray

    expected = 2 if deployment == INGRESS else 1

    def replica_actors():
        return [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and f"{APP}#{deployment}#" in a["name"]]

    wait_for(lambda: len(replica_actors()) == expected and replicas(deployment) == expected, 40,
             f"{deployment} at {expected} replicas")
    victim = replica_actors()[0]["name"]
    clients = 4
    with Load(service, clients=clients, smiles=[ASPIRIN, "CCO"]) as load:
        wait_for(lambda: load.ok >= 10, 30, "requests succeeding before the kill")
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        ok_at_kill = load.ok
        # The other Ingress replica answers at once (target: back in < 10 s). The one Encoders
        # replica's calls are retried and wait for its replacement (noticed at the next 10 s
        # health check, then started), so they get longer.
        limit = 10 if deployment == INGRESS else 60
        wait_for(lambda: load.ok >= ok_at_kill + 10, limit, "requests succeeding after the kill")
        back_in = time.monotonic() - killed_at
        wait_for(lambda: any(a["name"] != victim for a in replica_actors()) and replicas(deployment) >= expected,
                 60, f"a replacement {deployment} replica")
    print(f"{deployment}: {load.ok} ok, {load.failed} failed; 10 answers {back_in:.1f} s after the kill")
    # Only requests in flight on the killed replica may fail (at most one per client), and their
    # answer is JSON like every other error.
    assert load.failed <= clients, load.failures
    for failure in load.failures:
        status, _, body = failure.partition(" ")
        assert status.isdigit() and "detail" in json.loads(body), failure


# ---- config files ----------------------------------------------------------------------------


def test_serve_configs_validate_and_carry_the_same_app():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "serve_configs" / "fusion.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "dmf_ray.pipelines.serve:build_app"
    # It spells out the defaults, so reading it tells what `dmf serve` does.
    assert ServeArgs.model_validate(app["args"]) == ServeArgs(model_dir=app["args"]["model_dir"])
    assert config["http_options"]["host"] == "127.0.0.1"

    service = yaml.safe_load((REPO / "serve_configs" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    in_cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(in_cluster)
    (k8s_app,) = in_cluster["applications"]
    assert k8s_app["import_path"] == app["import_path"]
    # Same app; only where the model lives differs, and the cluster's autoscaler adds nodes
    # for pending replicas, so replica counts are not capped to the first node.
    assert k8s_app["args"]["cap_replicas"] is False
    differ = {"model_dir", "cap_replicas"}
    assert {k: v for k, v in k8s_app["args"].items() if k not in differ} == \
        {k: v for k, v in app["args"].items() if k not in differ}


def test_args_report_every_problem_at_once(tmp_path):
    with pytest.raises(ValueError) as info:
        ServeArgs.model_validate({
            "model_dir": str(tmp_path), "max_smiles_per_request": 100,
            "encoders": {"max_batch_molecules": 10, "max_ongoing_requests": 2,
                         "autoscaling": {"target_ongoing_requests": 2, "max_replicas": 3}},
            "fusion": {"num_gpus": 1},
        })
    text = str(info.value)
    assert "max_ongoing_requests (2) must exceed" in text
    with pytest.raises(ValueError) as info:
        ServeArgs.model_validate({"model_dir": str(tmp_path), "max_smiles_per_request": 100,
                                  "encoders": {"max_batch_molecules": 10}, "fusion": {"num_gpus": 1}})
    text = str(info.value)
    assert "encoders.max_batch_molecules (10) must be >= max_smiles_per_request (100)" in text
    assert "separate_fusion" in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_app({"model_dir": str(tmp_path / "missing")})
    assert ServeArgs.model_validate({"model_dir": "rel/model"}).model_dir == os.path.abspath("rel/model")


def test_args_override_field_by_field():
    default = ServeArgs(model_dir="/m")
    args = ServeArgs(model_dir="/m", encoders={"num_cpus": 2, "autoscaling": {"max_replicas": 8}},
                     ingress={"autoscaling": None, "num_replicas": 3})
    assert args.encoders.num_cpus == 2 and args.encoders.autoscaling.max_replicas == 8
    assert args.encoders.max_batch_molecules == default.encoders.max_batch_molecules
    assert args.encoders.autoscaling.target_ongoing_requests == default.encoders.autoscaling.target_ongoing_requests
    assert args.ingress.autoscaling is None and args.ingress.num_replicas == 3
    assert args.ingress.max_ongoing_requests == default.ingress.max_ongoing_requests
    assert ServeArgs.model_validate(args.model_dump()) == args


def test_cpu_encoders_share_a_deployment_and_gpu_encoders_get_their_own():
    card = {"fusion": {"modalities": ["ecfp", "selfies-ted", "maccs"]},
            "modalities": {"ecfp": {"num_gpus": 0.0}, "selfies-ted": {"num_gpus": 1.0}, "maccs": {}}}
    assert encoder_groups(card) == {"Encoders": ["ecfp", "maccs"], "Encoder-selfies-ted": ["selfies-ted"]}
    args = ServeArgs(model_dir="/m", gpu_encoders={"autoscaling": None, "num_replicas": 2})
    options = deployment_options(args.gpu_encoders, num_gpus=1.0)
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert options["logging_config"] == {"enable_access_log": False}  # access log off unless asked
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    scaled = deployment_options(ServeArgs(model_dir="/m").encoders)["autoscaling_config"]
    assert scaled["max_replicas"] == 4 and scaled["target_ongoing_requests"] == 2
    with pytest.raises(ValueError, match="no encoder spec for graph"):
        encoder_groups({"fusion": {"modalities": ["graph"]}, "modalities": {}})
