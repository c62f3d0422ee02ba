"""``dmf featurize``: molecule files -> embedding store (Ray Data)."""

from __future__ import annotations

import argparse

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config
from dmf_ray.encoders import DEFAULT_ENCODERS


class FeaturizeOptions(BaseModel):
    """What ``dmf featurize`` takes (the arguments of ``pipelines.featurize.featurize``)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1, description=".smi/.txt/.ism/.can/.csv/.tsv/.parquet files (gzip ok) or "
                                                        "folders; local or s3://")
    format: Literal["smi", "csv", "tsv", "parquet"] | None = Field(
        None, description="format of the files named (default: from the extension, else from the content)")
    store: str = Field(description="store directory (created if absent); local or a URI such as s3://...")
    encoders: list[str] = Field(list(DEFAULT_ENCODERS), min_length=1,
                                description="comma-separated encoder names; name=value passes a value to "
                                            "encoders that take one")
    smiles_column: str | None = Field(None, description="SMILES column of CSV/TSV/Parquet inputs (default: auto-detect)")
    id_column: str | None = Field(None, description="id column kept as source_id (default: none)")
    shard_rows: int | None = Field(None, ge=1, description="input rows per shard, fixed when a store is created "
                                                           "(default 20000)")


def _encoder_help() -> str:
    from dmf_ray.encoders import available_encoders, encoder_class

    return "; ".join(f"{n}: {encoder_class(n).description}" for n in available_encoders())


def configure_featurize(parser: argparse.ArgumentParser) -> None:
    flags = add_config_flags(
        parser, FeaturizeOptions, required={"store"},
        overrides={"inputs": {"positional": True, "nargs": "+", "type": str, "action": "store"}},
    )
    for action in parser._actions:  # the registry's list, only when this command's help is built
        if action.dest == "cfg__encoders":
            action.help += f". Available: {_encoder_help()}"
    console.add_run_flags(parser)
    parser.set_defaults(func=run_featurize, flags=flags)


def run_featurize(args: argparse.Namespace) -> int:
    from dmf_ray.inputs import discover_inputs
    from dmf_ray.pipelines.featurize import featurize, resolve_encoders

    options = build_config(FeaturizeOptions, args.flags.values(args))
    # Checks that need no cluster, before paying for a Ray start-up.
    discover_inputs(options.inputs, options.smiles_column, options.id_column, options.format)
    resolve_encoders(options.encoders)
    console.setup(args.verbose, args.num_cpus)
    from dmf_ray.runtime import ensure_ray

    # featurize starts Ray only once it knows there is work to do ("nothing to do" needs none).
    with console.step("featurize") as bar:
        result = console.with_progress(
            featurize, bar, options.inputs, options.store, options.encoders, options.smiles_column,
            options.id_column, options.shard_rows, log=console.log, format=options.format, start_ray=ensure_ray,
        )
    if result.nothing_to_do:
        return 0
    console.log(
        f"featurized {result.rows_read:,} new input rows ({result.failed:,} failed to parse) into "
        f"{result.store} in {result.seconds:.1f} s; vectors written: "
        + ", ".join(f"{k} {v:,}" for k, v in result.encoded.items())
    )
    from dmf_ray.cli.store import print_store_info

    print_store_info(options.store, as_json=False)
    return 0


