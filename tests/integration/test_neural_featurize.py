"""The built-in neural modalities in a real store on the shared Ray: ChemNet partially present
(a SMILES too long for it), Chemprop (when the [graph] extra is installed), one vector per
molecule id whatever the input spelling, and the closing count equal to what is stored."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dmf_ray.encoders import encoder_from_option
from dmf_ray.molecules import canonical_id, parse_smiles
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.store import EmbeddingStore

pytestmark = pytest.mark.integration

VALID = [
    "CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCl", "c1ccncc1", "CC(C)O", "OCCO", "C1CCCCC1", "CC#N",
    "CC(=O)Nc1ccc(O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
]
CHIRAL = ["N[C@@H](C)C(=O)O", "OC(=O)[C@H](C)N"]  # two spellings of L-alanine
TOO_LONG = "C" * 360  # canonical SMILES of 360 characters: ChemNet reads at most 349


def test_neural_modalities_in_a_partially_paired_store(ray_session, tmp_path):
    graph = importlib.util.find_spec("chemprop") is not None and importlib.util.find_spec("admet_ai") is not None
    # Alanine's two spellings fall in two shards (shard_rows=8): one id, one stored row.
    smiles = VALID[:7] + [CHIRAL[0]] + VALID[7:] + [TOO_LONG, CHIRAL[1]]
    src = tmp_path / "lib.smi"
    src.write_text("".join(f"{s} id{i}\n" for i, s in enumerate(smiles)))
    store = str(tmp_path / "store")
    encoders = ["ecfp", "chemnet"] + (["chemprop"] if graph else [])
    result = featurize([str(src)], store, encoders, shard_rows=8, log=lambda m: None)
    assert result.failed == 0

    s = EmbeddingStore.open(store)
    info = s.info()
    distinct = len(VALID) + 2  # + alanine + the long chain
    assert info["molecules"] == distinct
    net = info["modalities"]["chemnet"]
    assert (net["count"], net["failed"], net["dim"], net["dtype"]) == (distinct - 1, 1, 512, "float32")
    # The closing line's count is what each table holds, not per-shard rows before deduplication.
    for name in encoders:
        assert result.encoded[name] == s.modality_table(name).num_rows == distinct
    assert s.modalities["chemnet"]["args"]["model"] == "package:fcd"
    assert s.modalities["chemnet"]["memory"] > 0

    rows = {r["mol_id"]: r for r in s.modality_table("chemnet").to_pylist()}
    assert rows[canonical_id(TOO_LONG)]["embedding"] is None
    assert rows[canonical_id(TOO_LONG)]["error"] == "chemnet: canonical SMILES has 360 characters; ChemNet reads at most 349"

    # Stored vectors are the encoders' own, computed here in this process.
    names = ["ecfp", "chemnet"] + (["chemprop"] if graph else [])
    paired = s.read_numpy(names)
    index = {m: i for i, m in enumerate(paired.mol_ids)}
    assert paired.present[:, 0].all() and paired.present[:, 1].sum() == distinct - 1
    for name in names[1:]:
        _, encoder = encoder_from_option(name)
        molecules = [parse_smiles(x) for x in VALID + CHIRAL[1:]]
        want = encoder.encode(molecules).values
        got = np.stack([paired.values[name][index[m.mol_id]] for m in molecules])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if graph:
        assert paired.present[:, 2].all()
        assert "moleculenet:bbbp" in s.modalities["chemprop"]["trained_on"]
