"""The ``dmf`` command: thin subcommands over the library functions.

Known problems (missing file, unknown encoder, absent column, incompatible store...) end the
command with one line naming the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from dmf_ray import __version__

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from dmf_ray.encoders import UnknownEncoderError
    from dmf_ray.inputs import InputError
    from dmf_ray.store import StoreError

    from dmf_ray.pipelines.train.driver import TrainingError

    return (CliError, InputError, StoreError, UnknownEncoderError, TrainingError, FileNotFoundError, NotADirectoryError, ValueError)


def _encoder_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one encoder")
    return items


def _rdkit_sample_file() -> str:
    import rdkit

    return os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")


# ---- featurize / store -------------------------------------------------------------------
def cmd_featurize(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.featurize import featurize, resolve_encoders
    from dmf_ray.inputs import discover_inputs
    from dmf_ray.runtime import ensure_ray

    # Check what can be checked before paying for a Ray start-up; featurize starts Ray only
    # when there is work to do.
    discover_inputs(args.inputs, args.smiles_column, args.id_column, args.format)
    resolve_encoders(args.encoders)
    result = featurize(
        args.inputs, args.store, args.encoders, args.smiles_column, args.id_column, args.shard_rows, log=_log,
        format=args.format, start_ray=lambda: ensure_ray(args.num_cpus),
    )
    if result.nothing_to_do:
        _print_store_info(args.store, as_json=False)
        return 0
    _log(
        f"featurized {result.rows_read:,} new input rows ({result.failed:,} failed to parse) into "
        f"{result.store} in {result.seconds:.1f} s; vectors written: "
        + ", ".join(f"{k} {v:,}" for k, v in result.encoded.items())
    )
    _print_store_info(args.store, as_json=False)
    return 0


def cmd_store_info(args: argparse.Namespace) -> int:
    _print_store_info(args.store, as_json=args.json)
    return 0


def _print_store_info(uri: str, as_json: bool) -> None:
    from dmf_ray.store import EmbeddingStore

    info = EmbeddingStore.open(uri).info()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"store        {info['store']} (format v{info['format_version']}, {info['bytes'] / 1e6:.1f} MB)")
    print(f"inputs       {info['inputs']:,} rows read in {info['shards']} shard(s)")
    print(f"molecules    {info['molecules']:,} distinct ({info['stored_rows']:,} valid rows)")
    print(f"failed       {info['failed']:,} rows did not parse (reasons in failures/)")
    print("modalities")
    for name, m in info["modalities"].items():
        coverage = m["count"] / info["molecules"] if info["molecules"] else 0.0
        print(
            f"  {name:<12} dim {m['dim']:>5}  {m['dtype']:<8} {m['count']:>10,} molecules "
            f"({coverage:.1%})  {m['failed']:,} encoder failures"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from dmf_ray.runtime import ensure_ray
    from dmf_ray.pipelines.train.driver import config_from_args, train

    from dmf_ray.store import EmbeddingStore

    config = config_from_args(args)  # validates every field before Ray starts
    EmbeddingStore.open(config.store)
    ensure_ray(args.num_cpus, dashboard=True)
    result = train(config, log=_log)
    _log(f"model: {result.model_dir} (epochs {result.epochs_run}/{result.epochs_total}; metrics in {result.metrics_file})")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from dmf_ray.artifact import read_model_config
    from dmf_ray.pipelines.embed import embed
    from dmf_ray.inference import choose_modalities
    from dmf_ray.runtime import ensure_ray

    if bool(args.inputs) == bool(args.store):
        raise CliError("give input files or --store (not both)")
    card = read_model_config(args.model)
    choose_modalities(card["fusion"]["modalities"], None, args.drop_modalities)
    if args.inputs:
        from dmf_ray.inputs import discover_inputs

        discover_inputs(args.inputs, args.smiles_column, args.id_column)
    ensure_ray(args.num_cpus)
    embed(
        args.model, args.out, inputs=args.inputs or None, store_uri=args.store,
        smiles_column=args.smiles_column, id_column=args.id_column,
        drop_modalities=args.drop_modalities, log=_log,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.serve.app import run_server

    run_server(args.model, host=args.host, port=args.port)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.evaluate.run import config_from_args, evaluate

    result = evaluate(config_from_args(args), log=_log)  # no Ray: forests and a process pool
    _log(f"report: {os.path.join(result.out, 'report.md')} ({result.seconds:.0f} s)")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """featurize -> train a few epochs -> embed, on RDKit's bundled molecules, offline."""
    from dmf_ray.pipelines.embed import embed
    from dmf_ray.encoders import DEFAULT_ENCODERS
    from dmf_ray.pipelines.featurize import featurize
    from dmf_ray.runtime import ensure_ray
    from dmf_ray.pipelines.train.driver import TrainConfig, train

    sample = _rdkit_sample_file()
    if not os.path.exists(sample):
        raise CliError(f"RDKit's sample file is missing: {sample}")
    store, model, fused = (os.path.join(args.out, name) for name in ("store", "model", "fused.parquet"))
    ensure_ray(args.num_cpus, dashboard=True)  # it trains

    _log(f"[1/3] featurize {sample} (shipped with RDKit) with {', '.join(DEFAULT_ENCODERS)} -> {store}")
    # 2,500-row shards: the 5,000 molecules make two, one per core of a laptop.
    result = featurize([sample], store, DEFAULT_ENCODERS, shard_rows=2_500, log=_log)
    _log(f"      {result.rows_read:,} new rows in {result.seconds:.1f} s")
    _print_store_info(store, as_json=False)

    _log(f"[2/3] train the fusion model for {args.epochs} epochs with Ray Train -> {model}")
    trained = train(TrainConfig(store=store, out=model, epochs=args.epochs, workers=1, latent_dim=128), log=_log)
    _log(f"      epochs {trained.epochs_run}/{trained.epochs_total}; per-epoch metrics in {trained.metrics_file}")

    _log(f"[3/3] embed the library with the trained model -> {fused}")
    embedded = embed(model, fused, inputs=[sample], log=_log)
    _log(
        f"done: {embedded.rows - embedded.failed:,} fused vectors ({embedded.failed} failed rows) in {fused}. "
        f"Next: dmf serve --model {model}"
    )
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from dmf_ray.encoders import DEFAULT_ENCODERS, available_encoders, encoder_class

    encoder_help = "; ".join(f"{n}: {encoder_class(n).description}" for n in available_encoders())
    parser = argparse.ArgumentParser(prog="dmf", description="Dynamic multi-modal fusion embeddings for molecules, on Ray.")
    parser.add_argument("--version", action="version", version=f"dmf_ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def ray_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (ignored with RAY_ADDRESS)")

    p = sub.add_parser("quickstart", help="featurize -> train -> embed RDKit's bundled 5k molecules, offline")
    p.add_argument("--out", default="dmf-quickstart", help="output folder (default: ./dmf-quickstart)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    ray_options(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("featurize", help="add molecules and/or modalities to an embedding store")
    p.add_argument("inputs", nargs="+", help=".smi/.txt/.ism/.can/.csv/.tsv/.parquet files (gzip ok) or folders; local or s3://")
    p.add_argument("--format", choices=["smi", "csv", "tsv", "parquet"],
                   help="format of the files named (default: from the extension, else from the content)")
    p.add_argument("--store", required=True, help="store directory (created if absent)")
    p.add_argument(
        "--encoders", type=_encoder_list, default=list(DEFAULT_ENCODERS),
        help=f"comma-separated encoders (default: {','.join(DEFAULT_ENCODERS)}). Available: {encoder_help}",
    )
    p.add_argument("--smiles-column", help="SMILES column of CSV/TSV/Parquet inputs (default: auto-detect)")
    p.add_argument("--id-column", help="id column kept as source_id (optional)")
    p.add_argument("--shard-rows", type=int, default=None, help="input rows per shard, fixed when a store is created (default 20000)")
    ray_options(p)
    p.set_defaults(func=cmd_featurize)

    from dmf_ray.pipelines.train.driver import add_train_arguments

    p = sub.add_parser("train", help="train the fusion model on a store with Ray Train (DDP, progressive masking)")
    add_train_arguments(p)
    ray_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="fused embeddings for a library (input files or a store) with a trained model")
    p.add_argument("inputs", nargs="*", help="input files or folders (as for featurize); or use --store")
    p.add_argument("--model", required=True, help="model directory written by dmf train")
    p.add_argument("--store", help="embed every molecule of a store from its stored vectors")
    p.add_argument("--out", required=True, help="output Parquet dataset (a folder; overwritten)")
    p.add_argument("--drop-modalities", type=_encoder_list, default=None, help="modalities to withhold, e.g. maccs")
    p.add_argument("--smiles-column")
    p.add_argument("--id-column")
    ray_options(p)
    p.set_defaults(func=cmd_embed)

    from dmf_ray.pipelines.evaluate.run import add_arguments as add_evaluate_arguments

    p = sub.add_parser("evaluate", help="downstream benchmark of a model: Table 1, robustness, reconstruction, attention")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="serve a trained model over HTTP with Ray Serve (blocking; Ctrl-C stops)")
    p.add_argument("--model", required=True, help="model directory written by dmf train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("store", help="inspect a store")
    store_sub = p.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    q = store_sub.add_parser("info", help="summary of a store")
    q.add_argument("store")
    q.add_argument("--json", action="store_true", help="one JSON object for machines")
    q.set_defaults(func=cmd_store_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as exc:
        message = str(exc) if not isinstance(exc, FileNotFoundError) or not exc.filename else f"{exc.filename}: {exc.strerror}"
        print(f"dmf: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dmf: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
