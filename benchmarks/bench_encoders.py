"""Benchmark: transformer encoder throughput, length-bucketed vs the naive padded loop.

    python benchmarks/bench_encoders.py --n 256                     # CPU, SELFIES-TED-sized random BART
    python benchmarks/bench_encoders.py --n 20000 --precisions float32,bfloat16     # on a GPU machine
    ray job submit --working-dir . -- python benchmarks/bench_encoders.py --n 20000  # runs on a GPU worker
                                                                               # when the cluster has one

The model is a random-weight BART at SELFIES-TED's size (12 encoder layers, d_model 1024,
16 heads, FFN 4096: BART-large, whose 1024-d output SELFIES-TED has) with a word-level SELFIES
vocabulary built from the molecules, saved to a temp dir: speed does not depend on the weights.
Three ways to embed the same molecules with the same model are timed in one run:

  bucketed   dmf_ray's encoder: batches of --batch molecules (what a Ray actor receives),
             sorted by token length and cut by a padded-token budget
  longest    the naive loop: --batch molecules in input order, padded to the longest of them
  card       SELFIES-TED's model-card recipe: padded to max_length (128) every time

Prints molecules/s of each, the speed-up of bucketed over each baseline (same run, same model),
the padding each one computes, and the largest difference between their vectors (a check that
bucketing changes speed, not results). On a GPU: also achieved TFLOP/s (encoder matmul FLOPs
actually executed, and the useful ones on real tokens) against the card's dense peak, for each
--precisions (float32 vs bfloat16 shows the effect of bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "moses" / "train.csv.gz"

# Dense (no sparsity) peak TFLOP/s by card and compute dtype, from the vendors' data sheets.
# float32 means plain FP32 (PyTorch's default matmul precision does not use TF32).
PEAK_TFLOPS = {
    "H100 SXM": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0},
    "H100 NVL": {"bfloat16": 835.0, "float16": 835.0, "float32": 60.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3},
    "A10": {"bfloat16": 125.0, "float16": 125.0, "float32": 31.2},
    "V100": {"float16": 125.0, "float32": 15.7},
    "T4": {"float16": 65.0, "float32": 8.1},
}


def read_smiles(source: Path, n: int) -> list[str]:
    from dmf_ray.inputs import head_smiles

    return head_smiles(str(source), n)


def peak_tflops(device_name: str, precision: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "H100 SXM" before "H100"
        if key.replace(" ", "").lower() in device_name.replace(" ", "").replace("-", "").lower():
            return PEAK_TFLOPS[key].get(precision)
    return None


def encoder_flops(lengths, d: int, f: int, layers: int) -> float:
    """Matmul FLOPs of the encoder for sequences of these (padded) lengths: per layer, Q/K/V/O
    projections 8Ld^2, attention scores and values 4L^2d, feed-forward 4Ldf."""
    return float(sum(layers * (8 * L * d * d + 4 * L * L * d + 4 * L * d * f) for L in lengths))


def naive_loop(encoder, molecules, batch: int, pad_to_max: bool):
    """The loop a user writes from the model card: fixed batches in input order, tokenizer
    padding, encoder forward, mean over the attention mask."""
    import numpy as np
    import torch

    model, tokenizer = encoder.loaded(), encoder.tokenizer()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(molecules), batch):
        texts = [encoder.text_of(m) for m in molecules[start : start + batch]]
        token = tokenizer(texts, return_tensors="pt", max_length=encoder.options["max_length"], truncation=True,
                          padding="max_length" if pad_to_max else "longest")
        ids, mask = token["input_ids"].to(device), token["attention_mask"].to(device)
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            m = mask.unsqueeze(-1).float()
            out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).cpu().numpy())
    return np.concatenate(out)


def bucketed(encoder, molecules, batch: int):
    import numpy as np

    out = [encoder.encode(molecules[s : s + batch]) for s in range(0, len(molecules), batch)]
    errors = [e for b in out for e in b.errors if e]
    if errors:
        raise RuntimeError(f"{len(errors)} molecules failed, e.g. {errors[0]}")
    return np.concatenate([b.values for b in out])


def padded_lengths(method: str, lengths: list[int], batch: int, max_length: int, encoder, device: str) -> list[int]:
    """The length each molecule is padded to by each method (for padding and FLOP counts)."""
    from dmf_ray.encoders.pretrained import length_buckets

    padded = []
    for s in range(0, len(lengths), batch):
        chunk = lengths[s : s + batch]
        if method == "card":
            padded += [max_length] * len(chunk)
        elif method == "longest":
            padded += [max(chunk)] * len(chunk)
        else:
            for b in length_buckets(chunk, encoder.max_tokens(device), encoder.MAX_ROWS, encoder.min_tokens(device)):
                padded += [max(chunk[i] for i in b)] * len(b)
    return padded


def timed(fn, *args):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from dmf_ray.encoders.hf import SELFIES_TED_SIZE, TINY_SIZE, TransformerEncoder, save_random_bart
    from dmf_ray.molecules import InvalidSmilesError, parse_smiles, to_selfies

    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.source
    if not source.exists():
        import rdkit

        source = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"
        print(f"shared data absent; using {source}")
    molecules = []
    for s in read_smiles(source, args.n * 2):
        try:
            m = parse_smiles(s)
            to_selfies(m.smiles)
        except InvalidSmilesError:
            continue
        molecules.append(m)
        if len(molecules) == args.n:
            break
    size = dict(SELFIES_TED_SIZE if args.size == "selfies-ted" else TINY_SIZE)
    if args.layers:
        size["layers"] = args.layers
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dmf-bench-enc-"))
    model_dir = str(workdir / "model")
    t0 = time.perf_counter()
    # float16 on disk halves the write; the encoder loads it as float32 on CPU.
    save_random_bart(model_dir, size=size, smiles=[m.smiles for m in molecules], weights_dtype="float16")
    build_s = time.perf_counter() - t0

    cuda = torch.cuda.is_available() and args.device == "auto"
    precisions = [p for p in args.precisions.split(",") if p] if cuda else ["float32"]
    device_name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    figures: dict = {
        "device": device_name, "molecules": len(molecules), "source": str(source), "model": size,
        "batch": args.batch, "max_length": 128, "model_build_s": round(build_s, 1), "runs": {},
    }
    print(f"device: {device_name}; {len(molecules)} molecules from {source.name}; BART encoder {size}; "
          f"batches of {args.batch}")
    for precision in precisions:
        t0 = time.perf_counter()
        encoder = TransformerEncoder(model_dir, input="selfies", pooling="mean", max_length=128,
                                     precision=precision, dtype="float32", device=args.device)
        encoder.loaded()
        encoder.encode(molecules[: min(16, len(molecules))])  # warm-up (kernels, allocator)
        load_s = time.perf_counter() - t0
        methods = {"bucketed": lambda: bucketed(encoder, molecules, args.batch)}
        if "longest" in args.baselines:
            methods["longest"] = lambda: naive_loop(encoder, molecules, args.batch, pad_to_max=False)
        if "card" in args.baselines:
            methods["card"] = lambda: naive_loop(encoder, molecules, args.batch, pad_to_max=True)
        real = [len(x) for x in encoder.tokenizer()([encoder.text_of(m) for m in molecules], truncation=True, max_length=128)["input_ids"]]
        results, vectors, best = {}, {}, {}
        names = list(methods)
        for r in range(args.repeats):  # rotate the order each round; keep each method's best time
            for name in names[r % len(names):] + names[: r % len(names)]:
                seconds, vectors[name] = timed(methods[name])
                best[name] = min(seconds, best.get(name, float("inf")))
        for name in names:
            seconds = best[name]
            padded = padded_lengths(name, real, args.batch, 128, encoder, encoder.runtime_device())
            executed = encoder_flops(padded, size["d_model"], size["ffn"], size["layers"])
            useful = encoder_flops(real, size["d_model"], size["ffn"], size["layers"])
            item = {
                "seconds": round(seconds, 2),
                "mol_per_s": round(len(molecules) / seconds, 1),
                "padding_fraction": round(1 - sum(real) / sum(padded), 3),
                "executed_tflops": round(executed / seconds / 1e12, 4),
                "useful_tflops": round(useful / seconds / 1e12, 4),
            }
            peak = peak_tflops(device_name, str(encoder.compute_dtype("cuda" if cuda else "cpu")).removeprefix("torch.")) if cuda else None
            if peak:
                item["executed_pct_of_peak"] = round(100 * item["executed_tflops"] / peak, 1)
                item["peak_tflops"] = peak
            results[name] = item
        for name in results:
            if name != "bucketed":
                results[name]["bucketed_speedup"] = round(results[name]["seconds"] / results["bucketed"]["seconds"], 2)
                results[name]["max_abs_diff_vs_bucketed"] = float(np.abs(vectors[name] - vectors["bucketed"]).max())
        figures["runs"][precision] = {"load_s": round(load_s, 1), **results}
        line = ", ".join(f"{k} {v['mol_per_s']:,.1f} mol/s (padding {v['padding_fraction']:.0%}, {v['executed_tflops']:.3g} TFLOP/s)" for k, v in results.items())
        print(f"[{precision}] {line}")
        for name, v in results.items():
            if name != "bucketed":
                print(f"[{precision}] bucketed is {v['bucketed_speedup']:.2f}x the {name!r} loop "
                      f"(max |diff| of vectors {v['max_abs_diff_vs_bucketed']:.2e})")
        del encoder
        if cuda:
            torch.cuda.empty_cache()
    if cuda and {"float32", "bfloat16"} <= set(figures["runs"]):
        ratio = figures["runs"]["float32"]["bucketed"]["seconds"] / figures["runs"]["bfloat16"]["bucketed"]["seconds"]
        figures["bf16_speedup_over_fp32"] = round(ratio, 2)
        print(f"bfloat16 is {ratio:.2f}x float32 (bucketed)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="molecules (default 256; use ~20000 on a GPU)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="SMILES file (.csv.gz with SMILES first, or .smi); default MOSES train, else RDKit's first_5K.smi")
    parser.add_argument("--size", choices=("selfies-ted", "tiny"), default="selfies-ted", help="model size (default selfies-ted: 12 layers, d_model 1024)")
    parser.add_argument("--layers", type=int, default=None, help="override the encoder layer count (e.g. 2 for a quick CPU check)")
    parser.add_argument("--batch", type=int, default=256, help="molecules per encode() call, as a Ray actor receives them (default 256)")
    parser.add_argument("--baselines", default="longest,card", help="naive loops to time: longest (pad to the batch's longest), card (pad to 128); default both")
    parser.add_argument("--repeats", type=int, default=1, help="rounds (order rotated each round); the best time of each method counts")
    parser.add_argument("--precisions", default="float32,bfloat16", help="GPU compute dtypes to time (CPU always float32)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto", help="auto: the GPU when there is one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ray", choices=("auto", "yes", "no"), default="auto",
                        help="run inside a Ray task with one GPU (auto: when RAY_ADDRESS is set, as under `ray job submit`)")
    parser.add_argument("--workdir", default=None, help="where to write the random model (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    use_ray = args.ray == "yes" or (args.ray == "auto" and os.environ.get("RAY_ADDRESS"))
    if use_ray:
        import ray

        from dmf_ray.runtime import cluster_resources, ensure_ray

        ensure_ray()
        _, gpus = cluster_resources()
        task = ray.remote(num_gpus=1 if gpus > 0 and args.device == "auto" else 0, num_cpus=1)(run)
        figures = ray.get(task.remote(args))
    else:
        figures = run(args)
    print("BENCH " + json.dumps(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
