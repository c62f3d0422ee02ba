"""Benchmark: `dmf train` (Ray Train) samples/s vs a plain single-process PyTorch loop, and
`dmf embed` molecules/s vs featurize-only, all measured in the same run on the same machine.

    python benchmarks/bench_train.py --n 20000                  # MOSES molecules from ../shared/data
    python benchmarks/bench_train.py --store ./store --epochs 4 # reuse a store (no featurize/embed part)
    ray job submit --working-dir . -- python benchmarks/bench_train.py --n 200000 --gpu

Training: every side trains the same model (same config, seed, normalisation, global batch and
masking schedule) on the same training split. Ray Train runs in each layout of --configs
(WORKERSxTHREADS: by default DDP with one worker per core, and one worker using every core);
the plain loop holds the split in memory as tensors in one process, with one thread and with
one per core, and the faster of the two is the baseline. Epoch 1 includes Ray's warm-up, so the
ratios are taken over the epochs after the first, and the first epoch's time is printed beside
the mean of the later ones (issue 14: the first epoch must cost about what the others do). With --gpu, training uses one GPU per worker,
the baseline one GPU, and GPU utilisation is sampled with nvidia-smi during each fit.

Embedding: `embed()` of the SMILES file with the trained model (parse + encoders + fusion +
write) against the featurize-only rate of the same molecules (parse + encoders + write).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "moses" / "train.csv.gz"


def read_smiles(source: Path, n: int) -> list[str]:
    from dmf_ray.inputs import head_smiles

    return head_smiles(str(source), n)


def rdkit_sample() -> Path:
    import rdkit

    return Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"


class GpuSampler:
    """Mean GPU utilisation (%) from nvidia-smi, sampled every 0.5 s while active."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5,
                ).stdout
                values = [float(v) for v in out.split() if v.strip()]
                if values:
                    self.samples.append(sum(values) / len(values))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def plain_loop(store_uri: str, config, threads: int, device: str) -> list[float]:
    """samples/s per epoch of a single-process loop over the training split held as tensors."""
    import numpy as np
    import torch

    from dmf_ray.model import DynamicFusion, FusionConfig, array_moments, normalization_stats
    from dmf_ray.pipelines.train.data import validation_mask
    from dmf_ray.store import EmbeddingStore
    from dmf_ray.pipelines.train.step import make_optimizer, train_step

    store = EmbeddingStore.open(store_uri)
    names = config.modalities or list(store.modalities)
    arrays = store.read_numpy(names)
    train_rows = np.flatnonzero(~validation_mask(arrays.mol_ids, config.val_fraction))
    values = {m: arrays.values[m][train_rows].astype(np.float32) for m in names}
    present = arrays.present[train_rows]
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = DynamicFusion(FusionConfig.build(names, [values[m].shape[1] for m in names], config.model)).to(device)
    model.set_normalization(normalization_stats(array_moments(values, present, names)))
    optimizer = make_optimizer(model.parameters(), config.lr, config.weight_decay)
    inputs = [torch.from_numpy(values[m]).to(device) for m in names]
    mask = torch.from_numpy(present).to(device)
    schedule = config.masking
    n, bs = len(train_rows), config.batch_size
    steps = -(-n // bs)
    generator = torch.Generator().manual_seed(config.seed)
    rates = []
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(steps):
            idx = order[i * bs: (i + 1) * bs]
            p = schedule.probability((epoch + i / steps) / config.epochs)
            train_step(model, optimizer, [x[idx] for x in inputs], mask[idx], p, generator, config.grad_clip)
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - started))
    return rates


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/bench_train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="molecules to featurize from --source (default 20000)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="SMILES source (default ../shared/data/moses/train.csv.gz; RDKit's first_5K.smi if absent)")
    parser.add_argument("--store", help="reuse this store instead of featurizing (no featurize/embed timing)")
    parser.add_argument("--encoders", default="ecfp,maccs,rdkit2d", help="encoders for the store (default ecfp,maccs,rdkit2d)")
    parser.add_argument("--workdir", help="folder for the store, model and outputs (default: a temporary one, removed)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for both sides (default 3)")
    parser.add_argument("--configs", default=None,
                        help="Ray Train layouts as WORKERSxTHREADS, comma-separated (default on CPU: "
                             "'<cores>x1,1x<cores>', i.e. DDP over every core and one worker using them all; "
                             "with --gpu: '<gpus>x1')")
    parser.add_argument("--latent-dim", type=int, default=512, help="fused dim (default 512)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size (default 256)")
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker) and sample GPU utilisation")
    parser.add_argument("--skip-plain", action="store_true", help="skip the single-process baseline")
    parser.add_argument("--skip-embed", action="store_true", help="skip the embed throughput part")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def _featurize_store(args, workdir: Path, smi: Path, figures: dict) -> str:
    """The store to train on: --store, or --n molecules of --source featurized now (timed)."""
    if args.store:
        return args.store
    from dmf_ray.pipelines.featurize import featurize

    source = args.source if args.source.exists() else rdkit_sample()
    smiles = read_smiles(source, args.n)
    smi.write_text("".join(f"{s}\n" for s in smiles))
    store = str(workdir / "store")
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    result = featurize([str(smi)], store, args.encoders.split(","), shard_rows=max(1000, len(smiles) // 8),
                       log=lambda m: None)
    seconds = time.perf_counter() - started
    figures["featurize"] = {"source": str(source), "molecules": len(smiles), "seconds": seconds,
                            "molecules_per_s": len(smiles) / seconds}
    print(f"featurize: {len(smiles):,} molecules from {source.name} in {seconds:.1f} s "
          f"({len(smiles) / seconds:,.0f}/s); {result.failed} failed to parse")
    return store


def _ray_train(args, store: str, model_dir: Path, configs: list[tuple[int, int]]) -> tuple[dict, object]:
    """Figures per Ray Train layout (and the last TrainConfig, for the baseline)."""
    from dmf_ray.pipelines.train import TrainConfig, read_metrics_file, train

    per_config, config = {}, None
    for workers, threads in configs:
        label = f"{workers}x{threads}"
        config = TrainConfig(store=store, out=str(model_dir), epochs=args.epochs, workers=workers,
                             torch_threads=threads, use_gpu=args.gpu, model={"latent_dim": args.latent_dim},
                             batch_size=args.batch_size, fresh=True)
        started = time.perf_counter()
        with GpuSampler() if args.gpu else _nothing() as sampler:
            result = train(config, log=lambda m: print(m, flush=True))
        fit_seconds = time.perf_counter() - started
        history = read_metrics_file(model_dir / "metrics.jsonl")
        rates = [h["samples_per_s"] for h in history]
        epoch_s = [h["epoch_time_s"] for h in history]
        steady = rates[1:] or rates
        per_config[label] = {
            "workers": workers, "threads_per_worker": threads, "n_train": result.n_train,
            "samples_per_s_by_epoch": rates, "samples_per_s_after_first": sum(steady) / len(steady),
            "samples_per_s_best_after_first": max(steady), "data_wait_s_by_epoch": [h["data_wait_s"] for h in history],
            "epoch_time_s_by_epoch": epoch_s, "train_call_seconds": fit_seconds,
            "gpu_utilisation_mean_pct": sampler.mean,
        }
        later = epoch_s[1:] or epoch_s
        print(f"ray train {workers} worker(s) x {threads} thread(s): samples/s by epoch "
              f"{', '.join(f'{r:,.0f}' for r in rates)}; first epoch {epoch_s[0]:.1f} s, later ones "
              f"{sum(later) / len(later):.1f} s on average; whole train() call {fit_seconds:.1f} s"
              + (f"; GPU utilisation {sampler.mean:.0f}%" if sampler.mean is not None else ""), flush=True)
    return per_config, config


def _plain_baseline(args, store: str, config, cpus: float, per_config: dict, figures: dict) -> None:
    """The best single process on these cores (all of them as torch threads, or one thread),
    run as a Ray task so that it has the OS priority of the Ray Train workers (Ray starts its
    workers with nice 15): on a shared machine a baseline in this nice-0 driver would otherwise
    take the cores from them."""
    import ray

    device = "cuda" if args.gpu else "cpu"
    remote = ray.remote(num_cpus=cpus, num_gpus=1 if args.gpu else 0)(plain_loop)
    runs = {}
    for threads in sorted({1, max(1, int(cpus))}, reverse=True):
        rates = ray.get(remote.remote(store, config, threads, device))
        steady = rates[1:] or rates
        runs[threads] = {"samples_per_s_by_epoch": rates, "samples_per_s_after_first": sum(steady) / len(steady),
                         "samples_per_s_best_after_first": max(steady)}
        print(f"plain loop (1 process, {threads} thread(s), {device}): samples/s by epoch "
              f"{', '.join(f'{r:,.0f}' for r in rates)}", flush=True)
    best = max(runs, key=lambda t: runs[t]["samples_per_s_after_first"])
    baseline = runs[best]["samples_per_s_after_first"]
    figures["plain_loop"] = {"device": device, "by_threads": runs, "best_threads": best}
    best_epoch = max(r["samples_per_s_best_after_first"] for r in runs.values())
    figures["ratio_ray_over_plain"] = {}
    for label, fig in per_config.items():
        ratio = fig["samples_per_s_after_first"] / baseline
        # Best epoch against best epoch: on a shared machine, the least disturbed estimate.
        ratio_best = fig["samples_per_s_best_after_first"] / best_epoch
        figures["ratio_ray_over_plain"][label] = {"mean": ratio, "best_epoch": ratio_best}
        print(f"ratio Ray Train {label} / best plain loop ({best} thread(s)), epochs after the first: "
              f"{ratio:.2f} mean, {ratio_best:.2f} best epoch against best epoch (target >= 0.8)")


def _embed_rate(model_dir: Path, workdir: Path, smi: Path, figures: dict) -> None:
    try:
        from dmf_ray.pipelines.embed import embed
    except ImportError:
        print("embed: dmf_ray.pipelines.embed is not available; skipped")
        return
    out = workdir / "fused"
    started = time.perf_counter()
    embedded = embed(str(model_dir), str(out), inputs=[str(smi)], log=lambda m: None)
    seconds = time.perf_counter() - started
    rate = embedded.rows / seconds
    figures["embed"] = {"rows": embedded.rows, "failed": embedded.failed, "seconds": seconds,
                        "molecules_per_s": rate, "ratio_over_featurize": rate / figures["featurize"]["molecules_per_s"]}
    print(f"embed from SMILES: {embedded.rows:,} rows in {seconds:.1f} s ({rate:,.0f}/s), "
          f"{figures['embed']['ratio_over_featurize']:.2f} x the featurize-only rate")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dmf_ray.runtime import cluster_resources, ensure_ray

    ensure_ray(dashboard=True)  # Ray Train
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # no 10-s progress tables in the output
    cpus, gpus = cluster_resources()
    if args.gpu and gpus < 1:
        print("bench: --gpu given but the cluster has no GPU", file=sys.stderr)
        return 2
    if args.configs:
        configs = [tuple(int(v) for v in item.lower().split("x")) for item in args.configs.split(",")]
    elif args.gpu:
        configs = [(int(gpus), 1)]
    else:
        configs = [(max(1, int(cpus)), 1), (1, max(1, int(cpus)))]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dmf-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": {"cpus": cpus, "gpus": gpus, "load_avg": os.getloadavg()}, "ray": ray.__version__}
    smi = workdir / "input.smi"
    model_dir = workdir / "model"
    try:
        store = _featurize_store(args, workdir, smi, figures)
        figures["ray_train"], config = _ray_train(args, store, model_dir, configs)
        if not args.skip_plain:
            _plain_baseline(args, store, config, cpus, figures["ray_train"], figures)
        if not args.skip_embed and "featurize" in figures:
            _embed_rate(model_dir, workdir, smi, figures)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    return 0


class _nothing:
    mean = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


if __name__ == "__main__":
    sys.exit(main())
