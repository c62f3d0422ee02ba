"""Benchmark: the neural built-ins (chemnet, chemprop) through ``dmf featurize`` vs a plain loop.

    python benchmarks/bench_neural.py --encoder chemnet --n 50000
    python benchmarks/bench_neural.py --encoder chemprop --n 50000

Measured in one run, on the same MOSES molecules and the same model:

  loop       one process, the encoder's own batches (``encode`` on ``batch_size`` molecules),
             torch on one thread: molecules per second per core (on ``--loop-n`` molecules)
  loop-all   the same loop with torch's default threads (every core in one process)
  featurize  ``featurize(..., encoders=[name])`` on a local Ray with every core: parse, the
             encoder's actor pool, Parquet writes and commits; wall time from the call to its
             return, actor start-up (torch/chemprop imports, model load) included; and its
             steady rate, between its first and last progress lines (actors up)

and the ratio featurize / (cores x loop), the issue's target being >= 0.8 on CPU. Prints one
JSON line. With a GPU, featurize's actors get ``num_gpus`` each and the loop runs on the GPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import tempfile
import time
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "moses" / "train.csv.gz"


def read_smiles(path: Path, n: int) -> list[str]:
    out = []
    with gzip.open(path, "rt") as f:
        header = f.readline().strip().split(",")
        column = header.index("SMILES") if "SMILES" in header else 0
        for line in f:
            out.append(line.rstrip("\n").split(",")[column])
            if len(out) == n:
                break
    return out


def loop_rate(name: str, smiles: list[str], threads: int | None) -> float:
    """Molecules/s of a plain batched loop of the encoder in this process."""
    import torch

    from dmf_ray.encoders import encoder_from_option
    from dmf_ray.molecules import parse_smiles

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _, encoder = encoder_from_option(name)
        molecules = [parse_smiles(s) for s in smiles]
        encoder.encode(molecules[:8])  # load the model outside the timing
        start = time.perf_counter()
        for i in range(0, len(molecules), encoder.default_batch_size):
            encoder.encode(molecules[i:i + encoder.default_batch_size])
        return len(molecules) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def featurize_rate(name: str, smiles: list[str], cpus: int) -> tuple[float, float, float]:
    """(molecules/s, seconds, steady molecules/s) of featurize on a fresh local Ray with ``cpus``
    CPUs; steady: between its first and last progress lines, i.e. once the actors are up."""
    import ray

    from dmf_ray.pipelines.featurize import featurize

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    progress: list[tuple[float, int]] = []  # (time, vectors written) from featurize's progress lines

    def log(message: str) -> None:
        found = re.match(r"featurize: so far ([\d,]+) vectors written", message)
        if found:
            progress.append((time.perf_counter(), int(found.group(1).replace(",", ""))))

    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "lib.smi"
            src.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(smiles)))
            start = time.perf_counter()
            featurize([str(src)], str(Path(tmp) / "store"), [name], log=log, progress_interval_s=5.0)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    steady = ((progress[-1][1] - progress[0][1]) / (progress[-1][0] - progress[0][0])
              if len(progress) > 1 and progress[-1][0] > progress[0][0] else float("nan"))
    return len(smiles) / seconds, seconds, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="chemnet", help="an --encoders item: chemnet, chemprop, chemprop=PATH")
    parser.add_argument("--n", type=int, default=50_000, help="molecules through featurize")
    parser.add_argument("--loop-n", type=int, default=2_000, help="molecules through the plain loop")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch

    smiles = read_smiles(args.source, max(args.n, args.loop_n))
    per_core = loop_rate(args.encoder, smiles[: args.loop_n], threads=1)
    all_threads = loop_rate(args.encoder, smiles[: args.loop_n], threads=None)
    load_before = os.getloadavg()[0]
    rate, seconds, steady = featurize_rate(args.encoder, smiles[: args.n], args.cpus)
    print(json.dumps({
        "encoder": args.encoder, "molecules": args.n, "cpus": args.cpus, "gpu": torch.cuda.is_available(),
        "loop_per_core_mol_s": round(per_core, 1), "loop_all_threads_mol_s": round(all_threads, 1),
        "featurize_mol_s": round(rate, 1), "featurize_s": round(seconds, 1),
        "featurize_steady_mol_s": round(steady, 1),
        "ratio_to_cores_x_loop": round(rate / (args.cpus * per_core), 3),
        "steady_ratio_to_cores_x_loop": round(steady / (args.cpus * per_core), 3),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
