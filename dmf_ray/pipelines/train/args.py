"""Command-line flags for TrainConfig, generated from its fields' descriptions (shared by `dmf train`
and jobs/train.py): one flag per field, the nested model and masking settings inline
(``--latent-dim``, ``--mask-kind``)."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic.fields import FieldInfo

from dmf_ray.pipelines.train.config import TrainConfig

# Nested configs whose fields become flags of their own, with this prefix before their names.
_NESTED = {"model": "", "masking": "mask_"}
_FLAG_NAMES = {"use_gpu": "gpu", "fresh": "overwrite"}
_REQUIRED = ("store", "out")


def _flag(name: str) -> str:
    return "--" + _FLAG_NAMES.get(name, name).replace("_", "-")


def _scalar_type(annotation: Any) -> tuple[type, tuple | None]:
    """(argparse type, choices) of a field annotation such as int, float | None, Literal[...]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return str, typing.get_args(annotation)
    return annotation, None


def _add_field(parser: argparse.ArgumentParser, dest: str, info: FieldInfo) -> None:
    help_text = info.description or ""
    if dest == "modalities":
        parser.add_argument(_flag(dest), dest=dest, type=_name_list, default=None, help=help_text + "; comma-separated")
    elif info.annotation is bool:
        parser.add_argument(_flag(dest), dest=dest, action="store_true", help=help_text)
    else:
        kind, choices = _scalar_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        if "default" not in help_text:
            help_text += f" (default: {default if default is not None else 'auto'})"
        parser.add_argument(_flag(dest), dest=dest, type=kind, default=default, choices=choices, help=help_text)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig setting (help from the field's description)."""
    fields = TrainConfig.model_fields
    for name in _REQUIRED:
        parser.add_argument(_flag(name), required=True, help=fields[name].description)
    for name, info in fields.items():
        if name in _REQUIRED:
            continue
        if name in _NESTED:
            for sub, sub_info in info.annotation.model_fields.items():
                _add_field(parser, _NESTED[name] + sub, sub_info)
        else:
            _add_field(parser, name, info)


def _name_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one modality")
    return items


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags (raises ConfigError naming every bad value)."""
    given = vars(args)
    values: dict[str, Any] = {}
    for name, info in TrainConfig.model_fields.items():
        if name in _NESTED:
            prefix = _NESTED[name]
            values[name] = {sub: given[prefix + sub] for sub in info.annotation.model_fields if prefix + sub in given}
        elif name in given:
            values[name] = given[name]
    return TrainConfig(**values)
