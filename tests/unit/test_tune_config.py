"""TuneConfig: the search grammar, the fixed settings and the checks made before Ray starts."""

from __future__ import annotations

import pytest

from dmf_ray.pipelines.tune import SearchDim, TuneConfig, parse_search, parse_value


def test_search_grammar():
    assert parse_search("lr=loguniform:1e-4:1e-2") == SearchDim("lr", "loguniform", (1e-4, 1e-2))
    assert parse_search("model.latent_dim=choice:64,128") == SearchDim("model.latent_dim", "choice", (64, 128))
    assert parse_search("masking.kind=grid:linear,cosine") == SearchDim("masking.kind", "grid", ("linear", "cosine"))
    assert parse_search("seed=randint:0:5") == SearchDim("seed", "randint", (0, 5))
    assert parse_value("true") is True and parse_value("1e-3") == 1e-3 and parse_value("abc") == "abc"


@pytest.mark.parametrize("item, message", [
    ("lr", "expected KEY=VALUE"),
    ("lr=normal:0:1", "unknown kind 'normal'"),
    ("lr=uniform:1", "two numbers"),
    ("lr=loguniform:0:1", "0 < LOW < HIGH"),
    ("seed=randint:0:2.5", "randint needs integers"),
    ("lr=choice:", "choice needs values"),
])
def test_bad_search_items(item, message):
    with pytest.raises(ValueError, match=message):
        parse_search(item)


def test_every_problem_in_one_message():
    with pytest.raises(ValueError) as err:
        TuneConfig(store="s", out="s3://bucket/x", epochs=0, search=["lr=foo:1", "epochs=grid:1,2", "lr=grid:1,2",
                                                                     "model.align_weight=uniform:0:1"],
                   settings=["out=x", "model.align_weight=0.1"])
    text = str(err.value)
    for part in ("epochs: input should be greater than or equal to 1", "unknown kind 'foo'",
                 "search epochs: set by tune", "settings out: use tune's own out", "settings model.align_weight: "
                 "also searched", "metric: val/loss depends on the loss weights", "out: must be a local directory"):
        assert part in text, part


def test_settings_from_a_mapping_or_strings():
    nested = TuneConfig(store="s", out="o", search=["lr=grid:0.1"], settings={"batch_size": 32, "model": {"latent_dim": 8}})
    flat = TuneConfig(store="s", out="o", search="lr=grid:0.1", settings=["batch_size=32", "model.latent_dim=8"])
    assert nested.fixed() == flat.fixed() == {"batch_size": 32, "model": {"latent_dim": 8}}
    weights = TuneConfig(store="s", out="o", search=["model.align_weight=uniform:0:1"], metric="val/cos_mean")
    assert weights.dims()[0].path == "model.align_weight"
