"""Benchmark: the paper's Table 1 on the six MoleculeNet classification tasks, with our encoders.

    python benchmarks/bench_moleculenet.py                                  # pretrain on ZINC, evaluate all six
    python benchmarks/bench_moleculenet.py --tasks bace,bbbp --seeds 3      # a quick subset
    python benchmarks/bench_moleculenet.py --model ./model                  # evaluate an existing model
    ray job submit --working-dir . -- python benchmarks/bench_moleculenet.py --corpus-size 86334 --epochs 20

Steps, each timed:

1. pretrain (unless ``--model``): the first ``--corpus-size`` molecules of ``--corpus`` (default
   ZINC ``qed_mols.txt``, 86k drug-like molecules, unlabeled) are featurised with ``--encoders``
   into a store (Ray Data) and a fusion model is trained on it, self-supervised (Ray Train).
   The downstream tasks are never part of the corpus; ``report.md`` counts any task molecule
   that happens to be in it. ``--untrained`` writes a random-weights model instead (normalised
   on the corpus), the control that shows what pretraining adds.
2. evaluate (``dmf_ray.pipelines.evaluate.run``): every task on the provided split and on a Bemis-Murcko
   scaffold split computed here (``--splits``), in one run so molecules are encoded once.
3. print the Table 1 analogue per split as markdown, fusion against the best single modality
   and the all-modality concatenation measured in the same run, and against the paper's
   dynamic fusion row (different encoders: SMI-TED / SELFIES-TED / MHG-GED embeddings).

Everything goes to ``--work-dir`` (store/, model/, report/, bench.md, bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from dmf_ray.pipelines.evaluate.config import ROBUSTNESS_PROTOCOLS
from dmf_ray.pipelines.evaluate.learners import LEARNER_CHOICES

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASKS = ("bace", "bbbp", "clintox", "hiv", "tox21", "sider")
# The paper's "Dynamic Fusion" row (Table 1, ROC-AUC, provided splits).
PAPER_FUSION = {"bace": 0.875, "bbbp": 0.939, "clintox": 0.895, "hiv": 0.815, "tox21": 0.749, "sider": 0.673}
# notes/baselines.md: RF on ECFP4 counts, same provided splits, measured separately.
NOTES_ECFP_RF = {"bace": "0.886", "bbbp": "0.933-0.945", "clintox": "0.916", "hiv": "0.857-0.860",
                 "tox21": "0.840", "sider": "0.731"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Table 1 of the dynamic fusion paper on MoleculeNet: pretrain (or take) a fusion "
                    "model, evaluate single modalities, concatenations and fusion on the provided and "
                    "scaffold splits, print markdown.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task folders under --data")
    p.add_argument("--data", default=str(SHARED / "moleculenet"), help="folder holding <task>/{train,valid,test}.csv")
    p.add_argument("--splits", default="provided,scaffold", help="provided and/or scaffold (and/or random)")
    p.add_argument("--model", default=None, help="evaluate this model directory instead of pretraining one")
    p.add_argument("--untrained", action="store_true", help="random-weights model (normalised on the corpus) as a control")
    p.add_argument("--corpus", default=str(SHARED / "library" / "zinc" / "qed_mols.txt"),
                   help="unlabeled pretraining molecules (.smi/.txt/.csv, gz ok)")
    p.add_argument("--corpus-size", type=int, default=20000, help="first N molecules of the corpus (0 = all)")
    p.add_argument("--encoders", default="ecfp,maccs,rdkit2d", help="modalities of the pretrained model")
    p.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    p.add_argument("--latent-dim", type=int, default=256, help="fused vector dim")
    p.add_argument("--train-workers", type=int, default=1, help="Ray Train workers (0: in-process)")
    p.add_argument("--seeds", type=int, default=3, help="downstream seeds")
    p.add_argument("--robustness", choices=ROBUSTNESS_PROTOCOLS, default="inference",
                   help="Figure 2 protocol (see dmf_ray.pipelines.evaluate.table)")
    p.add_argument("--learner", choices=LEARNER_CHOICES, default="rf",
                   help="downstream learner (auto: per row the best on valid; see dmf_ray.pipelines.evaluate.learners)")
    p.add_argument("--no-paper-protocol", action="store_true", help="skip the XGBoost-on-frozen-embeddings table")
    p.add_argument("--finetune", action="store_true",
                   help="add the fine-tuned fusion row (pretrained fusion + head, masking kept on)")
    p.add_argument("--n-jobs", type=int, default=2, help="cores per forest fit")
    p.add_argument("--n-estimators", type=int, default=None, help="trees per forest (default: 300, 100 on large tasks)")
    p.add_argument("--work-dir", default=str(ROOT / "out" / "bench_moleculenet"), help="store/, model/, report/ go here")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (ignored with RAY_ADDRESS)")
    return p.parse_args(argv)


def corpus_file(args, work: Path) -> Path:
    """The first --corpus-size SMILES of the corpus as a .smi file (the corpus itself for 0)."""
    src = Path(args.corpus)
    if not src.is_file():
        raise FileNotFoundError(f"corpus not found: {src}")
    if args.corpus_size <= 0:
        return src
    out = work / f"corpus_{src.name.split('.')[0]}_{args.corpus_size}.smi"
    if not out.is_file():
        import gzip

        opener = gzip.open if src.suffix == ".gz" else open
        lines = []
        with opener(src, "rt") as fh:
            for line in fh:
                token = line.split(",")[0].split()[0] if line.strip() else ""
                if not token or token.lower() == "smiles":
                    continue
                lines.append(token)
                if len(lines) == args.corpus_size:
                    break
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(f"{s}\n" for s in lines))
        tmp.replace(out)
    return out


def pretrain(args, work: Path, timings: dict) -> str:
    from dmf_ray.pipelines.featurize import featurize
    from dmf_ray.runtime import ensure_ray

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    corpus = corpus_file(args, work)
    store = str(work / "store")
    ensure_ray(args.num_cpus, dashboard=True)  # it trains
    t0 = time.perf_counter()
    result = featurize([str(corpus)], store, encoders, log=log)
    timings["featurize_corpus_s"] = round(time.perf_counter() - t0, 1)
    log(f"corpus: {result.rows_read:,} new rows featurized ({result.failed} failed) in {timings['featurize_corpus_s']} s")
    t0 = time.perf_counter()
    if args.untrained:
        model_dir = untrained_model(store, encoders, args.latent_dim, work / "model-untrained")
    else:
        from dmf_ray.pipelines.train import TrainConfig, train

        model_dir = str(work / "model")
        train(TrainConfig(store=store, out=model_dir, modalities=encoders, epochs=args.epochs,
                          model={"latent_dim": args.latent_dim}, workers=args.train_workers), log=log)
    timings["train_s"] = round(time.perf_counter() - t0, 1)
    return model_dir


def untrained_model(store_uri: str, encoders: list[str], latent_dim: int, out: Path) -> str:
    import torch

    from dmf_ray.artifact import save_fusion_model
    from dmf_ray.model import DynamicFusion, FusionConfig, FusionSettings, array_moments, normalization_stats
    from dmf_ray.pipelines.train.driver import value_kinds
    from dmf_ray.store import EmbeddingStore

    store = EmbeddingStore.open(store_uri)
    paired = store.read_numpy(encoders)
    torch.manual_seed(0)
    # As train() builds it (value kinds included), so the control differs from the trained model
    # only in its weights.
    model = DynamicFusion(FusionConfig.build(encoders, [store.modalities[m]["dim"] for m in encoders],
                                             FusionSettings(latent_dim=latent_dim), value_kinds(store, encoders)))
    model.set_normalization(normalization_stats(array_moments(paired.values, paired.present, encoders)))
    save_fusion_model(out, model, card={
        "modalities": {m: dict(store.modalities[m]) for m in encoders},
        "training": {"store": os.path.abspath(store_uri), "epochs": 0,
                     "note": "untrained: random weights, normalisation statistics from the corpus"},
    })
    return str(out)


def task_specs(args):
    from dmf_ray.pipelines.evaluate import TaskSpec

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    specs = []
    for split in splits:
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            folder = Path(args.data) / task
            if not folder.is_dir():
                raise FileNotFoundError(f"task folder not found: {folder}")
            name = task if split == "provided" else f"{task}-{split}"
            specs.append(TaskSpec(name=name, source=str(folder), split=split))
    return specs, splits


def _cell(summary: dict, task: str, row: str, key: str = "rows") -> dict | None:
    v = summary["tasks"][task][key].get(row)
    return None if not v or v["mean"] is None else v


def _table(summary: dict, names: list[str], key: str) -> list[str]:
    """Rows x tasks of ``key`` (``rows``: Table 1 with the learner per cell; ``paper_protocol``);
    the best non-leaked row per column in bold, leaked rows marked LEAKED."""
    from dmf_ray.pipelines.evaluate.results import order_rows

    lines = ["| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in order_rows(r for n in names for r in summary["tasks"][n][key]):
        cells = []
        for n in names:
            task, v = summary["tasks"][n], _cell(summary, n, r, key)
            if v is None:
                cells.append("–")
                continue
            text = f"{v['mean']:.3f} ± {v['std']:.3f}" + (f" · {task['learners'][r]}" if key == "rows" else "")
            clean = [x["mean"] for k, x in task[key].items() if x["mean"] is not None and k not in task["leaked"]]
            best = r not in task["leaked"] and clean and v["mean"] == max(clean)
            cells.append((f"**{text}**" if best else text) + (" LEAKED" if r in task["leaked"] else ""))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def _deltas(summary: dict, names: list[str], split: str) -> list[str]:
    """Fusion against the best non-leaked single modality, the full concatenation, the paper."""
    rows = [r for r in summary["tasks"][names[0]]["rows"]]
    singles = [r for r in rows if "+" not in r and not r.startswith("fusion")]
    full = max((r for r in rows if "+" in r), key=lambda r: r.count("+"), default=None)

    def delta(n, ref_rows):
        f = _cell(summary, n, "fusion")
        leaked = summary["tasks"][n]["leaked"]
        refs = [_cell(summary, n, r)["mean"] for r in ref_rows if _cell(summary, n, r) and r not in leaked]
        return f"{f['mean'] - max(refs):+.3f}" if f and refs and "fusion" not in leaked else "–"

    lines = ["| fusion − best single modality | " + " | ".join(delta(n, singles) for n in names) + " |"]
    if full:
        lines.append(f"| fusion − {full} | " + " | ".join(delta(n, [full]) for n in names) + " |")
    if split == "provided":
        lines.append("| paper: dynamic fusion (SMI-TED, SELFIES-TED, MHG-GED) | "
                     + " | ".join(f"{PAPER_FUSION[n]:.3f}" if n in PAPER_FUSION else "–" for n in names) + " |")

        def vs_paper(n):
            f = _cell(summary, n, "fusion")
            return f"{f['mean'] - PAPER_FUSION[n]:+.3f}" if f and n in PAPER_FUSION else "–"

        lines.append("| ours fusion − paper fusion | " + " | ".join(vs_paper(n) for n in names) + " |")
        lines.append("| notes/baselines.md: RF on ECFP4 counts | "
                     + " | ".join(NOTES_ECFP_RF.get(n, "–") for n in names) + " |")
    return lines


def markdown_tables(summary: dict, tasks: list[str], splits: list[str]) -> str:
    """Per split: Table 1 (learner per cell, LEAKED rows out of "best"), fusion deltas, and the
    paper's protocol (XGBoost on frozen embeddings) as its own table when it was computed."""
    lines = []
    for split in splits:
        names = [t if split == "provided" else f"{t}-{split}" for t in tasks]
        names = [n for n in names if n in summary["tasks"]]
        if not names:
            continue
        lines += [f"### ROC-AUC, {split} split (mean ± std over seeds · learner; best non-leaked per column "
                  "in bold)", ""]
        lines += _table(summary, names, "rows") + _deltas(summary, names, split) + [""]
        if any(summary["tasks"][n]["paper_protocol"] for n in names):
            lines += [f"### Paper protocol (XGBoost on frozen embeddings), {split} split", ""]
            lines += _table(summary, names, "paper_protocol") + [""]
        missing = [f"- {n} / {what}: {why}" for n in names for what, why in summary["tasks"][n]["not_computed"].items()]
        if missing:
            lines += ["Not computed:", ""] + missing + [""]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "load average %.1f" % os.getloadavg()[0]
    except OSError:
        load = ""
    return f"{cores} cores ({cpu}), {load}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from dmf_ray.pipelines.evaluate import EvaluateConfig, evaluate, load_tasks

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict = {}
    specs, splits = task_specs(args)
    config = EvaluateConfig(model=args.model or str(work / "model"), tasks=specs, out=str(work / "report"),
                            seeds=args.seeds, robustness=args.robustness, n_jobs=args.n_jobs,
                            learner=args.learner, paper_protocol=not args.no_paper_protocol, finetune=args.finetune,
                            n_estimators=args.n_estimators, title="MoleculeNet benchmark (benchmarks/bench_moleculenet.py)")
    if not args.model:
        load_tasks(config)  # a task that cannot be loaded fails now, not after pretraining
        config.model = pretrain(args, work, timings)
    model_dir = config.model
    t0 = time.perf_counter()
    result = evaluate(config, log=log)
    timings["evaluate_s"] = round(time.perf_counter() - t0, 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model = result.summary["model"]
    text = "\n".join([
        "## MoleculeNet benchmark", "",
        f"Machine: {machine()}. Model: `{model_dir}` ({', '.join(model['modalities'])}, fused dim "
        f"{model['latent_dim']}), trained on {model['training_corpus']}"
        + (f", {model['training'].get('epochs')} epochs" if model["training"].get("epochs") is not None else "") + ".",
        "Time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()) + "; per task: "
        + ", ".join(f"{n} {sum(i['seconds'].values()):.0f} s" for n, i in result.details["tasks"].items()) + ".",
        f"Downstream: {result.summary['protocol']['downstream']}, {args.seeds} seed(s). Full report: "
        f"`{work / 'report' / 'report.md'}`.", "",
        markdown_tables(result.summary, tasks, splits),
    ])
    (work / "bench.md").write_text(text + "\n")
    (work / "bench.json").write_text(json.dumps({"timings": timings, "machine": machine(), "args": vars(args),
                                                 "summary": result.summary}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench_moleculenet: error: {exc}", file=sys.stderr)
        sys.exit(2)
