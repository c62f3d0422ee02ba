"""``dmf store info``: a store's summary. Imports pyarrow and the store only (no Ray, torch or RDKit)."""

from __future__ import annotations

import argparse
import json
import sys


def configure_store(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    info = sub.add_parser("info", help="summary of a store: inputs, molecules, failures, modalities",
                          description="Summary of a store: inputs, molecules, failures, modalities.")
    info.add_argument("store", help="store directory or URI")
    info.add_argument("--json", action="store_true", help="one JSON object for machines")
    info.set_defaults(func=lambda args: print_store_info(args.store, args.json) or 0)


def print_store_info(uri: str, as_json: bool) -> None:
    """The store's summary on stdout (pyarrow only: no Ray, torch or RDKit)."""
    from dmf_ray.store import EmbeddingStore

    info = EmbeddingStore.open(uri).info()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out = sys.stdout
    print(f"store        {info['store']} (format v{info['format_version']}, {info['bytes'] / 1e6:.1f} MB)", file=out)
    print(f"inputs       {info['inputs']:,} rows read in {info['shards']} shard(s)", file=out)
    print(f"molecules    {info['molecules']:,} distinct ({info['stored_rows']:,} valid rows)", file=out)
    print(f"failed       {info['failed']:,} rows did not parse (reasons in failures/)", file=out)
    print("modalities", file=out)
    width = max([12, *map(len, info["modalities"])])  # names line up, chemprop-admet included
    for name, m in info["modalities"].items():
        coverage = m["count"] / info["molecules"] if info["molecules"] else 0.0
        print(f"  {name:<{width}} dim {m['dim']:>5}  {m['dtype']:<8} {m['count']:>10,} molecules "
              f"({coverage:.1%})  {m['failed']:,} encoder failures", file=out)
