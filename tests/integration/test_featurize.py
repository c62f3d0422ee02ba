"""Featurize into a real store on the shared local Ray: accounting, failures, resume, partial pairing."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

import plugin_encoders  # noqa: F401  (registers the test encoders in this process)
from progress_check import ProgressRecorder
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.molecules import canonical_id
from dmf_ray.store import INPUTS_TABLE, EmbeddingStore, StoreError

pytestmark = pytest.mark.integration

VALID = [
    "CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCl", "c1ccncc1", "CC(C)O", "OCCO", "C1CCCCC1", "CC#N",
    "COC", "CCCCCl", "NCC(=O)O", "c1ccc(Cl)cc1", "CC(=O)Nc1ccc(O)cc1", "O=C=O", "CCOC(=O)C", "CN1CCCC1",
]
INVALID = ["C1CC", "CC(C", "C(C)(C)(C)(C)C", "not_a_smiles"]


def write_smi(path, smiles):
    path.write_text("".join(f"{s} id{i}\n" for i, s in enumerate(smiles)))
    return str(path)


def read_info(store):
    return EmbeddingStore.open(store).info()


def test_every_input_row_is_stored_or_a_recorded_failure(ray_session, tmp_path):
    rows = VALID + INVALID + ["OCC", "C(O)C"]  # two more spellings of ethanol
    src = write_smi(tmp_path / "lib.smi", rows)
    store = str(tmp_path / "store")
    progress = ProgressRecorder()
    result = featurize([src], store, ["ecfp", "maccs", "test-no-nitrogen", "test-no-nitrogen-inline"], shard_rows=7,
                       log=lambda m: None, progress=progress)
    # Input rows of finished shards (4 of 7, 7, 7, 5 rows), with pooled and inline encoders.
    progress.check(len(rows))
    assert len(progress.calls) >= 2
    info = read_info(store)
    assert info["inputs"] == len(rows) == info["stored_rows"] + info["failed"]
    assert info["failed"] == len(INVALID) and result.failed == len(INVALID)
    assert info["molecules"] == len(VALID)  # ethanol stored once
    failures = EmbeddingStore.open(store).failures_table().to_pylist()
    assert sorted(f["input"] for f in failures) == sorted(INVALID)
    assert all(f["source"] == src and f["reason"] for f in failures)
    by_input = {f["input"]: f for f in failures}
    assert by_input["C1CC"]["row"] == len(VALID) + 1 and "unclosed ring" in by_input["C1CC"]["reason"]

    # A failing encoder, pooled or inline, leaves its modality absent for nitrogen molecules
    # only, with a reason.
    nitrogen = [s for s in VALID if "N" in s.replace("Cl", "").upper().replace("C", "")]
    for name in ("test-no-nitrogen", "test-no-nitrogen-inline"):
        modality = info["modalities"][name]
        assert modality["failed"] == len(nitrogen) and modality["count"] == len(VALID) - len(nitrogen), name
        table = EmbeddingStore.open(store).modality_table(name).to_pylist()
        assert {r["error"] for r in table if r["embedding"] is None} == {f"{name}: ValueError: refuses nitrogen"}
    assert info["modalities"]["ecfp"]["count"] == len(VALID)

    # Every modality table holds each molecule at most once.
    for name in info["modalities"]:
        ids = EmbeddingStore.open(store).modality_table(name, ["mol_id"]).column("mol_id").to_pylist()
        assert len(ids) == len(set(ids))


def test_rerun_after_crash_finishes_without_duplicates(ray_session, tmp_path):
    smiles = [s for s in VALID if "Cl" not in s] * 3 + [s for s in VALID if "Cl" in s]  # Cl only at the end
    src = write_smi(tmp_path / "lib.smi", smiles)
    store = str(tmp_path / "store")
    marker = tmp_path / "armed"
    marker.write_text("crash on chlorine")
    encoders = ["ecfp", f"test-crash={marker}"]
    with pytest.raises(Exception, match="simulated crash"):
        featurize([src], store, encoders, shard_rows=6, log=lambda m: None)
    s = EmbeddingStore.open(store)
    shards_before = len(s.committed_keys("modality=test-crash"))
    # A leftover part file from the dead run, without a commit marker, must not survive.
    os.makedirs(s.modality_dir("ecfp"), exist_ok=True)
    stray = f"{s.modality_dir('ecfp')}/ffffffffffff-000099--0000000000000000.parquet"
    pq.write_table(EmbeddingStore.open(store).modality_table("test-crash").slice(0, 0), stray)
    marker.unlink()
    featurize([src], store, encoders, shard_rows=6, log=lambda m: None)
    info = read_info(store)
    assert info["inputs"] == len(smiles) and info["failed"] == 0
    assert info["molecules"] == len(VALID)
    for name in ("ecfp", "test-crash"):
        ids = EmbeddingStore.open(store).modality_table(name, ["mol_id"]).column("mol_id").to_pylist()
        assert sorted(ids) == sorted({canonical_id(x) for x in VALID}), name
    n_shards = -(-len(smiles) // 6)
    assert len(EmbeddingStore.open(store).committed_keys(INPUTS_TABLE)) == n_shards
    assert shards_before < n_shards
    # A third run has nothing left to do.
    again = featurize([src], store, encoders, shard_rows=6, log=lambda m: None)
    assert again.rows_read == 0 and sum(again.encoded.values()) == 0
    assert read_info(store)["inputs"] == len(smiles)


def test_adding_molecules_and_a_modality_later_gives_partial_coverage(ray_session, tmp_path):
    first = write_smi(tmp_path / "a.smi", VALID[:10])
    second = tmp_path / "b.csv"
    second.write_text("name,smiles\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(VALID[8:])))
    store = str(tmp_path / "store")
    quiet = {"log": lambda m: None}
    featurize([first], store, ["ecfp"], **quiet)
    progress = ProgressRecorder()  # inline encoders only; the CSV header is not a row
    featurize([str(second)], store, ["ecfp"], smiles_column="smiles", id_column="name", progress=progress, **quiet)
    progress.check(len(VALID[8:]))

    def broken_display(done, total):
        raise RuntimeError("display gone")

    lines = []  # a callback that raises is reported once and does not stop the run
    featurize([first], store, ["atompair"], log=lines.append, progress=broken_display)
    assert [line for line in lines if "progress callback failed" in line] == [
        "featurize: the progress callback failed (RuntimeError: display gone); continuing without progress reports"]
    info = read_info(store)
    assert info["molecules"] == len(VALID)
    assert info["inputs"] == 10 + len(VALID[8:])  # the first file was not counted twice
    assert info["modalities"]["ecfp"]["count"] == len(VALID)
    assert info["modalities"]["atompair"]["count"] == 10

    paired = EmbeddingStore.open(store).read_numpy(["ecfp", "atompair"], with_smiles=True)
    assert len(paired) == len(VALID)
    assert paired.present[:, 0].all() and paired.present[:, 1].sum() == 10
    assert (paired.values["atompair"][~paired.present[:, 1]] == 0).all()
    expected = {canonical_id(s) for s in VALID[:10]}
    assert {i for i, p in zip(paired.mol_ids, paired.present[:, 1]) if p} == expected
    # the source id column survives from the CSV
    sources = EmbeddingStore.open(store).molecules_table().to_pylist()
    assert {r["source_id"] for r in sources if r["source"] == str(second)} == {f"m{i}" for i in range(len(VALID[8:]))}

    # Readable straight by pyarrow/pandas, without dmf_ray.
    df = pq.read_table(f"{store}/modalities/atompair").to_pandas()
    assert len(df) == 10 and len(df.embedding.iloc[0]) == 2048

    # As a Ray Dataset joined on mol_id with a presence mask.
    ds = EmbeddingStore.open(store).read_dataset(["ecfp", "atompair"])
    rows = ds.take_all()
    assert len(rows) == len(VALID)
    present = np.stack([r["present"] for r in rows])
    assert present[:, 0].all() and present[:, 1].sum() == 10
    by_id = {r["mol_id"]: r for r in rows}
    i = list(paired.mol_ids).index(canonical_id("CCO"))
    np.testing.assert_array_equal(by_id[canonical_id("CCO")]["ecfp"], paired.values["ecfp"][i].astype(np.float32))

    # Mixing two encoders under one name is refused.
    with pytest.raises(StoreError, match="modality 'ecfp' is stored with"):
        from dmf_ray.pipelines.featurize import resolve_encoders

        s = EmbeddingStore.open(store)
        s.register_modalities({"ecfp": resolve_encoders(["ecfp"])["ecfp"].spec() | {"args": {"radius": 3, "n_bits": 2048}}})


def test_incompatible_store_version_is_refused(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"format": "dmf_ray.store", "format_version": 99}))
    with pytest.raises(StoreError, match="format version 99 is not supported"):
        EmbeddingStore.open(str(store))
