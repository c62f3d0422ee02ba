"""What the encoders and the fusion model saw: leakage flags and molecule overlap."""

from __future__ import annotations

import numpy as np
import pytest

from dmf_ray.encoders import create_encoder
from dmf_ray.modalities import ModalityBatch
from dmf_ray.pipelines.evaluate import provenance as p
from dmf_ray.pipelines.evaluate.table import table_rows
from dmf_ray.pipelines.evaluate.taskdata import TaskData
from dmf_ray.pipelines.evaluate.tasks import Task

ADMET = {"datasets": ["BBB_Martins", "ClinTox", "Tox21", "Lipophilicity_AstraZeneca",
                      "HydrationFreeEnergy_FreeSolv"], "mol_ids": None}


def test_tdc_names_match_moleculenet_tasks_and_split_suffixes_are_ignored():
    assert p.task_dataset("bbbp-scaffold") == "bbbp" and p.task_dataset("my-task") == "my-task"
    assert p.task_dataset("x", "BBBP") == "BBBP"
    declared = {"ecfp": None, "chemprop": ADMET}
    for task in ("bbbp", "clintox", "tox21", "lipophilicity", "freesolv", "lipo"):
        assert set(p.leaked_modalities(task, declared)) == {"chemprop"}, task
    for task in ("bace", "hiv", "sider", "esol"):  # clean for the ADMET models
        assert p.leaked_modalities(task, declared) == {}, task
    why = p.leaked_modalities("bbbp", declared)["chemprop"]
    assert "BBB_Martins" in why and "bbbp" in why


def test_every_row_using_a_leaked_encoder_is_flagged():
    mods = ["ecfp", "maccs", "chemprop"]
    rows = p.leaked_rows(table_rows(mods), mods, {"chemprop": "trained on BBB"})
    assert set(rows) == {"chemprop", "ecfp+chemprop", "maccs+chemprop", "ecfp+maccs+chemprop", "fusion"}
    assert p.leaked_rows(table_rows(mods), mods, {}) == {}


def test_declarations_from_spec_or_encoder_and_malformed_ones():
    ecfp = create_encoder("ecfp").spec()
    assert p.trained_on(ecfp) is None  # RDKit encoders were not trained
    got = p.trained_on({**ecfp, "trained_on": {"datasets": ["Tox21"], "mol_ids": ["a", "b"]}})
    assert got == {"datasets": ["Tox21"], "mol_ids": {"a", "b"}}
    got = p.trained_on({**ecfp, "trained_on": ["tdc:BBB_Martins", "moleculenet:bbbp"]})  # the Encoder's form
    assert got == {"datasets": ["tdc:BBB_Martins", "moleculenet:bbbp"], "mol_ids": None}
    assert set(p.leaked_modalities("bbbp", {"m": got})) == {"m"}
    assert p.dataset_key("tdc:HydrationFreeEnergy_FreeSolv") == "freesolv"
    assert p.trained_on({**ecfp, "trained_on": []}) is None
    with pytest.raises(ValueError, match="list of names"):
        p.trained_on({**ecfp, "trained_on": {"datasets": "Tox21"}})


def test_declared_molecules_are_counted_per_split():
    task = Task("t", {s: [] for s in ("train", "valid", "test")}, {}, ["y"], "classification", "provided")
    batch = ModalityBatch(["m1", "m2", "m3", None, "m5"], ["a"], {"a": np.zeros((5, 2))}, np.ones((5, 1), bool))
    data = TaskData(task, batch, {"train": slice(0, 2), "valid": slice(2, 3), "test": slice(3, 5)})
    assert p.encoder_overlap(data, {"a": {"datasets": [], "mol_ids": {"m2", "m5"}}, "b": None}) == {
        "a": {"train": 1, "valid": 0, "test": 1}}
    assert p.corpus_overlap(data, {"m1", "m3"}) == {"train": 1, "valid": 1, "test": 0}
    assert p.corpus_overlap(data, None) is None
