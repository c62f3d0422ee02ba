"""The one way configs are validated: pydantic v2 models, every problem in one ValueError."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

_SEP = "\n  - "
_FIELD_FIRST = re.compile(r"^[A-Za-z_][\w.]*: ")


class ConfigError(ValueError):
    """A config with problems; `problems` holds one line each, the message all of them."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"invalid {what}:{_SEP}" + _SEP.join(self.problems))


def _under(where: str, problem: str) -> str:
    # 'latent_dim: must be ...' of a config nested as 'model' -> 'model.latent_dim: must be ...'
    if not where:
        return problem
    return f"{where}.{problem}" if _FIELD_FIRST.match(problem) else f"{where}: {problem}"


def problem_lines(error: ValidationError) -> list[str]:
    """One line per problem of a pydantic ValidationError: '<field.path>: <message>, got <value>'."""
    lines = []
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"])
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):  # a nested config: its own lines, under its field name
            lines += [_under(where, p) for p in inner.problems]
        elif e["type"] == "value_error":
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}" if where else e["msg"])
        else:
            got = "" if e["type"] == "missing" else f", got {e.get('input')!r}"
            lines.append(f"{where}: {e['msg'][:1].lower()}{e['msg'][1:]}{got}")
    return lines


class ConfigModel(BaseModel):
    """Base of the typed configs: unknown fields refused, and every problem (each field's, and
    the cross-field ones of `cross_problems`, which see the raw input so they are reported even
    when a field is invalid) raised as ONE ConfigError (a ValueError) 'invalid <ClassName>:'
    with one line per problem."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: Any) -> None:
        problems = type(self).cross_problems(data)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = problem_lines(exc) + problems
        if problems:
            raise ConfigError(type(self).__name__, problems) from None

    @classmethod
    def cross_problems(cls, data: Mapping[str, Any]) -> list[str]:
        """Checks between fields, on the raw input (values may be of any type): override."""
        return []


def describe(x: Any) -> str:
    """'tensor of shape (B, d) and dtype torch.float32' for a tensor, else the type's name."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def is_int(v: Any) -> bool:
    """An int that is not a bool (True is an int in Python, never a count here)."""
    return isinstance(v, int) and not isinstance(v, bool)
