"""`dmf evaluate` end to end on small real tasks with a small random-weights model.

The model's card names a real training store (featurised on the shared Ray), holding some of
the task's molecules, so the corpus overlap is checked too. The evaluation itself needs no Ray.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmf_ray.artifact import save_fusion_model
from dmf_ray.cli import console
from dmf_ray.pipelines.evaluate.protocol import removal_patterns
from dmf_ray.pipelines.evaluate.report import FILES
from dmf_ray.model.fusion import DynamicFusion, FusionConfig
from progress_check import ProgressRecorder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NAMES = ["ecfp", "maccs", "rdkit2d"]
PATTERNS = [p.name for p in removal_patterns(NAMES)]
ROWS = ["ecfp", "maccs", "rdkit2d", "ecfp+maccs", "ecfp+rdkit2d", "maccs+rdkit2d", "ecfp+maccs+rdkit2d", "fusion"]
BAD = "C1CC(bad"


@pytest.fixture(scope="module")
def setup(ray_session, shared_data, tmp_path_factory):
    from dmf_ray.pipelines.featurize import featurize
    from dmf_ray.store import EmbeddingStore

    root = tmp_path_factory.mktemp("evaluate")
    bace = root / "bace"
    bace.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("valid", 50), ("test", 50)):
        df = pd.read_csv(shared_data / "moleculenet" / "bace" / f"{split}.csv")
        df = df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))].reset_index(drop=True)
        if split == "test":
            df.loc[0, "smiles"] = BAD  # kept, counted, featureless
        df.to_csv(bace / f"{split}.csv", index=False)
    # The "pretraining corpus": 150 ZINC molecules plus 7 test and 3 train molecules of the task.
    zinc = (shared_data / "library" / "zinc" / "qed_mols.txt").read_text().split()[:150]
    test_smiles = pd.read_csv(bace / "test.csv")["smiles"].tolist()
    leaked = test_smiles[1:8] + pd.read_csv(bace / "train.csv")["smiles"].tolist()[:3]
    corpus = root / "corpus.smi"
    corpus.write_text("".join(f"{s}\n" for s in zinc + leaked))
    store = str(root / "store")
    featurize([str(corpus)], store, NAMES, log=lambda m: None)
    s = EmbeddingStore.open(store)
    paired = s.read_numpy(NAMES)
    import torch

    torch.manual_seed(0)
    model = DynamicFusion(FusionConfig(modalities=NAMES, dims=[s.modalities[n]["dim"] for n in NAMES], latent_dim=16))
    model.set_normalization({n: (paired.values[n].mean(0), paired.values[n].std(0)) for n in NAMES})
    model_dir = root / "model"
    save_fusion_model(model_dir, model, card={"modalities": {n: s.modalities[n] for n in NAMES},
                                              "training": {"store": store, "epochs": 0, "note": "random weights"}})
    # The same model whose maccs encoder declares it was trained on BACE labels (as a pretrained
    # neural encoder's spec does): every row using maccs is LEAKED on bace.
    leaky = {n: dict(s.modalities[n]) for n in NAMES}
    leaky["maccs"]["trained_on"] = ["moleculenet:bace"]
    save_fusion_model(root / "model-leaky", model, card={"modalities": leaky, "training": {"store": store}})
    return root, bace, str(model_dir)


def _run_job(*args: str) -> int:
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import evaluate as job  # jobs/evaluate.py: the same arguments as `dmf evaluate`
    finally:
        sys.path.pop(0)
    return job.main(list(args))


def _csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_full_evaluation_writes_every_output(setup, capsys, monkeypatch):
    root, bace, model_dir = setup
    out = root / "report"
    progress = ProgressRecorder()  # what evaluate reports to dmf's progress bar (shown on a terminal)
    monkeypatch.setattr(console.Step, "update", lambda self, done, total=None: progress(done, total))
    monkeypatch.setattr(console.Step, "live", property(lambda self: True))  # as on a terminal
    # The paper-protocol table (extra XGBoost fits) is covered by test_leaked_rows_and_the_auto_learner.
    assert _run_job("--model", model_dir, "--task", f"bace={bace}", "--out", str(out), "--seeds", "2",
                    "--no-paper-protocol") == 0
    err = capsys.readouterr().err
    assert "[bace] fusion" in err and "featurized 300 distinct SMILES (1 invalid)" in err  # progress lines
    # Two phases: the 300 distinct SMILES encoded, then the task's steps (Table 1, Figures 3-5).
    assert len(progress.phases()) == 2
    progress.check(300, phase=0)
    progress.check(2, phase=1)

    for name in list(FILES.values()) + ["evaluation.json"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for fig in ("figure2", "figure3", "figure4", "figure5"):
        assert (out / FILES[fig]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"]["bace"]
    assert task["metric"] == "roc_auc" and task["split"] == "provided"
    assert list(task["rows"]) == ROWS
    for row in ROWS:
        assert 0.0 <= task["rows"][row]["mean"] <= 1.0 and task["rows"][row]["std"] >= 0.0
    assert list(task["robustness"]) == PATTERNS  # one entry per removal pattern
    assert all(set(v) == {"fusion", "concat"} and None not in v.values() for v in task["robustness"].values())
    assert set(task["reconstruction_cosine"]) == set(NAMES) == set(task["attention"])
    assert sum(task["attention"].values()) == pytest.approx(1.0, abs=1e-4)
    assert task["featureless_rows"] == {"train": 0, "valid": 0, "test": 1}
    # The corpus holds 7 test and 3 train molecules of the task (canonical ids, any spelling).
    assert task["training_overlap"] == {"train": 3, "valid": 0, "test": 7}
    assert summary["model"]["modalities"] == NAMES and "store" in summary["model"]["training_corpus"]
    assert summary["protocol"]["robustness"] == "inference"

    robust = _csv(out / "robustness.csv")
    assert len(robust) == len(PATTERNS) * 2 * 2  # pattern x method x seed
    assert [r["pattern"] for r in robust if r["method"] == "fusion" and r["seed_index"] == "0"] == PATTERNS
    table1 = _csv(out / "table1.csv")
    assert [r["row"] for r in table1] == ROWS and all(r["n_seeds"] == "2" for r in table1)
    rates = {float(r["mask_rate"]) for r in _csv(out / "attention_vs_mask_rate.csv")}
    assert rates == {0.0, 0.2, 0.4, 0.6, 0.8}
    datasets = {r["split"]: r for r in _csv(out / "datasets.csv")}
    assert datasets["test"]["n_invalid_smiles"] == "1" and datasets["test"]["n_molecules"] == "50"

    report = (out / "report.md").read_text()
    for heading in ("## Table 1", "## Figure 2", "## Figure 3", "## Figure 4", "## Figure 5",
                    "## Model and pretraining corpus", "## Protocol", "## Timing"):
        assert heading in report
    assert "| bace | 3 of 200 / 0 of 50 / 7 of 50 |" in report
    details = json.loads((out / "evaluation.json").read_text())
    assert details["featurize"]["invalid_smiles"] == 1


def test_one_file_scaffold_split_regression_and_refit(setup, shared_data):
    root, _, model_dir = setup
    df = pd.read_csv(shared_data / "moleculenet" / "esol" / "train.csv").head(150)
    data = root / "esol_part.csv"
    df.to_csv(data, index=False)
    out = root / "report_esol"
    label = "measured log solubility in mols per litre"
    assert _run_job("--model", model_dir, "--task", str(data), "--label", label, "--split", "scaffold",
                    "--seeds", "1", "--robustness", "refit", "--n-estimators", "20", "--mask-rates", "0,0.5",
                    "--out", str(out)) == 0
    task = json.loads((out / "summary.json").read_text())["tasks"]["esol_part"]
    assert task["metric"] == "rmse" and task["split"] == "scaffold"
    assert list(task["robustness"]) == PATTERNS and task["rows"]["fusion"]["mean"] > 0
    overlap = int(_csv(out / "datasets.csv")[2]["test_scaffolds_in_train"])
    assert overlap == 0  # a computed scaffold split shares no scaffold between train and test
    assert "mae" in (out / "report.md").read_text()


def test_user_errors_are_one_line(setup, capsys):
    root, bace, model_dir = setup
    assert _run_job("--model", model_dir, "--task", str(root / "nope"), "--out", str(root / "x")) == 2
    assert "task source not found" in capsys.readouterr().err
    assert _run_job("--model", str(root / "nomodel"), "--task", str(bace), "--out", str(root / "x")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _run_job("--model", model_dir, "--task", f"a={bace}", "--task", f"a={bace}", "--out", str(root / "x")) == 2
    assert "repeated: ['a']" in capsys.readouterr().err


def test_leaked_rows_and_the_auto_learner(setup, capsys):
    root, bace, _ = setup
    out = root / "report_leaky"
    assert _run_job("--model", str(root / "model-leaky"), "--task", f"bace={bace}", "--out", str(out),
                    "--seeds", "1", "--learner", "auto", "--robustness", "none", "--n-estimators", "20", "--n-jobs", "1",
                    "--mask-rates", "0", "--finetune", "--finetune-epochs", "3") == 0
    err = capsys.readouterr().err
    assert "LEAKED: encoder 'maccs' was trained on moleculenet:bace" in err and "[bace] maccs " in err
    assert "not computed: Figure 2: skipped: --robustness none" in err
    task = json.loads((out / "summary.json").read_text())["tasks"]["bace"]
    assert set(task["leaked"]) == {"maccs", "ecfp+maccs", "maccs+rdkit2d", "ecfp+maccs+rdkit2d", "fusion",
                                   "fusion-finetuned"}
    assert list(task["rows"])[-2:] == ["fusion", "fusion-finetuned"]
    assert task["learners"]["fusion-finetuned"] == "finetune"
    assert task["best_row"] in ("ecfp", "rdkit2d", "ecfp+rdkit2d")  # leaked rows are never "best"
    assert set(task["learners"].values()) <= {"rf", "xgboost", "logreg", "mlp", "finetune"}
    assert set(task["paper_protocol"]) == set(ROWS)  # XGBoost on frozen features, its own table
    assert task["not_computed"] == {"Figure 2": "skipped: --robustness none"}
    report = (out / "report.md").read_text()
    assert "LEAKED" in report and "## Paper protocol: XGBoost on frozen embeddings" in report
    assert "| bace | Figure 2 | skipped: --robustness none |" in report


def test_benchmark_job_prints_table1_against_the_paper(setup):
    root, bace, model_dir = setup
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_moleculenet as bench
    finally:
        sys.path.pop(0)
    work = root / "bench"
    assert bench.main(["--model", model_dir, "--data", str(bace.parent), "--tasks", "bace",
                       "--splits", "provided,scaffold", "--seeds", "1", "--robustness", "none",
                       "--n-estimators", "20", "--work-dir", str(work)]) == 0
    text = (work / "bench.md").read_text()
    assert "### ROC-AUC, provided split" in text and "### ROC-AUC, scaffold split" in text
    assert "| paper: dynamic fusion (SMI-TED, SELFIES-TED, MHG-GED) | 0.875 |" in text
    assert "| fusion − best single modality |" in text and "| ours fusion − paper fusion |" in text
    summary = json.loads((work / "bench.json").read_text())["summary"]
    assert set(summary["tasks"]) == {"bace", "bace-scaffold"}
