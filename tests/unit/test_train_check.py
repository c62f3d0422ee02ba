"""dmf_ray.pipelines.train.check_training: every check that needs no cluster answers before Ray
starts (unknown modality, a finished model -> nothing to do, an out trained with other settings)."""

from __future__ import annotations

import pytest

from dmf_ray.artifact import save_fusion_model
from dmf_ray.encoders import create_encoder
from dmf_ray.model import DynamicFusion, FusionConfig
from dmf_ray.molecules import parse_smiles
from dmf_ray.pipelines.train import TrainConfig, check_training, train
from dmf_ray.store import EmbeddingStore

SMILES = ["CCO", "c1ccccc1O", "CC(=O)O", "CCN", "OCCO", "CCCl", "c1ccncc1", "CC(C)O"]
NAMES = ["ecfp", "maccs"]  # the store lists its modalities in name order


@pytest.fixture
def store(tmp_path) -> str:
    """A real store written through EmbeddingStore's own API (no Ray)."""
    uri = str(tmp_path / "store")
    s = EmbeddingStore.open_or_create(uri)
    s.begin_run()
    encoders = {n: create_encoder(n) for n in NAMES}
    s.register_modalities({n: e.spec() for n, e in encoders.items()})
    molecules = [parse_smiles(x) for x in SMILES]
    ids = [m.mol_id for m in molecules]
    for name, encoder in encoders.items():
        batch = encoder.encode(molecules)
        s.write_modality_part(name, "s0", ids, batch.values, list(batch.errors))
        s.commit_modality(name, "s0", len(ids))
    return uri


def _no_ray() -> None:
    import ray

    assert not ray.is_initialized(), "a check that needs no cluster started Ray"


def test_unknown_modality_and_an_empty_store_are_refused_without_ray(store, tmp_path):
    with pytest.raises(ValueError, match="unknown modality 'smiles': store .* has ecfp, maccs"):
        train(TrainConfig(store=store, out=str(tmp_path / "m"), modalities=["maccs", "smiles"]), log=lambda m: None)
    EmbeddingStore.open_or_create(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is empty"):
        check_training(TrainConfig(store=str(tmp_path / "empty"), out=str(tmp_path / "m")))
    _no_ray()


def test_a_finished_model_is_nothing_to_do_and_other_settings_are_refused_without_ray(store, tmp_path):
    config = TrainConfig(store=store, out=str(tmp_path / "model"), epochs=2, model={"latent_dim": 8})
    check = check_training(config, log=lambda m: None)
    assert check.status == "fresh" and check.names == NAMES
    # What train() leaves behind: the model and a card whose fingerprint names these settings.
    model = DynamicFusion(FusionConfig.build(check.names, check.dims, config.model))
    save_fusion_model(tmp_path / "model", model, {"training": {**config.flat_settings(), "epochs": 2,
                                                               "fingerprint": check.fingerprint}, "metrics": {}})
    assert check_training(config).status == "complete"
    logs: list[str] = []
    result = train(config.model_copy(update={"workers": 3}), log=logs.append)  # workers change nothing
    assert result.already_complete and result.summary() == "epochs 2/2 (already trained, nothing to do)"
    assert any("nothing to do" in line for line in logs)
    with pytest.raises(ValueError, match="epochs: 2 -> 3"):
        check_training(TrainConfig(store=store, out=str(tmp_path / "model"), epochs=3, model={"latent_dim": 8}))
    with pytest.raises(ValueError, match="latent_dim: 8 -> 16"):
        check_training(TrainConfig(store=store, out=str(tmp_path / "model"), epochs=2, model={"latent_dim": 16}))
    _no_ray()
