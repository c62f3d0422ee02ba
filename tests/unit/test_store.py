"""The store owns its format: writes, commits, the run lease and fencing, superseded shards,
format versions (no Ray: plain files)."""

import json

import numpy as np
import pytest

from dmf_ray.files import join, write_json
from dmf_ray.store import INPUTS_TABLE, EmbeddingStore, LeaseLostError, StoreError, modality_table


def _molecules(*ids):
    return {"mol_id": list(ids), "smiles": ["C"] * len(ids), "row": list(range(1, len(ids) + 1)),
            "source_id": [None] * len(ids)}


def _write_shard(store, shard, ids, file="f1", source="lib.smi"):
    store.write_inputs(shard, source=source, file=file, last=False, inputs=len(ids), molecules=_molecules(*ids), failures=[])


def test_a_fenced_run_cannot_commit_and_its_late_files_do_not_count(tmp_path):
    uri = str(tmp_path / "store")
    first = EmbeddingStore.open_or_create(uri)
    first.register_modalities({"m": {"encoder": "x", "dim": 2, "dtype": "float32", "args": {}, "version": "1"}})
    first = EmbeddingStore.open(uri)
    run1 = first.begin_run()
    _write_shard(first, "f1-000000", ["a", "b"])
    first.write_modality_part("m", "f1-000000", ["a", "b"], np.ones((2, 2)), [None, None])
    first.commit_modality("m", "f1-000000", 2)

    second = EmbeddingStore.open(uri)
    run2 = second.begin_run()  # the first run is now fenced: only what it committed so far counts
    assert run1 != run2 and second.log.holder() == run2
    with pytest.raises(LeaseLostError, match=f"another featurize run \\({run2}\\) took over this store; run {run1} stops"):
        _write_shard(first, "f1-000001", ["c"])
    # A marker the dead run writes anyway (it passed the lease check just before) does not count.
    write_json(first.fs, join(first.root, "_commits", INPUTS_TABLE, f"f1-000002~{run1}.json"),
               {"source": "lib.smi", "file": "f1", "last": True, "inputs": 1, "valid": 1, "failed": 0})
    reader = EmbeddingStore.open(uri)
    assert reader.committed_keys(INPUTS_TABLE) == {"f1-000000"}
    assert reader.committed_keys(modality_table("m")) == {"f1-000000"}
    assert reader.molecules_table(["mol_id"]).column("mol_id").to_pylist() == ["a", "b"]
    assert second.remove_uncommitted() == 2  # the late marker and the late molecules file
    assert EmbeddingStore.open(uri).info()["inputs"] == 2


def test_a_changed_file_replaces_its_old_shards_and_orphan_vectors_go(tmp_path):
    uri = str(tmp_path / "store")
    store = EmbeddingStore.open_or_create(uri)
    store.register_modalities({"m": {"encoder": "x", "dim": 2, "dtype": "float32", "args": {}, "version": "1"}})
    store.begin_run()
    _write_shard(store, "old-000000", ["a", "b"], file="old")
    _write_shard(store, "oth-000000", ["c"], file="oth", source="other.smi")
    store.write_modality_part("m", "old-000000", ["a", "b"], np.ones((2, 2)), [None, None])
    store.commit_modality("m", "old-000000", 2)
    store.begin_run()
    assert store.supersede({"lib.smi": "new", "other.smi": "oth"}) == {"lib.smi": 1}
    _write_shard(store, "new-000000", ["a"], file="new")
    assert store.remove_uncommitted() == 1  # the old shard's molecules file
    assert store.deduplicate("m") == 0  # no duplicates; b's vector goes too: no current shard holds b
    info = EmbeddingStore.open(uri).info()
    assert (info["inputs"], info["molecules"], info["modalities"]["m"]["count"]) == (2, 2, 1)


def test_an_old_store_format_gets_one_clear_line(tmp_path):
    uri = str(tmp_path / "store")
    EmbeddingStore.open_or_create(uri)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    manifest["format_version"] = 1
    (tmp_path / "store" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError) as err:
        EmbeddingStore.open(uri)
    assert str(err.value) == (f"{uri}: store format version 1 was written by an older dmf_ray whose molecule ids can "
                              f"differ (this dmf_ray {__import__('dmf_ray').__version__} writes version 2); featurize into a new store")


def test_inputs_must_add_up(tmp_path):
    store = EmbeddingStore.open_or_create(str(tmp_path / "store"))
    store.begin_run()
    with pytest.raises(ValueError, match="1 molecules \\+ 0 failures != 2 inputs"):
        store.write_inputs("k-000000", source="s", file="k", last=True, inputs=2, molecules=_molecules("a"), failures=[])
