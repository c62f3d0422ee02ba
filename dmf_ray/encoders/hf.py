"""Hugging Face transformers as modalities: ``hf`` (any model + tokenizer) and ``selfies-ted``.

SMILES or SELFIES in, encoder hidden states pooled (masked mean or CLS) out; needs the ``[hf]``
extra (transformers, tokenizers), imported lazily: asking for ``hf``/``selfies-ted`` without it
gives a one-line error naming ``dmf-ray[hf]``. Batches are sorted by token length and cut by a
padded-token budget (``length_buckets``), so a batch of short molecules is not padded to its
longest one. Model identity, one load per actor, OOM halving and per-molecule isolation come
from ``PretrainedEncoder``. ``save_random_bart`` writes random-weight models for tests and
benchmarks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import numpy as np

from dmf_ray.encoders.base import EncodedBatch, register
from dmf_ray.encoders.identity import MissingExtraError
from dmf_ray.encoders.pretrained import PretrainedEncoder, length_buckets, one_line, optional_int, parse_bool
from dmf_ray.molecules import InvalidSmilesError, Molecule, to_selfies

# Files of a Hugging Face model directory that determine its vectors. Training state
# (optimizer.pt, scheduler.pt, rng_state*.pth, trainer_state.json) is neither hashed nor
# downloaded: SELFIES-TED's repository carries ~4 GB of it.
HF_MODEL_FILES = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "*.py",  # remote code (trust_remote_code) is part of the model
)


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"transformer encoders need the [hf] extra: pip install 'dmf-ray[hf]' ({exc})"
        ) from None
    import transformers

    return transformers



@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (one per actor otherwise)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _hidden_size(config: Any) -> int | None:
    for attr in ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    # RoBERTa-style models reserve the first positions for the padding offset.
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "roberta-prelayernorm"):
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return limit


@register("hf")
class TransformerEncoder(PretrainedEncoder):
    """A Hugging Face model + tokenizer from a directory (or a hub id when online).

    Args (all recorded in the manifest, so a worker rebuilds exactly this encoder):
      model         directory with config.json, weights, tokenizer files; or a hub id
      input         ``smiles`` (RDKit canonical isomeric SMILES) or ``selfies`` (converted from
                    the SMILES, retried from the canonical SMILES, as SELFIES-TED does)
      selfies_spaced  put a space between SELFIES symbols (``[C] [=O]``), as SELFIES-TED's
                    whitespace tokenizer expects
      pooling       ``mean`` (over the attention mask, special tokens included) or ``cls``
                    (the first token's hidden state)
      max_length    tokens per molecule, special tokens included; default: the tokenizer's or
                    the model's position limit
      truncation    ``truncate`` (keep the first max_length tokens) or ``error`` (the molecule
                    is absent for this modality, the reason recorded)
      precision     compute dtype on a GPU: ``auto`` (bfloat16 where supported, else float16),
                    ``bfloat16``, ``float16`` or ``float32``; on a CPU always float32
      dtype         stored dtype: ``float16`` (default: half the bytes) or ``float32``
      trust_remote_code  let transformers run model code shipped in the model directory
    Encoder-decoder models (BART, T5) run their encoder only. Output dim is the model config's
    hidden size.
    """

    description = "Hugging Face transformer from a local directory or hub id (hf=PATH;input=smiles|selfies;pooling=mean|cls;...; needs [hf])"
    version = "1"
    dtype = "float16"
    default_batch_size = 512
    model_files = HF_MODEL_FILES
    preset: ClassVar[dict[str, Any]] = {
        "input": "smiles",
        "selfies_spaced": True,
        "pooling": "mean",
        "max_length": None,
        "truncation": "truncate",
        "precision": "auto",
        "trust_remote_code": False,
    }
    option_types = {
        **PretrainedEncoder.option_types,
        "input": str,
        "selfies_spaced": parse_bool,
        "pooling": str,
        "max_length": optional_int,
        "truncation": str,
        "precision": str,
        "trust_remote_code": parse_bool,
    }
    INPUTS = ("smiles", "selfies")
    POOLINGS = ("mean", "cls")
    TRUNCATIONS = ("truncate", "error")
    PRECISIONS = ("auto", "bfloat16", "float16", "float32")
    # Padded tokens per forward pass (rows x longest row); halved after an out-of-memory error.
    # Env DMF_HF_MAX_TOKENS overrides both; it changes speed and memory, never the vectors.
    GPU_MAX_TOKENS = 65536
    CPU_MAX_TOKENS = 4096
    # A pass takes shorter rows (padding them) only until it holds this many tokens.
    GPU_MIN_TOKENS = 8192
    CPU_MIN_TOKENS = 512
    MAX_ROWS = 1024

    def __init__(
        self,
        model: str,
        sha256: str | None = None,
        revision: str | None = None,
        dtype: str | None = None,
        input: str | None = None,
        selfies_spaced: bool | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        truncation: str | None = None,
        precision: str | None = None,
        trust_remote_code: bool | None = None,
        device: str = "auto",
        num_gpus: float | None = None,
        package: str | None = None,
    ):
        given = {
            "input": input, "selfies_spaced": selfies_spaced, "pooling": pooling, "max_length": max_length,
            "truncation": truncation, "precision": precision, "trust_remote_code": trust_remote_code,
        }
        opts = {k: (self.preset[k] if v is None else v) for k, v in given.items()}
        problems = []
        for key, allowed in (("input", self.INPUTS), ("pooling", self.POOLINGS), ("truncation", self.TRUNCATIONS), ("precision", self.PRECISIONS)):
            if opts[key] not in allowed:
                problems.append(f"{key} {opts[key]!r} is not one of {', '.join(allowed)}")
        if opts["max_length"] is not None and int(opts["max_length"]) < 1:
            problems.append(f"max_length {opts['max_length']} is not positive")
        if problems:
            raise ValueError(f"encoder {self.name!r}: " + "; ".join(problems))
        transformers = _require_transformers()
        # super().__init__ resolves the location (a hub id becomes a local snapshot) and hashes it.
        self._config = None
        self._tokenizer = None
        opts["selfies_spaced"] = bool(opts["selfies_spaced"])
        opts["trust_remote_code"] = bool(opts["trust_remote_code"])
        super().__init__(model, sha256=sha256, revision=revision, dtype=dtype, device=device, num_gpus=num_gpus,
                         package=package, **opts)
        with _quiet_transformers():
            self._config = transformers.AutoConfig.from_pretrained(self.directory, trust_remote_code=opts["trust_remote_code"])
        dim = _hidden_size(self._config)
        if dim is None:
            raise ValueError(f"encoder {self.name!r}: {self.model}/config.json names no hidden size")
        self._dim = dim
        limit = _position_limit(self._config)
        if opts["max_length"] is None:
            tokenizer_limit = getattr(self.tokenizer(), "model_max_length", None)
            candidates = [x for x in (tokenizer_limit, limit) if isinstance(x, int) and 0 < x < 1_000_000]
            opts["max_length"] = min(candidates) if candidates else 512
        opts["max_length"] = int(opts["max_length"])
        self.args["max_length"] = opts["max_length"]
        if limit is not None and opts["max_length"] > limit:
            raise ValueError(f"encoder {self.name!r}: max_length {opts['max_length']} exceeds the model's {limit} positions")
        self.options = opts
        env = os.environ.get("DMF_HF_MAX_TOKENS")
        self._max_tokens = int(env) if env else None

    @property
    def dim(self) -> int:
        return self._dim

    # -- loading ----------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            transformers = _require_transformers()
            with _quiet_transformers():
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                    self.directory, trust_remote_code=self.args["trust_remote_code"]
                )
        return self._tokenizer

    def compute_dtype(self, device: str):
        import torch

        if device == "cpu":
            return torch.float32
        precision = self.options["precision"]
        if precision == "auto":
            precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return getattr(torch, precision)

    def load_model(self, directory: str, device: str) -> Any:
        transformers = _require_transformers()
        with _quiet_transformers():
            model = transformers.AutoModel.from_pretrained(directory, trust_remote_code=self.args["trust_remote_code"])
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()  # the decoder is dropped with its weights
        model = model.to(device=device, dtype=self.compute_dtype(device)).eval()
        self.tokenizer()
        return model

    def max_tokens(self, device: str) -> int:
        if self._max_tokens is None:
            self._max_tokens = self.GPU_MAX_TOKENS if device == "cuda" else self.CPU_MAX_TOKENS
        return self._max_tokens

    def min_tokens(self, device: str) -> int:
        return min(self.max_tokens(device), self.GPU_MIN_TOKENS if device == "cuda" else self.CPU_MIN_TOKENS)

    # -- text and tokens ----------------------------------------------------------------------------
    def text_of(self, molecule: Molecule) -> str:
        """The string the tokenizer sees; raises InvalidSmilesError when SELFIES conversion fails."""
        if self.options["input"] == "smiles":
            return molecule.smiles
        text = to_selfies(molecule.smiles)
        return text.replace("][", "] [") if self.options["selfies_spaced"] else text

    def token_ids(self, texts: list[str], errors: list[str | None], rows: list[int]) -> dict[int, list[int]]:
        """Token ids per row; over-long rows are truncated or get an error, by policy."""
        tokenizer = self.tokenizer()
        max_length = self.options["max_length"]
        ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        out: dict[int, list[int]] = {}
        too_long = []
        for row, text, seq in zip(rows, texts, ids):
            if len(seq) <= max_length:
                out[row] = list(seq)
            elif self.options["truncation"] == "error":
                errors[row] = f"{self.name}: {len(seq)} tokens > max_length {max_length} (truncation='error')"
            else:
                too_long.append((row, text))
        if too_long:
            cut = tokenizer([t for _, t in too_long], add_special_tokens=True, truncation=True, max_length=max_length, verbose=False)["input_ids"]
            out.update({row: list(seq) for (row, _), seq in zip(too_long, cut)})
        return out

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, model: Any, sequences: list[list[int]]) -> np.ndarray:
        """Pooled float32 vectors for token id sequences, right-padded to the longest."""
        import torch

        device = next(model.parameters()).device
        pad = self.tokenizer().pad_token_id
        pad = 0 if pad is None else int(pad)
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with torch.inference_mode():
            output = model(input_ids=ids, attention_mask=mask)
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if self.options["pooling"] == "cls":
                pooled = hidden[:, 0].float()
            else:
                keep = mask.unsqueeze(-1).bool()
                # where(), not multiply: a NaN at a padded position must not leak into the sum.
                summed = torch.where(keep, hidden.float(), 0.0).sum(dim=1)
                pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        return pooled.cpu().numpy()

    def encode(self, molecules: list[Molecule]) -> EncodedBatch:
        n = len(molecules)
        values = np.zeros((n, self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * n
        texts, rows = [], []
        for i, molecule in enumerate(molecules):
            try:
                texts.append(self.text_of(molecule))
                rows.append(i)
            except InvalidSmilesError as exc:
                errors[i] = f"{self.name}: {one_line(exc.reason)}"
        if not rows:
            return self.finish(values, errors)
        model = self.loaded()
        device = next(model.parameters()).device.type
        ids = self.token_ids(texts, errors, rows)
        ready = sorted(ids)
        lengths = [len(ids[r]) for r in ready]

        def shrink(batch_rows: list[int]) -> None:
            padded = len(batch_rows) * max(len(ids[r]) for r in batch_rows)
            self._max_tokens = max(64, min(self.max_tokens(device), padded // 2))

        for bucket in length_buckets(lengths, self.max_tokens(device), self.MAX_ROWS, self.min_tokens(device)):
            batch_rows = [ready[j] for j in bucket]
            self.run_split(batch_rows, lambda rs: self.forward(model, [ids[r] for r in rs]), values, errors, shrink)
        return self.finish(values, errors)


@register("selfies-ted")
class SelfiesTED(TransformerEncoder):
    """SELFIES-TED (IBM): a BART encoder over spaced SELFIES, 128 tokens, mean pooled over the
    attention mask, exactly the recipe of its model card (1024-d for the released weights)."""

    description = "SELFIES-TED: BART encoder over SELFIES, mean pooled, 128 tokens (selfies-ted=PATH; needs [hf])"
    preset = {
        **TransformerEncoder.preset,
        "input": "selfies",
        "selfies_spaced": True,
        "pooling": "mean",
        "max_length": 128,
        "truncation": "truncate",
    }


# ---- random models for tests and benchmarks ---------------------------------------------------
SELFIES_TED_SIZE = {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096}
TINY_SIZE = {"d_model": 32, "layers": 2, "heads": 4, "ffn": 64}


def selfies_vocabulary(smiles: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Special tokens, SELFIES' robust alphabet, branch/ring symbols and every symbol of the
    given molecules' SELFIES (molecules that do not convert are skipped)."""
    import selfies

    symbols = set(selfies.get_semantic_robust_alphabet())
    for bond in ("", "=", "#"):
        for n in (1, 2, 3):
            symbols |= {f"[{bond}Branch{n}]", f"[{bond}Ring{n}]"}
    for s in smiles:
        try:
            symbols |= set(selfies.split_selfies(to_selfies(s)))
        except InvalidSmilesError:
            continue
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(symbols)]


def save_random_bart(
    directory: str,
    size: dict[str, int] | None = None,
    smiles: list[str] | tuple[str, ...] = (),
    max_positions: int = 128,
    seed: int = 0,
    weights_dtype: str = "float32",
) -> str:
    """Write a random-weight BART with a SELFIES word-level tokenizer (SELFIES-TED's layout:
    ``[CLS] [C] [=O] ... [SEP]``, whitespace-split) to ``directory``. For tests and benchmarks:
    the vectors mean nothing, the shapes and costs are real. Needs the [hf] extra."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    transformers = _require_transformers()
    size = {**TINY_SIZE, **(size or {})}
    vocab = {token: i for i, token in enumerate(selfies_vocabulary(smiles))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_positions,
    )
    config = transformers.BartConfig(
        vocab_size=len(vocab), d_model=size["d_model"], encoder_layers=size["layers"], decoder_layers=1,
        encoder_attention_heads=size["heads"], decoder_attention_heads=size["heads"],
        encoder_ffn_dim=size["ffn"], decoder_ffn_dim=size["ffn"], max_position_embeddings=max_positions,
        pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"],
        decoder_start_token_id=vocab["[SEP]"], forced_eos_token_id=vocab["[SEP]"], dropout=0.0,
    )
    os.makedirs(directory, exist_ok=True)
    with _quiet_transformers():
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = transformers.BartForConditionalGeneration(config)
        finally:
            torch.random.set_rng_state(generator_state)
        model = model.to(getattr(torch, weights_dtype))
        model.save_pretrained(directory)
        fast.save_pretrained(directory)
    return directory
