"""Inputs from the real world (issue 15): every row accounted for, bounded cost per molecule,
ids that never split, and edits and dead runs that cannot corrupt a store."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import plugin_encoders  # noqa: F401  (registers the test encoders in this process)
from dmf_ray.inputs import InputError
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.store import INPUTS_TABLE, EmbeddingStore
from dmf_ray.store_commits import split_name

pytestmark = pytest.mark.integration
QUIET = {"log": lambda m: None}


def info_of(store):
    info = EmbeddingStore.open(store).info()
    assert info["inputs"] == info["stored_rows"] + info["failed"]  # the accounting identity, always
    return info


def assert_one_row_per_molecule(store):
    s = EmbeddingStore.open(store)
    molecules = set(s.molecules_table(["mol_id"]).column("mol_id").to_pylist())
    for name in s.modalities:
        ids = s.modality_table(name, ["mol_id"]).column("mol_id").to_pylist()
        assert len(ids) == len(set(ids)) and set(ids) == molecules, name


def test_bom_and_malformed_rows_early_and_late(ray_session, tmp_path):
    (tmp_path / "bom.smi").write_bytes(b"\xef\xbb\xbfsmiles name\nCCO a\nCCN b\nc1ccccc1 c\n")
    store = str(tmp_path / "s1")
    featurize([str(tmp_path / "bom.smi")], store, ["ecfp"], **QUIET)
    info = info_of(store)
    assert (info["inputs"], info["failed"]) == (3, 0)

    lines = [f"{'C' * (1 + i % 7)}O,m{i}" for i in range(30_000)]
    lines.insert(2, "C[C@H](O)CC |&1:1,4,r|,x")  # early: extra unquoted commas
    lines.insert(25_500, "CCN")  # late (after the first shard was read): a missing field
    (tmp_path / "lib.csv").write_text("smiles,id\n" + "\n".join(lines) + "\n")
    store = str(tmp_path / "s2")
    result = featurize([str(tmp_path / "lib.csv")], store, ["ecfp"], shard_rows=10_000, **QUIET)
    info = info_of(store)
    assert (info["inputs"], info["failed"], info["molecules"]) == (30_002, 2, 7)
    assert result.rows_read == 30_002 and result.failed == 2
    failures = sorted(EmbeddingStore.open(store).failures_table().to_pylist(), key=lambda f: f["row"])
    assert [(f["row"], f["input"], f["reason"]) for f in failures] == [
        (3, "C[C@H](O)CC |&1:1,4,r|,x", "malformed CSV row at line 4: expected 2 fields, got 4"),
        (25_501, "CCN", "malformed CSV row at line 25502: expected 2 fields, got 1"),
    ]
    assert all(f["source"] == str(tmp_path / "lib.csv") for f in failures)


def test_gzip_trailing_bytes_truncation_and_wrong_types(ray_session, tmp_path):
    garbage = tmp_path / "lib.smi.gz"
    garbage.write_bytes(gzip.compress(b"CCO a\nCCN b\nCCC c\n") + b"\x00junk")
    store = str(tmp_path / "s1")
    logged = []
    featurize([str(garbage)], store, ["ecfp"], log=logged.append)
    assert f"note: {garbage}: ignored 5 byte(s) after the end of the gzip data (as zcat does)" in logged
    assert (info_of(store)["inputs"], info_of(store)["failed"]) == (3, 0)

    truncated = tmp_path / "big.smi.gz"
    truncated.write_bytes(gzip.compress("".join(f"{'C' * (1 + i % 9)}O m{i}\n" for i in range(200_000)).encode())[:-64])
    store = str(tmp_path / "s2")
    with pytest.raises(InputError) as err:
        featurize([str(garbage), str(truncated)], store, ["ecfp"], shard_rows=5_000, start_ray=pytest.fail, **QUIET)
    assert str(err.value).startswith(f"{truncated}: truncated gzip file: its compressed data ends early")
    assert "\n" not in str(err.value)
    assert not os.path.exists(store) or info_of(store)["inputs"] == 0  # nothing of either file stored

    pq.write_table(pa.table({"smiles": [1.5, 2.5]}), tmp_path / "numbers.parquet")
    with pytest.raises(InputError, match="numbers.parquet: column 'smiles' holds double values, not SMILES text"):
        featurize([str(tmp_path / "numbers.parquet")], str(tmp_path / "s3"), ["ecfp"], **QUIET)


def test_an_oversized_molecule_keeps_its_other_modalities(ray_session, tmp_path):
    sizes = {"small": "CCOc1ccccc1", "501": "C" * 501, "2001": "C" * 2001, "5001": "C" * 5001}
    (tmp_path / "big.smi").write_text("".join(f"{s} {k}\n" for k, s in sizes.items()))
    store = str(tmp_path / "store")
    names = ["ecfp", "maccs", "rdkit2d", "atompair", "torsion"]
    featurize([str(tmp_path / "big.smi")], store, names, **QUIET)
    info = info_of(store)
    assert (info["inputs"], info["failed"], info["molecules"]) == (4, 0, 4)
    s = EmbeddingStore.open(store)
    id_of = {r["source_id"]: r["mol_id"] for r in s.molecules_table(["mol_id", "source_id"]).to_pylist()}
    limits = {"ecfp": 5_000, "maccs": 5_000, "rdkit2d": 500, "atompair": 500, "torsion": 2_000}
    for name in names:
        errors = {r["mol_id"]: r["error"] for r in s.modality_table(name, ["mol_id", "error"]).to_pylist()}
        for key in sizes:
            atoms = len(sizes[key]) if key != "small" else 8
            expected = (f"{name}: {atoms:,} heavy atoms exceeds the encoder's limit of {limits[name]:,}"
                        if atoms > limits[name] else None)
            assert errors[id_of[key]] == expected, (name, key)


# RDKit 2026.09 canonicalises each of these to the other string of its pair (rdkit/rdkit#8721, #6420).
OSCILLATING = [
    ("O=C(c1ccccc1C(=O)N1C(=O)c2ccccc2C1=O)N1C(=O)c2ccccc2C1=O",
     "O=C1c2ccccc2C(=O)N1C(=O)c1ccccc1C(=O)N1C(=O)c2ccccc2C1=O"),
    ("O=C(C[C@]1(c2ccc(-c3ccc(F)cc3)cc2)C2CC3CC1CC(C2)[C@@H]3O)N1CC(O)C1",
     "O=C(C[C@]1(c2ccc(-c3ccc(F)cc3)cc2)C2CC3CC1CC(C2)[C@H]3O)N1CC(O)C1"),
]


def test_oscillating_canonical_smiles_are_one_molecule_each(ray_session, tmp_path):
    rows = [s for pair in OSCILLATING for s in pair]
    (tmp_path / "osc.smi").write_text("".join(f"{s} r{i}\n" for i, s in enumerate(rows)))
    store = str(tmp_path / "store")
    featurize([str(tmp_path / "osc.smi")], store, ["ecfp"], **QUIET)
    info = info_of(store)
    assert (info["inputs"], info["stored_rows"], info["molecules"]) == (4, 4, 2)
    # The stored SMILES gives back the same id.
    from dmf_ray.molecules import canonical_id

    for row in EmbeddingStore.open(store).molecules_table(["mol_id", "smiles"]).to_pylist():
        assert canonical_id(row["smiles"]) == row["mol_id"]


def test_edited_inputs_replace_their_old_shards_and_a_rerun_with_nothing_to_do_skips_ray(ray_session, tmp_path):
    path = tmp_path / "lib.smi"
    store = str(tmp_path / "store")
    path.write_text("CCO a\nCCX b\nCCC c\nCCCl d\n")
    featurize([str(path)], store, ["ecfp", "maccs"], shard_rows=2, **QUIET)
    assert (info_of(store)["inputs"], info_of(store)["failed"]) == (4, 1)

    logged = []
    featurize([str(path)], store, ["ecfp", "maccs"], shard_rows=2, start_ray=pytest.fail, log=logged.append)
    assert logged == ["nothing to do: 2/2 shards already committed"]

    path.write_text("CCO a\nCCN b\nCCC c\nCCCl d\n")  # one SMILES corrected, same size
    logged = []
    featurize([str(path)], store, ["ecfp", "maccs"], shard_rows=2, log=logged.append)
    assert f"{path} changed since it was featurized: its 2 old shard(s) are replaced" in logged
    info = info_of(store)
    assert (info["inputs"], info["failed"], info["molecules"]) == (4, 0, 4)
    assert EmbeddingStore.open(store).failures_table().num_rows == 0

    path.write_text("CCO a\nCCN b\nCCC c\n")  # a row removed: the size changes
    featurize([str(path)], store, ["ecfp", "maccs"], shard_rows=2, **QUIET)
    info = info_of(store)
    assert (info["inputs"], info["failed"], info["molecules"], info["shards"]) == (3, 0, 3, 2)
    assert_one_row_per_molecule(store)  # the vectors of the removed molecule went too

    # Edited again and rerun with one of the two encoders: the removed molecule's vectors go
    # from the modality not rerun too, and no "interrupted run" is reported (none was).
    path.write_text("CCO a\nCCN b\n")
    logged = []
    featurize([str(path)], store, ["ecfp"], shard_rows=2, log=logged.append)
    assert not any("interrupted run" in line for line in logged), logged
    s = EmbeddingStore.open(store)
    assert set(s.modality_table("maccs", ["mol_id"]).column("mol_id").to_pylist()) <= \
        set(s.molecules_table(["mol_id"]).column("mol_id").to_pylist())
    assert_one_row_per_molecule(store)


DRIVER = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", runtime_env={"env_vars": {"PYTHONPATH": sys.argv[4]}})
from dmf_ray.pipelines.featurize import featurize
import plugin_encoders
featurize([sys.argv[2]], sys.argv[3], ["ecfp", "test-slow-inline"], shard_rows=30, log=lambda m: None)
"""


def test_a_killed_driver_cannot_commit_after_an_immediate_rerun(ray_session, tmp_path):
    import ray

    smiles = [f"{'C' * (1 + i % 12)}{'O' * (i % 5)}N" for i in range(1_200)]
    (tmp_path / "lib.smi").write_text("".join(f"{s} m{i}\n" for i, s in enumerate(smiles)))
    store = str(tmp_path / "store")
    path = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         os.environ.get("PYTHONPATH")]))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, ray.get_runtime_context().gcs_address,
                               str(tmp_path / "lib.smi"), store, path], env={**os.environ, "PYTHONPATH": path})
    commits = os.path.join(store, "_commits", INPUTS_TABLE)
    deadline = time.time() + 120
    while time.time() < deadline and (not os.path.isdir(commits) or len(os.listdir(commits)) < 4):
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    dead_run = EmbeddingStore.open(store).log.holder()

    featurize([str(tmp_path / "lib.smi")], store, ["ecfp", "test-slow-inline"], shard_rows=30, **QUIET)
    time.sleep(3)  # the dead run's actors may still be finishing a shard: they must not count
    info = info_of(store)
    assert (info["inputs"], info["failed"]) == (len(smiles), 0)
    assert info["shards"] == 40
    assert_one_row_per_molecule(store)
    s = EmbeddingStore.open(store)
    fence = s.log._fence(dead_run)
    for table in s.tables():
        for shard, (run, path) in s.log.counted(table).items():
            assert run != dead_run or f"{table}/{os.path.basename(path)}" in fence
    counted_inputs = {(k, r) for k, (r, _) in s.log.counted(INPUTS_TABLE).items()}
    assert {split_name(f) for f in s.committed_files("molecules")} == counted_inputs  # no marker without its data
