"""``dmf embed``: fused embeddings for input files or a whole store, with a trained model."""

from __future__ import annotations

import argparse

from pydantic import BaseModel, ConfigDict, Field

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config


class EmbedOptions(BaseModel):
    """What ``dmf embed`` takes (the arguments of ``pipelines.embed.embed``)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field([], description="input files or folders (as for featurize); or use --store")
    model: str = Field(description="model directory written by dmf train")
    store: str | None = Field(None, description="embed every molecule of this store from its stored vectors "
                                                "(instead of input files)")
    out: str = Field(description="output Parquet dataset: a new or empty folder, or an earlier embed output "
                                 "(replaced); a folder holding anything else is refused")
    drop_modalities: list[str] | None = Field(None, description="modalities to withhold, e.g. maccs (default: none)")
    smiles_column: str | None = Field(None, description="SMILES column of CSV/TSV/Parquet inputs (default: auto-detect)")
    id_column: str | None = Field(None, description="id column of the inputs, kept as source_id in the output "
                                                    "(default: none)")


def configure_embed(parser: argparse.ArgumentParser) -> None:
    flags = add_config_flags(parser, EmbedOptions, required={"model", "out"},
                             overrides={"inputs": {"positional": True, "nargs": "*", "type": str, "action": "store"}})
    console.add_run_flags(parser)
    parser.set_defaults(func=run_embed, flags=flags)


def run_embed(args: argparse.Namespace) -> int:
    from dmf_ray.artifact import read_model_config
    from dmf_ray.cli import CliError
    from dmf_ray.inference import choose_modalities
    from dmf_ray.pipelines.embed import check_output, embed

    options = build_config(EmbedOptions, args.flags.values(args))
    if bool(options.inputs) == bool(options.store):
        raise CliError("give input files or --store (not both)")
    card = read_model_config(options.model)  # a bad model or modality fails before Ray starts
    choose_modalities(card["fusion"]["modalities"], None, options.drop_modalities)
    check_output(options.out)
    if options.inputs:
        from dmf_ray.inputs import discover_inputs

        discover_inputs(options.inputs, options.smiles_column, options.id_column)
    console.setup(args.verbose, args.num_cpus)
    from dmf_ray.runtime import ensure_ray

    ensure_ray()
    with console.step("embed") as bar:
        console.with_progress(
            embed, bar, options.model, options.out, inputs=options.inputs or None, store_uri=options.store,
            smiles_column=options.smiles_column, id_column=options.id_column,
            drop_modalities=options.drop_modalities, log=console.log,
        )
    return 0
