"""dmf_ray.pipelines.evaluate.run without Ray: featurisation of task molecules, config, the fitting trick."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmf_ray.encoders import create_encoder
from dmf_ray.pipelines.evaluate.run import EvaluateConfig, TaskSpec, _row_cosine
from dmf_ray.pipelines.evaluate.features import featurize_smiles
from dmf_ray.pipelines.evaluate.downstream import fit_and_score

SPECS = {m: create_encoder(m).spec() for m in ("ecfp", "maccs", "rdkit2d")}
SMILES = ["CCO", "OCC", "c1ccccc1O", "C1CC", "", "CC(=O)Nc1ccc(O)cc1", "CCO", "[Na+].[Cl-]", "not a smiles"]


def test_invalid_smiles_are_kept_counted_and_featureless():
    f = featurize_smiles(SMILES, SPECS, workers=1, log=lambda m: None)
    rows = f.rows(SMILES)
    assert len(rows) == len(SMILES)  # every input row maps to a feature row: nothing dropped
    assert rows[0] == rows[6]  # the same string is encoded once
    assert f.mol_ids[rows[0]] == f.mol_ids[rows[1]]  # CCO and OCC: one molecule, same vectors
    np.testing.assert_array_equal(f.values["ecfp"][rows[0]], f.values["ecfp"][rows[1]])
    bad = [i for i, s in enumerate(SMILES) if s in ("C1CC", "", "not a smiles")]
    for i in bad:
        assert f.mol_ids[rows[i]] is None and f.parse_errors[rows[i]]
        assert not f.present[rows[i]].any()
        assert not f.values["ecfp"][rows[i]].any()
    assert "unclosed ring" in f.parse_errors[rows[3]]
    good = [i for i in range(len(SMILES)) if i not in bad]
    assert f.present[rows[good]].all()
    assert f.encoder_errors == {"ecfp": 0, "maccs": 0, "rdkit2d": 0}


def test_process_pool_gives_the_same_features_as_in_process():
    smiles = SMILES * 3 + ["CCN(CC)CC", "O=C(O)c1ccccc1OC(C)=O", "c1ccc2ccccc2c1"]
    one = featurize_smiles(smiles, SPECS, workers=1, log=lambda m: None)
    two = featurize_smiles(smiles, SPECS, workers=2, chunk_size=3, log=lambda m: None)
    assert two.workers == 2
    assert one.mol_ids == two.mol_ids and one.index == two.index
    np.testing.assert_array_equal(one.present, two.present)
    for m in SPECS:
        np.testing.assert_array_equal(one.values[m], two.values[m])


def test_task_spec_parsing(tmp_path):
    folder = tmp_path / "bbbp"
    folder.mkdir()
    assert TaskSpec.parse(f"x={folder}") == TaskSpec("x", str(folder))
    assert TaskSpec.parse(str(folder)).name == "bbbp"
    assert TaskSpec.parse("mytask=a.csv,b.csv,c.csv") == TaskSpec("mytask", ["a.csv", "b.csv", "c.csv"])
    assert TaskSpec.parse("data/lipo.csv.gz").name == "lipo"
    with pytest.raises(ValueError, match="three files"):
        TaskSpec.parse("t=a.csv,b.csv")


def test_config_gathers_every_problem():
    cfg = EvaluateConfig(model="m", tasks=["a=x", "a=y"], out="o", seeds=0, robustness="maybe",
                         mask_rates=[0.5, 1.5], split="chemical")
    with pytest.raises(ValueError) as err:
        cfg.validate()
    text = str(err.value)
    for part in ("repeated: ['a']", "seeds", "robustness", "mask rates", "split must be one of"):
        assert part in text


def test_degraded_tests_stacked_under_test_are_scored_by_the_same_forest():
    from dmf_ray.pipelines.evaluate.run import _fit, _TaskData
    from dmf_ray.pipelines.evaluate.tasks import Task

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(float)[:, None]
    task = Task("t", {s: [] for s in ("train", "valid", "test")},
                {"train": y[:200], "valid": y[200:250], "test": y[250:]}, ["y"], "classification", "provided")
    data = _TaskData(task, ["a"], {"train": slice(0, 200), "valid": slice(200, 250), "test": slice(250, 300)},
                     {}, np.ones((300, 1), bool), task.labels, [])
    cfg = EvaluateConfig(model="m", tasks=[], out="o", n_estimators=20, n_jobs=1)
    noisy = X[250:].copy()
    noisy[:, 0] = np.nan  # a withheld block: imputed with the train mean
    fit, extra = _fit(data, X, 0, None, cfg, [X[250:], noisy])
    plain = fit_and_score(X[:200], y[:200], X[200:250], y[200:250], X[250:], y[250:], "classification", 0,
                          n_estimators=20, n_jobs=1)
    assert fit["test_metric"] == pytest.approx(plain["test_metric"])
    assert fit["params"] == plain["params"]
    assert extra[0] == pytest.approx(plain["test_metric"])  # the undegraded copy scores the same
    assert extra[1] < extra[0] and "predictions" not in fit


def test_row_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert _row_cosine(a, b) == pytest.approx((1 - 1 + 0) / 3)
    assert math.isnan(_row_cosine(np.zeros((0, 2)), np.zeros((0, 2))))


def test_a_renamed_known_task_keeps_its_documented_labels(tmp_path):
    # bace ships 0/1 descriptor columns beside its label: auto-detection alone cannot pick it.
    from dmf_ray.pipelines.evaluate.tasks import load_task

    folder = tmp_path / "bace"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text("smiles,Class,pIC50,sLi_Key\nCCO,1,5.1,0\nCCN,0,4.2,1\nCCC,1,6.3,0\n")
    task = load_task(str(folder), name="bace-scaffold", split="random")
    assert task.label_names == ["Class"] and task.label_source == "known:bace"
