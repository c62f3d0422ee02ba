"""cluster.yaml and the Kubernetes manifests pass the schemas their tools apply."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _validate(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_schema():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"cpu-worker", "gpu-worker"} <= set(types)
    assert all(types[t]["min_workers"] == 0 and types[t]["max_workers"] > 0 for t in ("cpu-worker", "gpu-worker"))
    assert any("pip install -e" in c and "dmf_ray" in c for c in config["setup_commands"])


def test_schema_check_is_not_a_rubber_stamp():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["gpu-worker"]["min_workrs"] = 1
    with pytest.raises(Exception, match="min_workrs"):
        _validate(config)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("jobs/*.yaml"), *REPO.glob("serve_configs/*.yaml")]))
def test_kubernetes_and_serve_manifests_parse(path):
    docs = [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]
    assert docs
    for doc in docs:
        if doc.get("kind") in {"RayJob", "RayService"}:
            assert doc["apiVersion"].startswith("ray.io/")
            spec = doc["spec"]
            cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
            assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
            if doc["kind"] == "RayJob":
                assert spec["entrypoint"].startswith("python jobs/")
            else:
                assert "dmf_ray.pipelines.serve:build_app" in spec["serveConfigV2"]
