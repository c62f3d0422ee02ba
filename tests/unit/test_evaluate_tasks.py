"""Task loading: folder / three files / one file + computed split, detection, clear errors."""

from pathlib import Path

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.splits import scaffold_keys
from dmf_ray.pipelines.evaluate.tasks import TaskError, load_task

DATA = Path(__file__).parents[2] / ".." / "shared" / "data" / "moleculenet"

RINGS = ["c1ccccc1", "c1ccncc1", "C1CCCCC1", "c1ccsc1", "C1CCNCC1", "c1ccoc1", "C1CCOC1", "c1ccc2ccccc2c1"]
SUBST = ["C", "O", "N", "CC", "Cl"]


def _molecules():
    """40 valid molecules on 8 scaffolds + 2 invalid SMILES, with two 0/1 labels."""
    smiles = [f"{ring}{sub}" for ring in RINGS for sub in SUBST]
    smiles += ["C1CC(", "not_a_smiles"]
    return smiles


def _write(path: Path, smiles, y1, y2, smiles_header="SMILES"):
    lines = [f"mol_id,{smiles_header},name,act_a,act_b"]
    for i, (s, a, b) in enumerate(zip(smiles, y1, y2)):
        lines.append(f"M{i},{s},n{i},{a},{b}")
    path.write_text("\n".join(lines) + "\n")


def _labels(n, seed):
    rng = np.random.default_rng(seed)
    a = [str(int(v)) for v in rng.integers(0, 2, n)]
    b = [str(int(v)) if i % 5 else "" for i, v in enumerate(rng.integers(0, 2, n))]  # blanks
    a[0], a[1], b[1], b[2] = "0", "1", "0", "1"  # both classes in every file
    return a, b


@pytest.fixture()
def folder(tmp_path):
    smiles = _molecules()
    parts = {"train": smiles[:30] + smiles[40:41], "valid": smiles[30:36] + smiles[41:], "test": smiles[36:40]}
    d = tmp_path / "toy"
    d.mkdir()
    for k, (s, part) in enumerate(parts.items()):
        _write(d / f"{s}.csv", part, *_labels(len(part), k))
    return d


def test_load_folder_auto_detects_smiles_labels_kind(folder):
    task = load_task(folder)
    assert task.name == "toy" and task.split_name == "provided"
    assert task.smiles_column == "SMILES"
    assert task.label_names == ["act_a", "act_b"] and task.label_source == "auto"  # mol_id/name excluded
    assert task.kind == "classification"
    assert task.sizes == {"train": 31, "valid": 7, "test": 4}
    assert task.labels["train"].shape == (31, 2) and task.labels["train"].dtype == np.float64
    assert np.isnan(task.labels["train"][0, 1])  # blank -> NaN
    # invalid SMILES are kept in place and counted
    assert task.n_invalid_smiles == {"train": 1, "valid": 1, "test": 0}
    assert task.smiles["train"][-1] == "C1CC(" and not task.smiles_ok["train"][-1]


def test_load_three_files_and_given_label(folder):
    files = [folder / f"{s}.csv" for s in ("train", "valid", "test")]
    task = load_task(files, label_columns="act_b", name="toy3")
    assert task.name == "toy3" and task.label_names == ["act_b"] and task.label_source == "given"
    assert task.labels["test"].shape == (4, 1)


def test_one_file_scaffold_split(tmp_path):
    smiles = _molecules()
    a, b = _labels(len(smiles), 7)
    _write(tmp_path / "lib.csv", smiles, a, b, smiles_header="canonical_smiles")
    task = load_task(tmp_path / "lib.csv", fractions=(0.6, 0.2, 0.2))
    assert task.split_name == "scaffold" and task.name == "lib"
    assert sum(task.sizes.values()) == len(smiles)
    assert sum(task.n_invalid_smiles.values()) == 2
    train = {k for k in scaffold_keys(task.smiles["train"]) if k is not None}
    test = {k for k in scaffold_keys(task.smiles["test"]) if k is not None}
    assert not train & test and task.scaffold_overlap() == 0
    # labels travel with their SMILES
    row = {s: (x, y) for s, x, y in zip(smiles, a, b)}
    s0 = task.smiles["test"][0]
    assert task.labels["test"][0, 0] == float(row[s0][0])
    rnd = load_task(tmp_path / "lib.csv", split="random", seed=3)
    assert rnd.split_name == "random" and sum(rnd.sizes.values()) == len(smiles)


def test_regression_detected_and_folder_resplit(folder, tmp_path):
    lines = ["smiles,logS"] + [f"{s},{-0.5 * i:.2f}" for i, s in enumerate(_molecules()[:40])]
    (tmp_path / "sol.csv").write_text("\n".join(lines) + "\n")
    task = load_task(tmp_path / "sol.csv")
    assert task.kind == "regression" and task.label_names == ["logS"]
    resplit = load_task(folder, split="scaffold")
    assert resplit.split_name == "scaffold" and sum(resplit.sizes.values()) == 42


def test_clear_errors(folder, tmp_path):
    (folder / "test.csv").rename(folder / "other.csv")
    with pytest.raises(FileNotFoundError, match=r"test\.csv"):
        load_task(folder)
    (folder / "other.csv").rename(folder / "test.csv")
    with pytest.raises(TaskError, match=r"train\.csv.*label column 'nope' not found"):
        load_task(folder, label_columns=["act_a", "nope"])
    with pytest.raises(TaskError, match=r"SMILES column 'smi' not found"):
        load_task(folder, smiles_column="smi")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_task(tmp_path / "missing.csv")
    # A near miss is pointed at; a wide table's columns are listed in one short line.
    with pytest.raises(TaskError, match=r"label column 'ACT_b' not found \(did you mean 'act_b'\?\)"):
        load_task(folder, label_columns=["ACT_b"])
    wide = tmp_path / "wide.csv"
    wide.write_text("smiles," + ",".join(f"c{i}" for i in range(600)) + "\nCCO," + ",".join("1" * 600) + "\n")
    with pytest.raises(TaskError) as err:
        load_task([str(wide)] * 3, label_columns=["zz"])
    assert "... (601 in all)" in str(err.value) and "c599" not in str(err.value)
    # A malformed row: pandas' message, once, on one line.
    broken = tmp_path / "broken.csv"
    broken.write_text("smiles,y\nCCO,1\nCCN,0,5\n")
    with pytest.raises(TaskError) as err:
        load_task([str(broken)] * 3)
    assert "\n" not in str(err.value) and str(err.value).count("cannot read") == 1

    (tmp_path / "nosmiles.csv").write_text("structure,y\nCCO,1\nCCN,0\n")
    with pytest.raises(TaskError, match=r"nosmiles\.csv: no SMILES column"):
        load_task(tmp_path / "nosmiles.csv")
    (tmp_path / "nolabels.csv").write_text("smiles,id,comment\nCCO,1,a\nCCN,2,b\n")
    with pytest.raises(TaskError, match=r"nolabels\.csv: no label columns"):
        load_task(tmp_path / "nolabels.csv")
    (tmp_path / "oneclass.csv").write_text("smiles,y\n" + "".join(f"{s},1\n" for s in _molecules()[:20]))
    with pytest.raises(TaskError, match=r"oneclass\.csv.*'y' has only class 1"):
        load_task(tmp_path / "oneclass.csv")
    (tmp_path / "mixed.csv").write_text("smiles,active,mw\nCCO,1,46.1\nCCN,0,45.1\n")
    with pytest.raises(TaskError, match=r"0/1 columns \['active'\] and continuous columns \['mw'\]"):
        load_task(tmp_path / "mixed.csv")
    (tmp_path / "text.csv").write_text("smiles,y\nCCO,1\nCCN,high\n")
    with pytest.raises(TaskError, match=r"text\.csv: label column 'y' has non-numeric value 'high'"):
        load_task(tmp_path / "text.csv", label_columns="y")
    with pytest.raises(TaskError, match="values other than 0/1"):
        load_task(tmp_path / "mixed.csv", label_columns=["mw"], kind="classification")


@pytest.mark.skipif(not (DATA / "bace").is_dir(), reason="shared MoleculeNet data not present")
def test_real_moleculenet_folders():
    bace = load_task(DATA / "bace")  # 590 descriptor columns beside the label
    assert bace.label_names == ["Class"] and bace.kind == "classification"
    assert bace.sizes == {"train": 1209, "valid": 151, "test": 152}
    bbbp = load_task(DATA / "bbbp")
    assert bbbp.label_names == ["p_np"]
    assert sum(bbbp.n_invalid_smiles.values()) > 0  # real unparsable SMILES are kept and counted
    assert bbbp.sizes == {"train": 1639, "valid": 205, "test": 194}
    tox21 = load_task(DATA / "tox21")  # auto: 12 task columns, mol_id excluded, blanks missing
    assert tox21.n_tasks == 12 and np.isnan(tox21.labels["train"]).any()
    esol = load_task(DATA / "esol")
    assert esol.kind == "regression" and esol.label_names == ["measured log solubility in mols per litre"]


def test_a_renamed_known_task_keeps_its_documented_labels(tmp_path):
    # bace ships 0/1 descriptor columns beside its label: auto-detection alone cannot pick it.
    from dmf_ray.pipelines.evaluate.tasks import load_task

    folder = tmp_path / "bace"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text("smiles,Class,pIC50,sLi_Key\nCCO,1,5.1,0\nCCN,0,4.2,1\nCCC,1,6.3,0\n")
    task = load_task(str(folder), name="bace-scaffold", split="random")
    assert task.label_names == ["Class"] and task.label_source == "known:bace"


def _one_class_b(folder: Path) -> None:
    """Rewrite train.csv of ``folder`` with act_b all 0 (valid/test keep both classes)."""
    lines = (folder / "train.csv").read_text().splitlines()
    rows = [line.rsplit(",", 1)[0] + ",0" for line in lines[1:]]
    (folder / "train.csv").write_text("\n".join([lines[0], *rows]) + "\n")


def test_a_one_class_label_column_is_skipped_not_the_task(folder):
    # Review #2: a sparse multi-task set (ToxCast, MUV) under a scaffold split has such columns.
    _one_class_b(folder)
    task = load_task(folder)
    assert task.label_names == ["act_a", "act_b"] and task.kind == "classification"
    assert task.skipped_labels == {"act_b": "only class 0 in train"}
    assert load_task(folder, label_columns="act_a").skipped_labels == {}
    # A task where no column can be fitted is still refused, naming every column's reason.
    with pytest.raises(TaskError, match=r"no label column can be fitted: classification label 'act_b' "
                                        r"has only class 0 in train"):
        load_task(folder, label_columns=["act_b"])
    # A regression column without a train label is skipped the same way.
    files = []
    for k, split in enumerate(("train", "valid", "test")):
        path = folder / f"r_{split}.csv"
        path.write_text("smiles,x,y\n" + "".join(f"{s},{i / 3 + k:.2f},{'' if k == 0 else i}\n"
                                                for i, s in enumerate(_molecules()[10 * k:10 * k + 10])))
        files.append(path)
    regression = load_task(files, label_columns=["x", "y"])
    assert regression.kind == "regression" and regression.skipped_labels == {"y": "no labels in train"}


def test_true_false_labels_are_read_and_auto_detected_alike(tmp_path):
    # Review #13: one cell parser; True/False used to work with --label but not be auto-detected.
    smiles = _molecules()[:20]
    (tmp_path / "tf.csv").write_text("smiles,toxic\n" + "".join(
        f"{s},{'True' if i % 2 else 'false'}\n" for i, s in enumerate(smiles)))
    auto = load_task(tmp_path / "tf.csv", split="random")
    assert auto.label_names == ["toxic"] and auto.kind == "classification"
    given = load_task(tmp_path / "tf.csv", split="random", label_columns="toxic")
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(auto.labels[s], given.labels[s])
    (tmp_path / "inf.csv").write_text("smiles,y\nCCO,1\nCCN,inf\n")
    with pytest.raises(TaskError, match="non-numeric value 'inf'"):
        load_task(tmp_path / "inf.csv", label_columns="y")
