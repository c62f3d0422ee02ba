"""Benchmark the Serve app against the same model called in-process, in the same run.

Latency p50/p99 and throughput at 1, 8 and 32 concurrent HTTP clients, for single-molecule and
64-molecule requests, beside FusionEmbedder.embed_smiles on the same requests in this process;
prints the Serve overhead (latency ratio) and the throughput ratio, and checks the targets
(single-molecule p50 < 20 ms; batched throughput >= 0.5 x in-process).

    python benchmarks/bench_serve.py                          # local Ray, random-weights model
    python benchmarks/bench_serve.py --model ./model
    ray job submit --working-dir . -- python benchmarks/bench_serve.py --model /shared/model

Inside a job (RAY_ADDRESS set) it attaches with ray.init(); clients always hit 127.0.0.1, so the
driver must run on a node with a Serve proxy (Serve puts one on every node by default), and the
model directory must be readable by every node. Request counts are bounded (--requests).
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

DEFAULT_ENCODERS = ["ecfp", "maccs", "rdkit2d"]


def parse_args(argv=None) -> argparse.Namespace:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="trained model directory; default: build one with random weights "
                   "(encoders ecfp, maccs, rdkit2d) in a temporary directory")
    p.add_argument("--clients", default="1,8,32", help="concurrent client counts (default: 1,8,32)")
    p.add_argument("--sizes", default="1,64", help="molecules per request (default: 1,64)")
    p.add_argument("--requests", type=int, default=200,
                   help="requests per single-molecule case; larger requests get proportionally fewer, "
                   "at least 4 per client (default: 200)")
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP port on 127.0.0.1 (default: 8000)")
    p.add_argument("--encoder-replicas", type=int, default=1,
                   help="fixed Encoders replicas (autoscaling off, so runs compare; default: 1)")
    p.add_argument("--encode-step-atoms", type=int, default=None,
                   help="heavy atoms per encoder step on the CPU (ServeArgs.encode_step_atoms; default: its default)")
    p.add_argument("--separate-fusion", action="store_true", help="fusion model in its own deployment")
    p.add_argument("--smiles-file", help="SMILES file (first column); default: RDKit's NCI first_5K.smi")
    p.add_argument("--access-log", action="store_true", help="keep Serve's per-request access logs on")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    args.clients = [int(x) for x in args.clients.split(",")]
    args.sizes = [int(x) for x in args.sizes.split(",")]
    return args


def load_smiles(path: str | None, n: int) -> list[str]:
    if path is None:
        import rdkit

        path = os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")
    from dmf_ray.molecules import InvalidSmilesError, parse_smiles

    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0].lower() == "smiles":
                continue
            try:
                parse_smiles(parts[0])
            except InvalidSmilesError:
                continue
            out.append(parts[0])
            if len(out) == n:
                break
    return out


def summarize(latencies: list[float], wall: float, molecules: int) -> dict:
    lat = sorted(latencies)
    pick = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))]  # noqa: E731
    return {"requests": len(lat), "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * pick(0.99),
            "req_per_s": len(lat) / wall, "mol_per_s": molecules / wall}


def run_in_process(embedder, requests: list[list[str]]) -> dict:
    embedder.embed_smiles(requests[0])  # warm-up
    latencies = []
    start = time.perf_counter()
    for smiles in requests:
        t = time.perf_counter()
        results = embedder.embed_smiles(smiles)
        latencies.append(time.perf_counter() - t)
        assert all(r["error"] is None for r in results)
    return summarize(latencies, time.perf_counter() - start, sum(map(len, requests)))


def run_http(port: int, requests: list[list[str]], clients: int) -> dict:
    """`clients` threads, each with one keep-alive connection, draining a shared request list."""
    bodies = [json.dumps({"smiles": s}).encode() for s in requests]
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for body in [bodies[0]] * 2:  # warm-up, not timed
            conn.request("POST", "/bench/v1/embed", body, headers)
            conn.getresponse().read()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            t = time.perf_counter()
            conn.request("POST", "/bench/v1/embed", bodies[i], headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - t
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                else:
                    failures.append(f"{response.status} {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    barrier_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - barrier_start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return summarize(latencies, wall, sum(map(len, requests)))


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch
    from ray import serve

    from dmf_ray.inference import FusionEmbedder
    from dmf_ray.testing import save_random_model
    from dmf_ray.pipelines.serve import build_app

    # The in-process baseline uses one torch thread, as each Serve replica does (torch's default
    # of one thread per core only fights the other processes on a small node).
    torch.set_num_threads(1)
    pool = load_smiles(args.smiles_file, max(args.sizes) * 16)
    tmp = None
    model_dir = args.model
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dmf-bench-")
        model_dir = save_random_model(os.path.join(tmp.name, "model"), pool[:256], DEFAULT_ENCODERS)
        print(f"NOTE: no --model given: using an untrained model with RANDOM WEIGHTS in {model_dir} "
              f"({', '.join(DEFAULT_ENCODERS)}, latent 512); timings do not depend on the weights. On a "
              f"multi-node cluster pass --model on storage every node reads (a shared path or s3://...).")
    model_dir = model_dir if "://" in model_dir else os.path.abspath(model_dir)

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=args.access_log)
    cpus = ray.cluster_resources().get("CPU", 0)
    serve_was_running = bool(serve.status().proxies)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    most = max(256, max(args.sizes))
    pinned = {"num_cpus": 0.25, "autoscaling": None, "num_replicas": 1, "max_batch_molecules": max(most, 512)}
    app_args = {
        "model_dir": model_dir, "max_smiles_per_request": most, "separate_fusion": args.separate_fusion,
        # Small reservations so the app fits a 2-CPU machine; replicas pinned so runs compare.
        "ingress": {"num_cpus": 0.25, "autoscaling": None, "num_replicas": 1},
        "encoders": {**pinned, "num_replicas": args.encoder_replicas},
        # A neural encoder's own deployment (e.g. chemnet); on a cluster without GPUs it runs on
        # the CPU, as `dmf serve` is told with --gpu-encoders-num-gpus 0.
        "gpu_encoders": {**pinned, "num_replicas": args.encoder_replicas,
                         **({} if ray.cluster_resources().get("GPU", 0) else {"num_gpus": 0})},
        "fusion": {**pinned, "max_batch_molecules": max(most, 4096)},
    }
    # Per-request access logs cost ~1 ms of CPU per hop on a small node; off by default, as in
    # `dmf serve` (ServeArgs.access_log).
    app_args["access_log"] = args.access_log
    if args.encode_step_atoms is not None:
        app_args["encode_step_atoms"] = args.encode_step_atoms
    logging_config = None if args.access_log else {"log_level": "WARNING"}
    serve.run(build_app(app_args), name="dmf-bench", route_prefix="/bench", logging_config=logging_config)

    embedder = FusionEmbedder(model_dir)
    load_before = os.getloadavg()
    rows = []
    try:
        for size in args.sizes:
            count = max(1, args.requests // size) if size > 1 else args.requests
            count = max(count, 4 * max(args.clients))
            requests = [[pool[(i * size + j) % len(pool)] for j in range(size)] for i in range(count)]
            base = run_in_process(embedder, requests[: max(8, count // 4)] if size > 1 else requests)
            rows.append({"mode": "in-process", "size": size, "clients": 1, **base})
            for clients in args.clients:
                rows.append({"mode": "serve", "size": size, "clients": clients,
                             **run_http(args.port, requests, clients)})
    finally:
        serve.delete("dmf-bench")
        if not serve_was_running:
            serve.shutdown()
    load_after = os.getloadavg()

    print(f"\nmachine: {os.cpu_count()} cores visible, Ray CPUs {cpus:g}; load average before/after "
          f"{load_before[0]:.1f}/{load_after[0]:.1f}; ray {ray.__version__}, torch {torch.__version__} "
          f"(1 thread in-process); encoder replicas {args.encoder_replicas}, "
          f"fusion {'in its own deployment' if args.separate_fusion else 'in the ingress'}")
    print(f"model: {model_dir}\n")
    print(f"{'mode':<11} {'mol/req':>7} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>8} {'mol/s':>8}")
    for r in rows:
        print(f"{r['mode']:<11} {r['size']:>7} {r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['req_per_s']:>8.1f} {r['mol_per_s']:>8.1f}")

    print()
    verdicts = []
    for size in args.sizes:
        base = next(r for r in rows if r["mode"] == "in-process" and r["size"] == size)
        served = [r for r in rows if r["mode"] == "serve" and r["size"] == size]
        one = min(served, key=lambda r: r["clients"])
        best = max(served, key=lambda r: r["mol_per_s"])
        overhead = one["p50_ms"] / base["p50_ms"]
        ratio = best["mol_per_s"] / base["mol_per_s"]
        print(f"{size:>3} mol/request: Serve overhead (p50 at {one['clients']} client vs in-process) "
              f"{overhead:.2f}x (+{one['p50_ms'] - base['p50_ms']:.1f} ms); best throughput "
              f"{ratio:.2f}x in-process (at {best['clients']} clients)")
        if size == 1:
            verdicts.append(("single-molecule p50 < 20 ms", one["p50_ms"] < 20, f"{one['p50_ms']:.1f} ms"))
        else:
            verdicts.append((f"{size}-molecule throughput >= 0.5x in-process", ratio >= 0.5, f"{ratio:.2f}x"))
    for name, ok, value in verdicts:
        print(f"target {name}: {'PASS' if ok else 'MISS'} ({value})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load_average": [load_before, load_after], "model_dir": model_dir,
                       "random_weights": args.model is None}, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
