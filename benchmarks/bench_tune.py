"""Benchmark: what a `dmf tune` trial costs against a plain `train()` of the same config, in the
same run on the same Ray cluster and store.

    flock /tmp/dmf-ray.lock python benchmarks/bench_tune.py --n 1000 --epochs 4

1. featurize --n molecules of RDKit's bundled NCI file (maccs + rdkit2d) into a temporary store;
2. train() the config once (lr 3e-3): the baseline wall time;
3. tune() a grid of two learning rates (3e-3 and 1e-3, the same epochs; ASHA on, grace 1) on one
   trial at a time: its wall time per trial (Tune's time_total_s, and the search's total / trials);
4. with ``--task FOLDER`` (a classification task, e.g. /work/shared/data/moleculenet/bbbp), the
   same search on the downstream objective (``downstream/roc_auc``, scored at every epoch): its
   full trials' time against the plain train() too, and the seconds one epoch's scoring took.

Prints one JSON object with the timings and the load average before and after (the machine is
shared: timings move with the load).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from itertools import islice
from pathlib import Path

NAMES = ["maccs", "rdkit2d"]
TINY = {"model": {"latent_dim": 64, "gate_hidden": 64, "attention_hidden": 32, "decoder_hidden": 128},
        "batch_size": 64, "val_fraction": 0.1, "workers": 1}


def _store(root: Path, n: int) -> str:
    import rdkit

    from dmf_ray.pipelines.featurize import featurize

    source = os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")
    smi = root / "mols.smi"
    with open(source) as f:
        smi.write_text("".join(islice(f, n)))
    featurize([str(smi)], str(root / "store"), NAMES, shard_rows=max(n, 1), log=lambda m: None)
    return str(root / "store")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="molecules in the store")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each run")
    parser.add_argument("--task", help="also search on the downstream objective of this task folder")
    args = parser.parse_args()

    from dmf_ray.cli.tune import entries
    from dmf_ray.pipelines.train import TrainConfig, train
    from dmf_ray.pipelines.tune import TuneConfig, tune
    from dmf_ray.runtime import ensure_ray

    training, tasks = entries()

    load_before = os.getloadavg()
    ensure_ray(dashboard=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = _store(root, args.n)
        started = time.perf_counter()
        plain = train(TrainConfig(store=store, out=str(root / "plain"), epochs=args.epochs, lr=3e-3, **TINY),
                      log=lambda m: None)
        plain_s = time.perf_counter() - started
        started = time.perf_counter()
        searched = tune(TuneConfig(store=store, out=str(root / "tuned"), epochs=args.epochs, settings=TINY,
                                   search=["lr=grid:3e-3,1e-3"], num_samples=1, max_concurrent_trials=1),
                        training, log=lambda m: None)
        tune_s = time.perf_counter() - started
        downstream = None
        if args.task:
            downstream = tune(TuneConfig(store=store, out=str(root / "tuned-task"), epochs=args.epochs, settings=TINY,
                                         search=["lr=grid:3e-3,1e-3"], tasks=[args.task], num_samples=1,
                                         max_concurrent_trials=1), training, log=lambda m: None, tasks=tasks)
    figures = {"molecules": args.n, "epochs": args.epochs, "modalities": NAMES,
               "plain_train_s": round(plain_s, 1), "plain_val_loss": plain.metrics.get("val/loss"),
               "tune_total_s": round(tune_s, 1), **_search_figures(searched, args.epochs, plain_s, "")}
    if downstream is not None:
        figures.update(_search_figures(downstream, args.epochs, plain_s, "downstream_"))
        figures["downstream_scoring_s_per_epoch"] = downstream.best.final.get("downstream/seconds")
        figures["downstream_objective"] = downstream.objective
    figures.update(load_before=[round(x, 2) for x in load_before], load_after=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps(figures, indent=2))


def _search_figures(result, epochs: int, plain_s: float, prefix: str) -> dict:
    """The timings of one search; ``full_trial_over_plain``: a trial that ran every epoch, in
    Tune's time_total_s, over the plain train() of the same config (the baseline)."""
    trials = result.trials
    full = [t.seconds for t in trials if t.epochs_run == epochs and t.seconds is not None]
    return {f"{prefix}{k}": v for k, v in {
        "trials": len(trials),
        "trial_time_total_s": {t.trial_id: t.seconds for t in trials},
        "trial_epochs": {t.trial_id: t.epochs_run for t in trials},
        "full_trial_over_plain": round(sum(full) / len(full) / plain_s, 2) if full else None,
        "best_params": result.best.params, "best_metric": {result.metric: result.best.metric},
    }.items()}


if __name__ == "__main__":
    main()
