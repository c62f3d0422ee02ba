"""How fast the dmf command answers: `dmf --help` and `dmf store info` beside `python -c pass`,
all timed in the same run (issue 16: both under 1 s on a local store).

    python benchmarks/bench_cli.py                 # an empty store made here
    python benchmarks/bench_cli.py --store dmf-quickstart/store --repeats 7

Each command runs in a fresh interpreter (as a user's shell starts it); the table gives the
median wall time over --repeats runs, the same figure minus the bare interpreter's start-up, and
the heavy modules each command imported (torch, ray, rdkit: none should be needed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "rdkit", "pandas")


def wall_times(argv: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def heavy_imports(dmf_args: list[str], env: dict[str, str]) -> list[str]:
    code = ("import sys, io, contextlib\nfrom dmf_ray.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({dmf_args!r})\n    except SystemExit:\n        pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [m for m in done.stdout.strip().split(",") if m]


def empty_store(folder: str) -> str:
    from dmf_ray.store import EmbeddingStore

    path = os.path.join(folder, "store")
    EmbeddingStore.open_or_create(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store for `dmf store info` (default: an empty store made in a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per command; the median is shown (default 5)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or empty_store(tmp)
        dmf = [sys.executable, "-m", "dmf_ray.cli"]
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("dmf --help", [*dmf, "--help"], ["--help"]),
            ("dmf store info", [*dmf, "store", "info", store], ["store", "info", store]),
        ]
        # Interleaved rounds, so load from other processes falls on every command alike.
        samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(args.repeats):
            for name, argv, _ in cases:
                samples[name] += wall_times(argv, 1, env)
        base = statistics.median(samples["python -c pass"])
        load = os.getloadavg()[0]
        print(f"median of {args.repeats} runs each; load average {load:.2f} on {os.cpu_count()} CPUs; store {store}")
        print(f"{'command':<18}{'wall s':>8}{'- python s':>12}{'x python':>10}  heavy imports")
        for name, _, dmf_args in cases:
            wall = statistics.median(samples[name])
            heavy = "" if dmf_args is None else (", ".join(heavy_imports(dmf_args, env)) or "none")
            print(f"{name:<18}{wall:>8.3f}{wall - base:>12.3f}{wall / base:>10.1f}  {heavy}")


if __name__ == "__main__":
    main()
