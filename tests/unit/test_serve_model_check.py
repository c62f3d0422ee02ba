"""A model directory whose parts disagree on a modality's size is refused at load, in one line
naming the modality and both sizes, by the shared loader that `dmf serve` and `dmf embed` use
(before any Ray starts)."""

import json
from pathlib import Path

import pytest

from dmf_ray.artifact import read_model_config

SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCN", "CCCl", "OCCO"]


@pytest.fixture
def model(tmp_path) -> Path:
    from dmf_ray.testing import save_random_model

    return Path(save_random_model(tmp_path / "model", SMILES, ["ecfp", "maccs"], latent_dim=8, gate_hidden=8,
                                  attention_hidden=8, decoder_hidden=8))


def edit_config(model: Path, change) -> None:
    path = model / "config.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_encoder_spec_smaller_than_the_weights_is_refused(model):
    read_model_config(model)  # consistent: accepted
    edit_config(model, lambda d: d["modalities"]["ecfp"].update(dim=1024, args={"n_bits": 1024, "radius": 2}))
    with pytest.raises(ValueError) as info:
        read_model_config(model)
    message = str(info.value)
    assert "\n" not in message
    assert "modality 'ecfp'" in message and "1024" in message and "2048" in message


def test_config_dims_that_differ_from_the_weights_are_refused(model):
    edit_config(model, lambda d: d["fusion"].update(dims=[1024, 167]))
    with pytest.raises(ValueError, match="modality 'ecfp': config.json says 1024 dims but the fusion weights expect 2048"):
        read_model_config(model)


def test_dmf_embed_and_dmf_serve_refuse_it_in_one_line(model, tmp_path, capsys):
    from dmf_ray.cli import main
    from dmf_ray.pipelines.serve import run_server

    edit_config(model, lambda d: d["modalities"]["ecfp"].update(dim=1024, args={"n_bits": 1024, "radius": 2}))
    inputs = tmp_path / "in.smi"
    inputs.write_text("\n".join(SMILES) + "\n")
    assert main(["embed", "--model", str(model), str(inputs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modality 'ecfp'" in err[0] and "1024" in err[0] and "2048" in err[0]
    with pytest.raises(ValueError, match="modality 'ecfp'.*1024.*2048"):
        run_server(str(model), port=1)  # refused before Ray starts: nothing listens, nothing to stop
