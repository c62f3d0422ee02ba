"""Flags generated from typed configs (dmf_ray/cli/flags.py): types, help, nesting, errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dmf_ray.cli.flags import FlagSet, add_config_flags, build_config, merge, problem_lines


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    max_replicas: int = Field(4, ge=1, description="upper bound")


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: str = Field(..., description="trained model directory")
    epochs: int = Field(20, ge=1, description="passes over the data")
    kind: Literal["linear", "cosine"] = Field("linear", description="schedule shape")
    use_gpu: bool = Field(False, description="one GPU per worker")
    modalities: list[str] | None = Field(None, description="modalities to fuse")
    rates: list[float] = Field([0.0, 0.5], description="mask rates")
    workers: int | None = Field(None, description="workers")
    ingress: Inner = Field(default_factory=Inner, description="the edge")
    schedule: Inner = Field(default_factory=Inner, description="flattened with its own names")


def parser_for(model=Outer, **kwargs) -> tuple[argparse.ArgumentParser, FlagSet]:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    return parser, add_config_flags(parser, model, **kwargs)


def test_every_field_is_a_flag_with_its_description_and_default():
    parser, flags = parser_for(prefixes={"schedule": "sched"})
    text = parser.format_help()
    for option in ("--model-dir", "--epochs", "--kind", "--use-gpu", "--no-use-gpu", "--modalities", "--rates",
                   "--workers", "--ingress-num-cpus", "--ingress-max-replicas", "--sched-num-cpus"):
        assert option in text, option
    assert "passes over the data (default: 20)" in text
    assert "{linear,cosine}" in text
    assert "workers (default: none)" in text
    assert "mask rates (default: 0.0,0.5)" in text
    assert flags.option_for(("ingress", "num_cpus")) == "--ingress-num-cpus"


def test_values_are_typed_nested_and_only_what_was_given():
    parser, flags = parser_for()
    args = parser.parse_args(["--model-dir", "m", "--epochs", "3", "--kind", "cosine", "--use-gpu",
                              "--modalities", "ecfp,maccs", "--modalities", "rdkit2d", "--ingress-num-cpus", "0.5"])
    values = flags.values(args)
    assert values == {"model_dir": "m", "epochs": 3, "kind": "cosine", "use_gpu": True,
                      "modalities": ["ecfp", "maccs", "rdkit2d"], "ingress": {"num_cpus": 0.5}}
    config = build_config(Outer, values)
    assert config.ingress.num_cpus == 0.5 and config.ingress.max_replicas == 4 and config.workers is None
    assert flags.values(parser.parse_args(["--no-use-gpu"])) == {"use_gpu": False}


def test_bad_values_are_refused_by_argparse_naming_the_flag():
    parser, _ = parser_for()
    for argv in (["--epochs", "three"], ["--kind", "zigzag"], ["--rates", "0.1,x"]):
        with pytest.raises(argparse.ArgumentError) as info:
            parser.parse_args(argv)
        assert argv[0] in str(info.value)


def test_own_names_rename_exclude_override_and_positional():
    parser, flags = parser_for(prefixes={"schedule": ""}, rename={"use_gpu": "gpu"},
                               exclude={"ingress"}, overrides={"model_dir": {"positional": True}})
    args = parser.parse_args(["m", "--gpu", "--num-cpus", "2", "--max-replicas", "3"])
    assert flags.values(args) == {"model_dir": "m", "use_gpu": True, "schedule": {"num_cpus": 2.0, "max_replicas": 3}}
    assert "--ingress-num-cpus" not in parser.format_help()


def test_effective_defaults_are_shown_when_given():
    parser, _ = parser_for(defaults={"ingress": {"num_cpus": 0.5, "max_replicas": 2}})
    text = " ".join(parser.format_help().split())
    assert "CPUs per replica (default: 0.5)" in text and "upper bound (default: 2)" in text


def test_problems_name_the_flag_that_sets_the_field():
    parser, flags = parser_for()
    args = parser.parse_args(["--epochs", "0", "--ingress-max-replicas", "0"])
    with pytest.raises(ValidationError) as info:
        build_config(Outer, flags.values(args))
    lines = problem_lines(info.value, flags)
    assert "--model-dir: Field required" in lines
    assert any(line.startswith("--epochs: ") and "got 0" in line for line in lines)
    assert any(line.startswith("--ingress-max-replicas: ") for line in lines)


def test_plain_value_errors_keep_their_lines():
    error = ValueError("invalid TrainConfig:\n  - epochs: must be >= 1\n  - lr must be > 0")
    _, flags = parser_for()
    assert problem_lines(error, flags) == ["--epochs: must be >= 1", "lr must be > 0"]


def test_merge_puts_flags_over_a_config_file_key_by_key():
    base = {"model_dir": "a", "ingress": {"num_cpus": 1, "max_replicas": 4}}
    assert merge(base, {"ingress": {"num_cpus": 2}}) == {"model_dir": "a", "ingress": {"num_cpus": 2, "max_replicas": 4}}


@dataclass
class OldStyle:
    store: str = field(metadata={"help": "embedding store"})
    epochs: int = field(default=20, metadata={"help": "passes"})
    fresh: bool = field(default=False, metadata={"help": "start over"})
    _fail_at_epoch: int | None = field(default=None, metadata={"help": "test hook"})


def test_dataclass_configs_work_too_and_hide_private_fields():
    parser, flags = parser_for(OldStyle, rename={"fresh": "overwrite"}, required={"store"})
    text = parser.format_help()
    assert "--fail-at-epoch" not in text and "passes (default: 20)" in text
    config = build_config(OldStyle, flags.values(parser.parse_args(["--store", "s", "--overwrite"])))
    assert config == OldStyle(store="s", fresh=True)


def test_the_real_configs_generate_flags_for_every_field():
    from dmf_ray.pipelines.serve.args import ServeArgs

    parser, flags = parser_for(ServeArgs)
    leaves = {f.path for f in flags.flags}
    assert ("model_dir",) in leaves and ("ingress", "autoscaling", "max_replicas") in leaves
    assert ("encoders", "max_batch_molecules") in leaves
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


class Task(BaseModel):
    name: str
    source: str


class WithExtras(BaseModel):
    tasks: list[Task] = Field(..., json_schema_extra={"flag": "--task", "metavar": "[NAME=]PATH"},
                              description="tasks, repeatable")
    labels: list[str] | None = Field(None, json_schema_extra={"flag": "--label"}, description="label columns")


def test_a_field_may_name_its_flag_and_metavar_and_complex_items_repeat():
    parser, flags = parser_for(WithExtras)
    text = parser.format_help()
    assert "--task [NAME=]PATH" in text and "--label NAME[,...]" in text
    args = parser.parse_args(["--task", "a=x,y,z", "--task", "b", "--label", "p,q"])
    assert flags.values(args) == {"tasks": ["a=x,y,z", "b"], "labels": ["p", "q"]}
