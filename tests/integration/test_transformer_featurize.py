"""A transformer preset as a modality next to ecfp: featurize into a real store on the shared Ray."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dmf_ray.encoders import encoder_from_option
from dmf_ray.pipelines.featurize import featurize, resolve_encoders
from dmf_ray.molecules import canonical_id, parse_smiles
from dmf_ray.store import EmbeddingStore, StoreError

pytestmark = pytest.mark.integration

VALID = [
    "CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCl", "c1ccncc1", "CC(C)O", "OCCO", "C1CCCCC1", "CC#N",
    "COC", "NCC(=O)O", "c1ccc(Cl)cc1", "CC(=O)Nc1ccc(O)cc1", "O=C=O", "CN1CCCC1",
]
NOT_SELFIES = "FI(F)F"
TOO_LONG = "C" * 40  # 42 tokens with [CLS] and [SEP]


@pytest.fixture
def model_dir(tmp_path):
    pytest.importorskip("transformers")
    from dmf_ray.encoders.hf import save_random_bart

    return save_random_bart(str(tmp_path / "tiny-bart"), smiles=VALID + [TOO_LONG])


def test_transformer_modality_round_trips_through_the_store(ray_session, tmp_path, model_dir):
    smiles = VALID + [NOT_SELFIES, TOO_LONG, "OCC"]  # OCC: ethanol again
    src = tmp_path / "lib.smi"
    src.write_text("".join(f"{s} id{i}\n" for i, s in enumerate(smiles)))
    store = str(tmp_path / "store")
    option = f"selfies-ted={model_dir};max_length=24;truncation=error"
    result = featurize([str(src)], store, ["ecfp", option], shard_rows=8, log=lambda m: None)
    assert result.failed == 0

    s = EmbeddingStore.open(store)
    info = s.info()
    distinct = len(VALID) + 2
    assert info["molecules"] == distinct
    assert info["modalities"]["ecfp"]["count"] == distinct
    ted = info["modalities"]["selfies-ted"]
    assert ted["count"] == len(VALID) and ted["failed"] == 2 and ted["dim"] == 32 and ted["dtype"] == "float16"

    # The manifest names the model by path and content hash, with every arg that shapes a vector.
    args = s.modalities["selfies-ted"]["args"]
    assert args["model"] == os.path.realpath(model_dir) and args["sha256"].startswith("sha256:")
    assert (args["input"], args["pooling"], args["max_length"], args["truncation"]) == ("selfies", "mean", 24, "error")

    rows = {r["mol_id"]: r for r in s.modality_table("selfies-ted").to_pylist()}
    assert rows[canonical_id(NOT_SELFIES)]["embedding"] is None
    assert "SELFIES conversion failed" in rows[canonical_id(NOT_SELFIES)]["error"]
    assert rows[canonical_id(TOO_LONG)]["error"] == "selfies-ted: 42 tokens > max_length 24 (truncation='error')"

    # Stored vectors are what the encoder gives in this process, one molecule at a time.
    _, encoder = encoder_from_option(option)
    paired = s.read_numpy(["ecfp", "selfies-ted"])
    assert paired.present[:, 0].all() and paired.present[:, 1].sum() == len(VALID)
    index = {m: i for i, m in enumerate(paired.mol_ids)}
    for smi in VALID:
        mol = parse_smiles(smi)
        want = encoder.encode([mol]).values[0].astype(np.float32)
        got = paired.values["selfies-ted"][index[mol.mol_id]].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)

    # Another model under the same name is refused before any work: different weights at the
    # same path change the content hash.
    from dmf_ray.encoders.hf import save_random_bart

    save_random_bart(model_dir, smiles=VALID + [TOO_LONG], seed=7)
    with pytest.raises(StoreError, match="modality 'selfies-ted' is stored with"):
        s.register_modalities({n: e.spec() for n, e in resolve_encoders(["ecfp", option]).items()})
