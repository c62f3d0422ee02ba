"""Read a Chemprop v2 checkpoint without unpickling code: an allow-list of names, inert stand-ins.

Chemprop's own loader (``MPNN.load_from_file``, chemprop 2.2) calls ``torch.load(...,
weights_only=False)``: a checkpoint could run any code. Here every checkpoint is read with
``torch.load(weights_only=True)``; the few globals a Chemprop file names beyond tensors (its
module classes, torchmetrics metrics and helpers, torch activations, Lightning's
``AttributeDict``) are checked against an allow-list of name prefixes first, and a file naming
anything else is refused with one line. Allowed names are bound to inert stand-ins that only
record the state the file holds (``AttributeDict`` to a plain dict), so no Chemprop, Lightning
or torchmetrics code runs while reading, and the reader needs none of them installed: the
driver learns a model's dim and targets without importing chemprop (~20-30 s).

``encoder_modules`` then builds the real message passing, aggregation and batch norm from the
recorded hyper-parameters, mapping each recorded class name through a fixed table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALLOWED_PREFIXES = ("chemprop.nn.", "torchmetrics.", "torch.nn.modules.")
ATTRIBUTE_DICT = "lightning.fabric.utilities.data.AttributeDict"
MESSAGE_PASSING = ("chemprop.nn.message_passing.base.BondMessagePassing",
                   "chemprop.nn.message_passing.base.AtomMessagePassing")
AGGREGATIONS = ("chemprop.nn.agg.MeanAggregation", "chemprop.nn.agg.SumAggregation",
                "chemprop.nn.agg.NormAggregation", "chemprop.nn.agg.AttentiveAggregation")
ACTIVATION_PREFIX = "torch.nn.modules.activation."
ACTIVATION_NAMES = ("relu", "leakyrelu", "prelu", "tanh", "elu")
# Upper bounds of the recorded sizes: far above any real model (Chemprop's featurisers give
# 72/133 atom and 14 bond features, d_h 300-2400, depth 3-6), low enough that a file cannot
# make every later vector or loop absurdly large.
SIZE_LIMITS = {"d_v": 4096, "d_e": 4096, "d_h": 65536, "depth": 64}


class CheckpointRefused(ValueError):
    """A checkpoint this reader will not load; the message is one line naming why."""


class _Inert:
    """Stand-in for a class or function a checkpoint names: records its arguments and state."""

    qualified = ""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified}>"


def _stand_in(name: str) -> type[_Inert]:
    return type(name.rsplit(".", 1)[-1], (_Inert,), {"qualified": name})


def _qualified(obj: Any) -> str:
    if isinstance(obj, type) and issubclass(obj, _Inert):
        return obj.qualified
    return type(obj).qualified if isinstance(obj, _Inert) else type(obj).__name__


@dataclass
class Checkpoint:
    """What a Chemprop v2 checkpoint holds that an encoder needs."""

    path: str
    hparams: dict[str, Any]
    state_dict: dict[str, Any]
    output_columns: list[str]

    @property
    def dim(self) -> int:
        """Width of the learned encoding (the message passing's hidden size)."""
        return int(self.hparams["message_passing"]["d_h"])


def read_checkpoint(path: str) -> Checkpoint:
    """Read ``path`` with ``torch.load(weights_only=True)`` through the allow-list.

    Raises CheckpointRefused (one line) for a file naming a global outside the allow-list, one
    that is not a Chemprop v2 single-molecule MPNN checkpoint, one whose sizes (``d_v``, ``d_e``,
    ``d_h``, ``depth``) are not integers within :data:`SIZE_LIMITS`, or one needing inputs this
    encoder cannot give (extra atom descriptors, scaled atom/bond features)."""
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    try:
        names = get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise CheckpointRefused(f"{path}: not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    refused = sorted(n for n in names if n != ATTRIBUTE_DICT and not n.startswith(ALLOWED_PREFIXES))
    if refused:
        raise CheckpointRefused(
            f"{path} needs unpickling {', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}, which is not "
            "on the allow-list of Chemprop classes: refused (checkpoints are read with weights_only=True)"
        )
    allowed: list[Any] = [(_stand_in(n), n) for n in names if n != ATTRIBUTE_DICT]
    allowed.append((dict, ATTRIBUTE_DICT))
    try:
        with safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointRefused(f"{path} could not be read with weights_only=True: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(data, dict) or "hyper_parameters" not in data or "state_dict" not in data:
        raise CheckpointRefused(f"{path} is not a Chemprop v2 model file (no hyper_parameters/state_dict)")
    hparams = data["hyper_parameters"]
    mp = hparams.get("message_passing") if isinstance(hparams, dict) else None
    if not isinstance(mp, dict) or _qualified(mp.get("cls")) not in MESSAGE_PASSING:
        found = _qualified(mp.get("cls")) if isinstance(mp, dict) else "none"
        raise CheckpointRefused(f"{path}: message passing {found} is not a single-molecule Chemprop v2 one "
                                f"({', '.join(n.rsplit('.', 1)[1] for n in MESSAGE_PASSING)})")
    _check_sizes(path, mp)
    if mp.get("d_vd"):
        raise CheckpointRefused(f"{path}: the model needs {mp['d_vd']} extra atom descriptors per atom, "
                                "which this encoder does not compute")
    transform = mp.get("graph_transform")
    if transform is not None and any(_qualified(m) != "torch.nn.modules.linear.Identity"
                                     for m in getattr(transform, "state", {}).get("_modules", {}).values()):
        raise CheckpointRefused(f"{path}: the model scales its atom/bond features (graph_transform), "
                                "which this encoder does not support")
    agg = hparams.get("agg")
    if not isinstance(agg, dict) or _qualified(agg.get("cls")) not in AGGREGATIONS:
        raise CheckpointRefused(f"{path}: aggregation {_qualified(agg.get('cls')) if isinstance(agg, dict) else 'none'} "
                                "is not a Chemprop v2 one")
    columns = data.get("output_columns") or []
    return Checkpoint(path, hparams, dict(data["state_dict"]), [str(c) for c in columns if isinstance(c, str)])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sizes(path: str, mp: dict) -> None:
    """CheckpointRefused unless ``d_v``, ``d_e``, ``d_h``, ``depth`` are integers within
    :data:`SIZE_LIMITS` and ``d_vd`` (extra atom descriptors) is None or a non-negative integer."""
    for key, most in SIZE_LIMITS.items():
        value = mp.get(key)
        if not _is_int(value) or not 1 <= value <= most:
            shown = "missing" if key not in mp else f"{' '.join(repr(value).split())[:40]}"
            raise CheckpointRefused(f"{path}: message passing {key} is {shown}, not an integer in 1..{most}")
    d_vd = mp.get("d_vd")
    if d_vd is not None and (not _is_int(d_vd) or d_vd < 0):
        raise CheckpointRefused(f"{path}: message passing d_vd is {' '.join(repr(d_vd).split())[:40]}, "
                                "not a count of extra atom descriptors")


def _activation(recorded: Any) -> Any:
    """The real torch activation a stand-in recorded (only torch.nn.modules.activation classes)."""
    import torch

    name = _qualified(recorded)
    if isinstance(recorded, str):
        return recorded
    if name == "chemprop.nn.utils.Activation":  # an enum recorded by value: "relu", "tanh", ...
        value = (getattr(recorded, "args", None) or ("",))[0]
        if value not in ACTIVATION_NAMES:
            raise CheckpointRefused(f"activation {value!r} is not one of {', '.join(ACTIVATION_NAMES)}")
        return value
    cls = getattr(torch.nn, name[len(ACTIVATION_PREFIX):], None) if name.startswith(ACTIVATION_PREFIX) else None
    # Only a module class of torch.nn.modules.activation (torch.nn also holds submodules such as
    # functional, and base classes): anything else is refused.
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)
            and cls.__module__ == ACTIVATION_PREFIX.rstrip(".")):
        raise CheckpointRefused(f"activation {name} is not a torch activation")
    module = cls.__new__(cls)
    module.__setstate__(dict(getattr(recorded, "state", {})))
    return module


def encoder_modules(checkpoint: Checkpoint) -> Any:
    """``torch.nn.ModuleDict`` of the checkpoint's message passing, aggregation and batch norm,
    weights loaded (strict), in eval mode: ``bn(agg(message_passing(graph), batch))`` is the
    learned encoding Chemprop's ``MPNN.fingerprint`` returns (without extra descriptors).
    Needs chemprop installed. CheckpointRefused (one line) when the recorded arguments do not
    build the classes or the weights do not fit them."""
    import torch
    from chemprop.nn import agg as agg_module
    from chemprop.nn.message_passing import base as mp_module

    hp = checkpoint.hparams
    try:  # recorded arguments the classes do not take, or values of the wrong type
        mp_args = {k: v for k, v in hp["message_passing"].items() if k != "cls"}
        mp_args.update(graph_transform=None, V_d_transform=None,
                       activation=_activation(mp_args.get("activation", "relu")))
        mp_cls = getattr(mp_module, _qualified(hp["message_passing"]["cls"]).rsplit(".", 1)[1])
        agg_cls = getattr(agg_module, _qualified(hp["agg"]["cls"]).rsplit(".", 1)[1])
        message_passing = mp_cls(**mp_args)
        aggregation = agg_cls(**{k: v for k, v in hp["agg"].items() if k != "cls"})
        bn = torch.nn.BatchNorm1d(message_passing.output_dim) if hp.get("batch_norm") else torch.nn.Identity()
    except CheckpointRefused as exc:
        raise CheckpointRefused(f"{checkpoint.path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointRefused(f"{checkpoint.path}: the recorded model cannot be built "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
    modules = torch.nn.ModuleDict({"message_passing": message_passing, "agg": aggregation, "bn": bn})
    wanted = {k: v for k, v in checkpoint.state_dict.items() if k.split(".", 1)[0] in modules}
    try:
        modules.load_state_dict(wanted, strict=True)
    except RuntimeError as exc:
        raise CheckpointRefused(f"{checkpoint.path}: weights do not fit the recorded model "
                                f"({' '.join(str(exc).split())[:300]})") from None
    return modules.eval()
