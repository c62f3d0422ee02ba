"""Unit tests for dmf_ray.artifact: save / load round trip and clear errors for bad directories."""

import json

import numpy as np
import pytest
import torch

from dmf_ray.artifact import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    load_fusion_model,
    read_model_config,
    save_fusion_model,
)
from dmf_ray.model.fusion import DynamicFusion, FusionConfig

DIMS = [6, 8, 5]
MODS = ["smiles", "selfies", "graph"]
CARD = {
    "encoders": {m: {"name": f"{m}-enc", "version": "1.0", "dim": d} for m, d in zip(MODS, DIMS)},
    "training": {"epochs": 2, "mask_schedule": {"p_start": 0.1, "p_end": 0.6}},
    "metrics": {"val_reconstruction": 0.25},
}



def trained_like_model(seed=0) -> DynamicFusion:
    torch.manual_seed(seed)
    cfg = FusionConfig(modalities=MODS, dims=DIMS, latent_dim=12, gate_hidden=8,
                       attention_hidden=8, decoder_hidden=16, dropout=0.2)
    model = DynamicFusion(cfg)
    with torch.no_grad():  # move every parameter away from its init so nothing matches by chance
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(seed)
    model.set_normalization({m: (rng.normal(size=d), rng.uniform(0.5, 2.0, size=d))
                             for m, d in zip(MODS, DIMS)})
    return model


@pytest.fixture
def saved(tmp_path):
    model = trained_like_model()
    path = save_fusion_model(tmp_path / "model", model, CARD)
    return model, path


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files
    loaded, doc = load_fusion_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for (m1, s1), (m2, s2) in zip(model.get_normalization().values(),
                                  loaded.get_normalization().values()):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(s1, s2)

    g = torch.Generator().manual_seed(1)
    xs = [3 * torch.randn(7, d, generator=g) + 1 for d in DIMS]
    present = torch.rand(7, 3, generator=g) < 0.7
    a, b = model.embed(xs, present), loaded.embed(xs, present)
    pairs = [(a.fused, b.fused), (a.attention, b.attention),
             *zip(a.reconstructions, b.reconstructions)]
    for x, y in pairs:
        assert torch.equal(x, y)


def test_config_json_is_self_describing(saved):
    _, path = saved
    doc = json.loads((path / CONFIG_FILE).read_text())
    assert doc["format"] == FORMAT and doc["format_version"] == FORMAT_VERSION
    assert doc["fusion"]["modalities"] == MODS and doc["fusion"]["dims"] == DIMS
    for key, value in CARD.items():
        assert doc[key] == value
    assert len(doc["weights_sha256"]) == 64
    assert read_model_config(path) == doc


def test_weights_file_is_plain_safetensors_with_normalisation(saved):
    from safetensors import safe_open

    _, path = saved
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == FORMAT
    assert {"normalizers.0.mean", "normalizers.0.std", "normalizers.2.std"} <= keys


def test_saving_again_overwrites_atomically(saved):
    _, path = saved
    other = trained_like_model(seed=5)
    save_fusion_model(path, other, {"note": "second"})
    loaded, doc = load_fusion_model(path)
    assert doc["note"] == "second" and "encoders" not in doc
    assert torch.equal(loaded.modality_bias, other.modality_bias)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_bad_cards_are_rejected_before_touching_disk(tmp_path):
    model = trained_like_model()
    with pytest.raises(ValueError, match="reserved keys \\['format'\\]"):
        save_fusion_model(tmp_path / "a", model, {"format": "mine"})
    with pytest.raises(ValueError, match="not strict JSON"):
        save_fusion_model(tmp_path / "b", model, {"metrics": {"auc": float("nan")}})
    with pytest.raises(ValueError, match="not strict JSON"):
        save_fusion_model(tmp_path / "c", model, {"when": object()})
    assert not any(tmp_path.iterdir())


def test_missing_directory_and_files_name_the_path(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_fusion_model(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        load_fusion_model(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_fusion_model(tmp_path / "empty")
    _, path = saved
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_fusion_model(path)


def edit_config(path, **changes):
    doc = json.loads((path / CONFIG_FILE).read_text())
    doc.update(changes)
    (path / CONFIG_FILE).write_text(json.dumps(doc))
    return doc


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "something.else"}, "has format 'something.else'"),
        ({"format_version": FORMAT_VERSION + 1}, "newer than"),
        ({"format_version": "1"}, "invalid format_version"),
        ({"fusion": {"modalities": ["a"], "dims": [0]}}, "bad 'fusion' section"),
    ],
)
def test_wrong_format_or_version_is_a_clear_error(saved, changes, message):
    _, path = saved
    edit_config(path, **changes)
    with pytest.raises(ValueError, match=message) as info:
        load_fusion_model(path)
    assert str(path) in str(info.value)


def test_corrupt_json_and_mismatched_weights(saved):
    _, path = saved
    good = (path / CONFIG_FILE).read_text()
    (path / CONFIG_FILE).write_text(good[:-20])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_fusion_model(path)
    (path / CONFIG_FILE).write_text(good)

    # weights that do not match the recorded hash (e.g. a torn overwrite)
    (path / WEIGHTS_FILE).write_bytes((path / WEIGHTS_FILE).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256"):
        load_fusion_model(path)

    # config edited to a different architecture: state dict no longer fits
    save_fusion_model(path, trained_like_model(), {})
    doc = json.loads((path / CONFIG_FILE).read_text())
    doc["fusion"]["latent_dim"] = 10
    (path / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="does not fit the config"):
        load_fusion_model(path)

    # not a safetensors file at all (hash removed so the header check is what fails)
    doc.pop("weights_sha256")
    doc["fusion"]["latent_dim"] = 12
    (path / CONFIG_FILE).write_text(json.dumps(doc))
    (path / WEIGHTS_FILE).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_fusion_model(path)
