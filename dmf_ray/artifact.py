"""Model directory I/O: weights in safetensors, everything else in JSON. Never pickle.

A model directory holds two files:
  model.safetensors  the state dict, normalisation buffers included
  config.json        {"format": "dmf_ray.fusion", "format_version": 1, "fusion": FusionConfig,
                      "weights_sha256": ..., **card}
The card is the caller's (encoder specs, training args, metrics, versions), so a served model is
rebuilt from the directory alone. Each file is replaced atomically and config.json goes last, so
a reader never sees a half-written file; the weights hash in config.json catches the one
remaining race (new weights under an old config) as a clear error rather than a wrong model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import torch

from dmf_ray.model.fusion import DynamicFusion, FusionConfig
from dmf_ray.files import CONFIG_FILE, WEIGHTS_FILE, atomic_write, local_model_dir, sha256_file

FORMAT = "dmf_ray.fusion"
FORMAT_VERSION = 1
_RESERVED_KEYS = ("format", "format_version", "fusion", "weights_sha256")


def _fsync_dir(directory: Path) -> None:
    # Makes the renames durable; not every platform lets a directory be opened, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_fusion_model(
    directory: str | os.PathLike, model: DynamicFusion, card: dict | None = None
) -> Path:
    """Write model.safetensors and config.json into `directory` (created if needed); returns it.

    `card` must be strict JSON (no NaN/Infinity) and may not use the reserved keys format,
    format_version, fusion or weights_sha256.
    """
    from safetensors.torch import save_file

    card = dict(card or {})
    clash = sorted(set(card) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"card may not set reserved keys {clash}")
    directory = Path(directory)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fusion": model.config.to_dict()}
    # Serialise the card before touching the disk, so a bad card leaves the directory untouched.
    try:
        json.dumps({**meta, **card}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"card for {directory} is not strict JSON: {exc}") from exc

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    # Weights first, config.json (which pins the weights' sha256) last: a reader that sees the
    # config sees complete weights, and weights replaced mid-read fail the hash check.
    local = pafs.LocalFileSystem()
    atomic_write(local, str(directory / WEIGHTS_FILE), lambda p: save_file(tensors, p, metadata=header), durable=True)
    doc = {**meta, "weights_sha256": sha256_file(directory / WEIGHTS_FILE), **card}
    text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(local, str(directory / CONFIG_FILE), lambda p: Path(p).write_text(text, encoding="utf-8"), durable=True)
    _fsync_dir(directory)
    return directory


def read_model_config(directory: str | os.PathLike) -> dict:
    """Read and check config.json without loading weights (e.g. to learn the encoders needed).
    A remote URI (s3://...) is fetched into the local cache first (``dmf_ray.files``)."""
    directory = local_model_dir(directory)
    if not directory.exists():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"model path {directory} is not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a dmf_ray model directory")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} has format {doc.get('format')!r}, expected {FORMAT!r}")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path} has invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}, newer than the {FORMAT_VERSION} this dmf_ray "
            f"reads; upgrade dmf_ray to load it"
        )
    try:
        FusionConfig.from_dict(doc.get("fusion"))
    except ValueError as exc:
        raise ValueError(f"{path}: bad 'fusion' section: {exc}") from exc
    check_sizes(directory, doc)
    return doc


def _weight_dims(weights: Path, count: int) -> dict[int, int]:
    """Input size of each modality as the weights hold it (``normalizers.<j>.mean`` is [d_j]),
    from the safetensors header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), "np") as f:
            keys = set(f.keys())
            return {j: int(f.get_slice(f"normalizers.{j}.mean").get_shape()[0])
                    for j in range(count) if f"normalizers.{j}.mean" in keys}
    except (SafetensorError, OSError):
        return {}  # unreadable weights are reported by load_fusion_model


def check_sizes(directory: Path, doc: dict) -> None:
    """Refuse a model whose parts disagree on a modality's size: config.json's fusion dims, the
    weights, and the encoder spec (what the encoder will produce). Raises ValueError with one
    line naming the modality and both sizes; reads only the weights' header."""
    fusion = doc["fusion"]
    names, dims = list(fusion["modalities"]), [int(d) for d in fusion["dims"]]
    weights = directory / WEIGHTS_FILE
    held = _weight_dims(weights, len(names)) if weights.is_file() else {}
    specs = doc.get("modalities") or {}
    for j, (name, dim) in enumerate(zip(names, dims)):
        if j in held and held[j] != dim:
            raise ValueError(f"{directory}: modality {name!r}: config.json says {dim} dims but the fusion weights "
                             f"expect {held[j]}")
        spec = specs.get(name) if isinstance(specs, dict) else None
        if isinstance(spec, dict) and spec.get("dim") is not None and int(spec["dim"]) != held.get(j, dim):
            raise ValueError(f"{directory}: modality {name!r}: the encoder spec gives {int(spec['dim'])} dims but the "
                             f"fusion weights expect {held.get(j, dim)}")


def load_fusion_model(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DynamicFusion, dict]:
    """Rebuild the model from `directory` (a path or a URI); returns (model in eval mode on
    `device`, config.json)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = local_model_dir(directory)
    doc = read_model_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    expected = doc.get("weights_sha256")
    if expected is not None and sha256_file(weights) != expected:
        raise ValueError(
            f"{weights} does not match the sha256 recorded in {CONFIG_FILE} "
            f"(partially overwritten or copied from another model)"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from exc
    model = DynamicFusion(FusionConfig.from_dict(doc["fusion"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not fit the config in {CONFIG_FILE}: {exc}") from exc
    return model.to(device).eval(), doc
