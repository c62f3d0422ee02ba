"""Command-line flags generated from a typed config: one flag per field, help from the field's
description, so a new setting is one field in its config and never an edit here.

Works on pydantic v2 models (``model_fields``: annotation, default, ``description``) and, while
owners convert, on stdlib dataclasses (``metadata={"help": ...}``). Mapping (argparse, Python
3.11 stdlib):

    int / float / str          --name VALUE (type checked by argparse, range by the config)
    bool                       --name / --no-name (argparse.BooleanOptionalAction)
    Literal["a", "b"]          --name {a,b}
    list[X]                    --name X,X,... (repeatable: values add up)
    X | None                   as X; the default None is shown as "auto" unless the description says it
    nested model               its fields as --<prefix>-<field> (prefix = the field name, or a
                               chosen one; "" = the nested fields' own names)
    anything else              --name JSON

Flags the user did not give are left out of the namespace (argparse.SUPPRESS), so the config's
own defaults and validators (e.g. per-role defaults merged under given values) decide them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

_MISSING = object()


@dataclass(frozen=True)
class Flag:
    """One generated flag: where its value goes in the config (``path``) and its spelling."""

    path: tuple[str, ...]
    option: str  # "--latent-dim", or the dest of a positional
    dest: str


@dataclass
class FlagSet:
    """The flags of one config added to a parser; turns parsed args back into config input."""

    flags: list[Flag] = field(default_factory=list)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The nested dict of the values the user gave (absent flags are left out)."""
        out: dict[str, Any] = {}
        for flag in self.flags:
            if hasattr(args, flag.dest):
                node = out
                for key in flag.path[:-1]:
                    node = node.setdefault(key, {})
                node[flag.path[-1]] = getattr(args, flag.dest)
        return out

    def option_for(self, path: Iterable[str]) -> str | None:
        """The flag that sets the field at ``path`` (e.g. ("ingress", "num_cpus")), if any."""
        path = tuple(path)
        return next((f.option for f in self.flags if f.path == path), None)


@dataclass(frozen=True)
class _Field:
    name: str
    annotation: Any
    default: Any  # _MISSING when required
    help: str
    extra: Mapping[str, Any] = field(default_factory=dict)  # json_schema_extra: "flag", "metavar"


def config_fields(model: type) -> list[_Field]:
    """The public fields of a pydantic v2 model or a dataclass, in declaration order."""
    if hasattr(model, "model_fields"):
        out = []
        for name, info in model.model_fields.items():
            if info.exclude:
                continue
            if info.is_required():
                default = _MISSING
            else:
                default = info.get_default(call_default_factory=True)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, Mapping) else {}
            out.append(_Field(name, info.annotation, default, info.description or "", extra))
        return out
    if dataclasses.is_dataclass(model):
        hints = typing.get_type_hints(model)
        out = []
        for f in dataclasses.fields(model):
            if f.name.startswith("_"):  # test hooks and internal state are not flags
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = _MISSING
            out.append(_Field(f.name, hints[f.name], default, f.metadata.get("help", "")))
        return out
    raise TypeError(f"{model!r} is neither a pydantic model nor a dataclass")


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and (hasattr(tp, "model_fields") or dataclasses.is_dataclass(tp))


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for X | None, else (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def comma_list(item: Callable[[str], Any] = str) -> Callable[[str], list]:
    """argparse type: "a,b" -> [item("a"), item("b")]; empty items are refused."""

    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not parts or not all(parts):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [item(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None

    parse.__name__ = f"list of {item.__name__}"
    return parse


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected JSON, got {text!r} ({exc.msg})") from None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _help_text(f: _Field, default: Any) -> str:
    text = f.help.rstrip(".")
    if default is _MISSING or "default" in text.lower():
        return text
    if default is None and "none" in text.lower():  # the description says what None means
        return text
    if default in ([], ()):
        return text
    shown = "none" if default is None else _shown(default)
    return f"{text} (default: {shown})" if text else f"default: {shown}"


_METAVARS = {int: "N", float: "X"}


def _argparse_kwargs(f: _Field, default: Any, name: str) -> dict[str, Any]:
    """add_argument keywords for a leaf field (no nested model) whose flag is --<name>."""
    tp, _optional = _strip_optional(_unwrap(f.annotation))
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    kwargs: dict[str, Any] = {"help": _help_text(f, default)}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        choices = list(typing.get_args(tp))
        kwargs.update(choices=choices, type=type(choices[0]))
    elif origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        item = _unwrap((typing.get_args(tp) or (str,))[0])
        if item in (int, float, str):
            kwargs.update(type=comma_list(item), action="extend", metavar=f"{_METAVARS.get(item, 'NAME')}[,...]")
        else:  # items in their own text form (which may hold commas), parsed by the config: repeat the flag
            kwargs.update(type=str, action="append", metavar=name.rsplit("-", 1)[-1].upper())
    elif tp in (int, float, str):
        kwargs.update(type=tp, metavar=_METAVARS.get(tp) or name.rsplit("-", 1)[-1].upper())
    else:
        kwargs.update(type=_json, metavar="JSON")
    if "metavar" in f.extra:
        kwargs["metavar"] = f.extra["metavar"]
    return kwargs


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type,
    *,
    rename: Mapping[str, str] | None = None,
    prefixes: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    required: Iterable[str] = (),
    flag_set: FlagSet | None = None,
    _path: tuple[str, ...] = (),
    _prefix: str = "",
) -> FlagSet:
    """Add one flag per field of ``model`` (recursing into nested models) to ``parser``.

    Keys of ``rename``, ``exclude``, ``overrides`` and ``required`` are dotted field paths
    ("use_gpu", "ingress.num_cpus"). ``rename`` gives a field's flag name (without "--");
    ``prefixes`` the flag prefix of a nested model's fields ("" = their own names); ``overrides``
    extra or replacing add_argument keywords (e.g. ``{"nargs": "+"}``, or ``{"positional": True}``
    for a positional argument); ``defaults`` the effective defaults shown in help, as a nested
    dict (e.g. a default config's ``model_dump()``, when validators change the field defaults);
    ``required`` fields argparse itself demands (others that are required are left to the
    config's own validation, so a config file can give them). Returns the flags added."""
    rename, prefixes, overrides = rename or {}, prefixes or {}, overrides or {}
    exclude, required = set(exclude), set(required)
    flag_set = flag_set if flag_set is not None else FlagSet()
    for f in config_fields(model):
        path = (*_path, f.name)
        key = ".".join(path)
        if key in exclude:
            continue
        default = f.default
        if isinstance(defaults, Mapping) and f.name in defaults:
            default = defaults[f.name]
        inner, _ = _strip_optional(_unwrap(f.annotation))
        if _is_model(inner) and key not in overrides:
            nested_prefix = prefixes.get(key, rename.get(key, f.name).replace("_", "-"))
            add_config_flags(
                parser, inner, rename=rename, prefixes=prefixes, exclude=exclude, overrides=overrides,
                defaults=default if isinstance(default, Mapping) else None, required=required,
                flag_set=flag_set, _path=path, _prefix=_join(_prefix, nested_prefix),
            )
            continue
        own = rename.get(key) or str(f.extra.get("flag", "")).lstrip("-") or f.name
        name = _join(_prefix, own.replace("_", "-"))
        dest = "cfg__" + "__".join(path)
        kwargs = {**_argparse_kwargs(f, default, name), **overrides.get(key, {})}
        if kwargs.pop("positional", False):
            kwargs.pop("metavar", None)
            parser.add_argument(dest, default=argparse.SUPPRESS, metavar=name.replace("-", "_"), **kwargs)
            flag_set.flags.append(Flag(path, name.replace("-", "_"), dest))
            continue
        parser.add_argument(f"--{name}", dest=dest, default=argparse.SUPPRESS, required=key in required, **kwargs)
        flag_set.flags.append(Flag(path, f"--{name}", dest))
    return flag_set


def _join(prefix: str, name: str) -> str:
    return f"{prefix}-{name}" if prefix and name else prefix or name


def build_config(model: type, values: Mapping[str, Any]) -> Any:
    """The config from nested ``values`` (keywords: a config's own __init__ may gather its problems)."""
    return model(**values)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, nested mappings merged key by key (flags over a config file)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def problem_lines(error: Exception, flag_set: FlagSet | None = None) -> list[str]:
    """One line per problem of a config error, naming the flag where one sets the field.

    Understands pydantic's ValidationError (``errors()``), errors carrying a ``problems`` list
    (the project's ConfigError) and plain ValueErrors ("invalid X:\\n  - a\\n  - b")."""
    lines: list[str]
    if hasattr(error, "errors") and callable(error.errors):
        lines = []
        for e in error.errors(include_url=False):
            where = ".".join(str(p) for p in e["loc"])
            inner = (e.get("ctx") or {}).get("error")
            if isinstance(getattr(inner, "problems", None), list):  # a nested config's own problem lines
                lines += [f"{where}.{p}" if where else str(p) for p in inner.problems]
                continue
            message = e["msg"].removeprefix("Value error, ")
            got = "" if e["type"] in ("missing", "value_error") else f", got {e.get('input')!r}"
            lines.append(f"{where}: {message}{got}" if where else message)
    elif isinstance(getattr(error, "problems", None), list):
        lines = [str(p) for p in error.problems]
    else:
        text = str(error)
        head, _, rest = text.partition("\n")
        lines = [p.strip().removeprefix("- ") for p in rest.splitlines() if p.strip()] if rest else [head]
    return [_with_flag(line, flag_set) for line in lines]


def _with_flag(line: str, flag_set: FlagSet | None) -> str:
    """'epochs: must be >= 1' or 'epochs must be ...' -> the same with '--epochs' for 'epochs'."""
    if flag_set is None:
        return line
    head = line.split(" ", 1)[0]
    where = head.removesuffix(":")
    option = flag_set.option_for(where.split("."))
    if option is None:
        return line
    return option + line[len(where):]


def nest(model: type, flat: Mapping[str, Any]) -> dict[str, Any]:
    """Place settings given by leaf name where ``model`` keeps them: for a TrainConfig that nests
    its model settings, {"latent_dim": 128} -> {"model": {"latent_dim": 128}}. Raises KeyError for
    a name that is no field (or is ambiguous)."""
    paths: dict[str, list[tuple[str, ...]]] = {}

    def walk(tp: type, path: tuple[str, ...]) -> None:
        for f in config_fields(tp):
            inner, _ = _strip_optional(_unwrap(f.annotation))
            if _is_model(inner):
                walk(inner, (*path, f.name))
            else:
                paths.setdefault(f.name, []).append((*path, f.name))

    walk(model, ())
    out: dict[str, Any] = {}
    for name, value in flat.items():
        found = paths.get(name, [])
        if len(found) != 1:
            raise KeyError(f"{model.__name__} has {len(found)} fields named {name!r}")
        node = out
        for key in found[0][:-1]:
            node = node.setdefault(key, {})
        node[found[0][-1]] = value
    return out
