"""dmf embed over files and over a store, on the shared local Ray, with a small real model."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from dmf_ray.artifact import save_fusion_model
from dmf_ray.cli import console, main as dmf
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.inference import FusionEmbedder
from dmf_ray.model.fusion import DynamicFusion, FusionConfig
from dmf_ray.store import EmbeddingStore
from progress_check import ProgressRecorder

pytestmark = pytest.mark.integration

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C1CC", "CCN(CC)CC", "OCC", "O=C(O)c1ccccc1OC(C)=O", "bad("]
NAMES = ["ecfp", "maccs", "rdkit2d"]


@pytest.fixture(scope="module")
def library(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    src = root / "lib.smi"
    src.write_text("".join(f"{s} id{i}\n" for i, s in enumerate(SMILES, 1)))  # .smi: SMILES, then the id
    store = str(root / "store")
    featurize([str(src)], store, NAMES, log=lambda m: None)
    s = EmbeddingStore.open(store)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = DynamicFusion(FusionConfig(modalities=NAMES, dims=[s.modalities[n]["dim"] for n in NAMES], latent_dim=16))
    paired = s.read_numpy(NAMES)
    model.set_normalization({n: (paired.values[n].mean(0), paired.values[n].std(0)) for n in NAMES})
    model_dir = root / "model"
    save_fusion_model(model_dir, model, card={"modalities": {n: s.modalities[n] for n in NAMES}})
    return root, str(src), store, str(model_dir)


def recorded_bar(monkeypatch) -> ProgressRecorder:
    """What the workflow reports to ``dmf``'s progress bar (shown only on a terminal)."""
    progress = ProgressRecorder()
    monkeypatch.setattr(console.Step, "update", lambda self, done, total=None: progress(done, total))
    monkeypatch.setattr(console.Step, "live", property(lambda self: True))  # as on a terminal
    return progress


def test_embed_files_with_a_dropped_modality(library, monkeypatch):
    root, src, _, model_dir = library
    out = root / "fused.parquet"
    assert dmf(["embed", "--model", model_dir, src, "--out", str(out), "--drop-modalities", "maccs"]) == 0
    table = pq.read_table(out).to_pandas().sort_values("row")
    assert len(table) == len(SMILES)  # one row per input row, failures included
    assert list(table.columns[:3]) == ["mol_id", "smiles", "embedding"]
    bad = table[table.error.notna()]
    assert sorted(bad.row) == [4, 8] and bad.embedding.isna().all()
    assert bad.error.str.contains("is invalid").all()
    assert list(table.source_id) == [f"id{r}" for r in table.row]  # the input's ids, on failures too
    good = table[table.error.isna()]
    assert (good.attn_maccs == 0).all()
    assert all(list(p) == ["ecfp", "rdkit2d"] for p in good.present)
    np.testing.assert_allclose(good.attn_ecfp + good.attn_rdkit2d, 1.0, rtol=1e-5)

    # Same vectors as the in-process path the service uses.
    expected = FusionEmbedder(model_dir).embed_smiles(list(good.smiles), drop=["maccs"])
    np.testing.assert_allclose(np.stack(good.embedding.to_list()), np.stack([e["embedding"] for e in expected]), atol=1e-5)

    # A rerun overwrites instead of appending; its bar counts the rows written of the input rows.
    progress = recorded_bar(monkeypatch)
    assert dmf(["embed", "--model", model_dir, src, "--out", str(out), "--drop-modalities", "maccs"]) == 0
    assert pq.read_table(out).num_rows == len(SMILES)
    progress.check(len(SMILES))


def check_stored_rows_reused(table, model_dir: str, rows: int) -> None:
    """``table``: embed's output for a store featurized from ``library``'s file (``rows`` of it,
    with rdkit2d dropped): every row of it, failures included, fused from the stored vectors."""
    assert sorted(table.row) == list(range(1, rows + 1))  # every input row, failures included
    bad = table[table.error.notna()]
    assert sorted(bad.row) == [4, 8] and bad.error.str.contains("is invalid").all()
    good = table[table.error.isna()]
    assert (good.attn_rdkit2d == 0).all() and all(list(p) == ["ecfp", "maccs"] for p in good.present)
    # The input's ids, kept by the store (its failures keep source, row and the input text only).
    assert list(good.source_id) == [f"id{r}" for r in good.row] and bad.source_id.isna().all()
    expected = {r["mol_id"]: r for r in FusionEmbedder(model_dir).embed_smiles(list(good.smiles), drop=["rdkit2d"])}
    for _, row in good.iterrows():
        np.testing.assert_allclose(row.embedding, expected[row.mol_id]["embedding"], atol=1e-5)
        assert row.attn_maccs == pytest.approx(expected[row.mol_id]["attention"]["maccs"], abs=1e-5)


def test_embed_a_store_reuses_stored_vectors(library, monkeypatch):
    # In memory (the store is small); the Ray Data join path is checked on the partially paired
    # store below, which holds these rows too (one Ray Data run instead of two).
    root, src, store, model_dir = library
    out = root / "from_store.parquet"
    progress = recorded_bar(monkeypatch)
    assert dmf(["embed", "--model", model_dir, "--store", store, "--out", str(out), "--drop-modalities", "rdkit2d"]) == 0
    progress.check(len(SMILES))  # rows written of the store's input rows
    check_stored_rows_reused(pq.read_table(out).to_pandas(), model_dir, len(SMILES))


def test_embed_errors_are_one_line(library, capsys):
    root, src, _, model_dir = library
    assert dmf(["embed", "--model", model_dir, src, "--out", str(root / "x"), "--drop-modalities", "nope"]) == 2
    assert "unknown modality 'nope'" in capsys.readouterr().err
    assert dmf(["embed", "--model", str(root / "missing"), src, "--out", str(root / "x")]) == 2
    # --out at the model's own folder: refused, the model kept (embed replaces what out holds).
    capsys.readouterr()
    assert dmf(["embed", "--model", model_dir, src, "--out", model_dir]) == 2
    assert "not an earlier embed output" in capsys.readouterr().err
    FusionEmbedder(model_dir)  # still loads


@pytest.mark.slow
@pytest.mark.parametrize("join", ["in memory", "ray data"])
def test_embed_a_partially_paired_store_fuses_only_what_is_stored(library, join, monkeypatch):
    root, src, _, model_dir = library
    store = str(root / f"partial_{join.replace(' ', '_')}")
    featurize([src], store, NAMES, log=lambda m: None)
    extra = root / "extra.smi"
    extra.write_text("CCCCCCO\nc1ccncc1\n")
    featurize([str(extra)], store, ["ecfp"], log=lambda m: None)  # these two molecules have ecfp only
    if join == "ray data":
        monkeypatch.setattr("dmf_ray.store.IN_MEMORY_JOIN_MAX_BYTES", 0)
    out = root / f"partial_{join.replace(' ', '_')}.parquet"
    progress = recorded_bar(monkeypatch)
    assert dmf(["embed", "--model", model_dir, "--store", store, "--out", str(out), "--drop-modalities", "rdkit2d"]) == 0
    progress.check(len(SMILES) + 2)  # rows written of the store's input rows (both files)
    table = pq.read_table(out).to_pandas()
    check_stored_rows_reused(table[table.source.str.endswith("lib.smi")], model_dir, len(SMILES))
    ecfp_only = table[table.source.str.endswith("extra.smi")]
    assert len(ecfp_only) == 2 and ecfp_only.error.isna().all()
    assert all(list(p) == ["ecfp"] for p in ecfp_only.present) and (ecfp_only.attn_maccs == 0).all()
    expected = {r["mol_id"]: r for r in FusionEmbedder(model_dir).embed_smiles(list(ecfp_only.smiles), modalities=["ecfp"])}
    for _, row in ecfp_only.iterrows():
        np.testing.assert_allclose(row.embedding, expected[row.mol_id]["embedding"], atol=1e-5)
