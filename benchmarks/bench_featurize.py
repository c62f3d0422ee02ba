"""Benchmark: `dmf featurize` throughput vs a plain single-process RDKit loop, store size, memory.

    python benchmarks/bench_featurize.py --n 200000            # MOSES molecules from ../shared/data
    ray job submit --working-dir . -- python benchmarks/bench_featurize.py --n 1000000

Prints molecules/s of the pipeline with `ecfp`, the same for a plain loop (parse + Morgan counts)
measured in the same run, their ratio against `cores x loop`, bytes per molecule in the store,
and the peak memory (PSS) of the driver plus the local Ray it started. Two more baselines show
where the gap to `cores x loop` comes from: the plain loop run in one process per core at once
(what the cores give RDKit together), and a single-process loop doing the pipeline's own
per-molecule work (canonical SMILES and id included, writes excluded). Their product is the
ceiling of the ratio for any pipeline doing this work on these cores, before it writes anything.
Each baseline is the median of --repeats rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "moses" / "train.csv.gz"


def read_smiles(source: Path, n: int) -> list[str]:
    from dmf_ray.inputs import head_smiles

    return head_smiles(str(source), n)


def plain_loop_rate(smiles: list[str]) -> float:
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    start = time.perf_counter()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            generator.GetCountFingerprintAsNumPy(mol)
    return len(smiles) / (time.perf_counter() - start)


def parallel_loop_rate(smiles: list[str], processes: int) -> float:
    """The plain loop in ``processes`` processes at once, each over the same molecules: the
    summed rate is what this machine's cores give RDKit together (shared caches, memory
    bandwidth, hyperthreads), i.e. the most any parallel pipeline could reach here."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return sum(pool.map(plain_loop_rate, [smiles] * processes))


def same_work_loop_rate(smiles: list[str], encoders: list[str]) -> float:
    """One process doing each molecule's full work as the pipeline's parse actors do it (parse,
    canonical SMILES, id, the encoders, a molecule at a time), minus Ray and the Parquet writes:
    what the pipeline could reach."""
    import numpy as np

    from dmf_ray.encoders import create_encoder
    from dmf_ray.molecules import Molecule, iter_parsed

    chosen = [create_encoder(name) for name in encoders]
    outputs = [np.zeros((len(smiles), encoder.dim), dtype=encoder.dtype) for encoder in chosen]
    start = time.perf_counter()
    for i, parsed in enumerate(iter_parsed(smiles)):
        if isinstance(parsed, Molecule):
            for encoder, out in zip(chosen, outputs):
                encoder.encode_into(parsed, out[i])
    return len(smiles) / (time.perf_counter() - start)


class ProcessSampler:
    """Samples this process and its descendants (for a local Ray: the GCS, the raylet and every
    worker) once a second: the peak of their summed proportional memory (PSS: shared pages split
    between their users, so the object store is counted once), the peak PSS of each process
    kind, and the CPU seconds each kind used (where the two cores went)."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.peak = 0
        self.peak_by_kind: dict[str, int] = {}
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (kind, cpu s at first sample, at last)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _kind(proc: psutil.Process) -> str:
        if proc.pid == os.getpid():
            return "driver"
        name = proc.name()
        if name.startswith("ray::"):  # ray::MapWorker(MapBatches(_ParseStage)).submit, ray::IDLE, ...
            inner = re.findall(r"(\w+)\)", name)
            return inner[-1] if inner else name[len("ray::"):].split(".")[0]
        return name

    def _sample(self) -> None:
        me = psutil.Process(os.getpid())
        total, by_kind = 0, {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                kind = self._kind(proc)
                pss = proc.memory_full_info().pss
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += pss
            by_kind[kind] = by_kind.get(kind, 0) + pss
            first = self._cpu.get(proc.pid, (kind, times.user + times.system, 0.0))[1]
            self._cpu[proc.pid] = (kind, first, times.user + times.system)
        self.peak = max(self.peak, total)
        for kind, pss in by_kind.items():
            self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), pss)

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, first, last in self._cpu.values():
            out[kind] = out.get(kind, 0.0) + last - first
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="molecules to featurize (default 200000)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="SMILES file (.csv.gz with SMILES first, or .smi)")
    parser.add_argument("--loop-n", type=int, default=20_000, help="molecules for the plain-loop baseline")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the baseline loops (medians are reported)")
    parser.add_argument("--encoders", default="ecfp")
    parser.add_argument("--shard-rows", type=int, default=None, help="rows per shard of the new store (default: dmf's)")
    parser.add_argument("--workdir", default=None, help="where to put the input copy and the store (default: a temp dir)")
    args = parser.parse_args()

    from dmf_ray.pipelines.featurize import featurize
    from dmf_ray.runtime import cluster_resources, ensure_ray
    from dmf_ray.store import EmbeddingStore

    if not args.source.exists():
        import rdkit

        args.source = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"
        print(f"shared data absent; using {args.source}")
    smiles = read_smiles(args.source, args.n)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dmf-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    library = workdir / "library.smi"
    library.write_text("\n".join(smiles) + "\n")
    store = workdir / "store"
    shutil.rmtree(store, ignore_errors=True)

    # Baselines as medians of --repeats rounds, each loop once per round: a single few-second
    # timing on a shared VM varies by +-10 %. Before Ray starts: no fork after ray.init.
    sample, encoders, local_cores = smiles[: args.loop_n], args.encoders.split(","), len(os.sched_getaffinity(0))
    rounds = [(plain_loop_rate(sample), same_work_loop_rate(sample, encoders), parallel_loop_rate(sample, local_cores))
              for _ in range(args.repeats)]
    loop_rate, same_work_rate, parallel_rate = (statistics.median(r[k] for r in rounds) for k in range(3))
    ensure_ray()
    cpus, _ = cluster_resources()
    with ProcessSampler() as memory:
        start = time.perf_counter()
        result = featurize([str(library)], str(store), args.encoders.split(","), shard_rows=args.shard_rows,
                           log=lambda m: print(m, flush=True))
        seconds = time.perf_counter() - start
    info = EmbeddingStore.open(str(store)).info()
    rate = len(smiles) / seconds
    figures = {
        "molecules": len(smiles),
        "encoders": args.encoders,
        "cpus": cpus,
        "pipeline_mol_per_s": round(rate, 1),
        "plain_loop_mol_per_s": round(loop_rate, 1),
        "ratio_vs_cores_x_loop": round(rate / (cpus * loop_rate), 3),
        "parallel_loop_mol_per_s": round(parallel_rate, 1),
        "parallel_loop_processes": local_cores,
        "parallel_loop_ratio_vs_cores_x_loop": round(parallel_rate / (local_cores * loop_rate), 3),
        "same_work_loop_mol_per_s": round(same_work_rate, 1),
        "ceiling_before_writes": round(same_work_rate / loop_rate * parallel_rate / (local_cores * loop_rate), 3),
        "ratio_vs_cores_x_same_work_loop": round(rate / (cpus * same_work_rate), 3),
        "store_bytes_per_molecule": round(info["bytes"] / max(1, info["molecules"]), 1),
        "peak_pss_gb": round(memory.peak / 1e9, 2),
        "seconds": round(seconds, 1),
        "failed": result.failed,
    }
    print(f"featurize ({args.encoders}): {rate:,.0f} mol/s; plain loop {loop_rate:,.0f} mol/s/core; "
          f"ratio vs {cpus:g} cores x loop = {figures['ratio_vs_cores_x_loop']:.2f} (target >= 0.6)")
    print(f"{local_cores} plain loops at once: {parallel_rate:,.0f} mol/s = {figures['parallel_loop_ratio_vs_cores_x_loop']:.2f} x "
          f"({local_cores} x loop), what this machine's cores give RDKit together")
    print(f"same-work loop (parse + canonical SMILES + id + {args.encoders}, no writes) {same_work_rate:,.0f} mol/s/core; "
          f"ratio vs {cpus:g} cores x same-work loop = {figures['ratio_vs_cores_x_same_work_loop']:.2f}")
    print(f"ceiling of the ratio for any pipeline doing this work on these cores, before writes: "
          f"{figures['ceiling_before_writes']:.2f} (same-work / loop x parallel scaling)")
    print(f"store: {figures['store_bytes_per_molecule']:.0f} bytes/molecule (target <= 300); "
          f"peak memory (PSS of driver + local Ray) {figures['peak_pss_gb']:.2f} GB")
    top = list(memory.cpu_by_kind().items())[:6]
    print("CPU seconds used during the run, by process: "
          + ", ".join(f"{k} {v:.0f}" for k, v in top))
    print("peak PSS by process kind: " + ", ".join(
        f"{k} {v / 1e9:.2f} GB" for k, v in sorted(memory.peak_by_kind.items(), key=lambda kv: -kv[1])[:6]))
    print("BENCH " + json.dumps(figures))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
