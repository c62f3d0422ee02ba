"""Transformer encoders on a tiny random BART with a SELFIES vocabulary, built in code (no Ray).

Also the plugin path for models that come as their own Python package (SMI-TED, MHG-GED
style): a toy package and its dmf_ray wrapper, registered through a dist-info entry point.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dmf_ray.encoders import available_encoders, base, create_encoder, encoder_from_option, encoder_from_spec
from dmf_ray.encoders.hf import save_random_bart
from dmf_ray.encoders.identity import MissingExtraError, ModelMismatchError, content_hash
from dmf_ray.encoders.pretrained import length_buckets
from dmf_ray.molecules import parse_smiles

SMILES = [
    "CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[N+](C)(C)CC(=O)[O-]", "O=C(O)c1ccccc1OC(C)=O",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "C", "ClCCl", "OC(=O)CCCCCCCCCCCCCCC",
]
LONG = "C" * 40  # 40 SELFIES symbols + [CLS] [SEP]
NOT_SELFIES = "FI(F)F"  # RDKit accepts it; SELFIES' default constraints allow iodine one bond


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(hf, tmp_path_factory):
    return save_random_bart(str(tmp_path_factory.mktemp("tiny-selfies-bart")), smiles=SMILES + [LONG])


def molecules(smiles=SMILES):
    return [parse_smiles(s) for s in smiles]


def manual_selfies_ted(model_dir, smiles, pooling="mean"):
    """The SELFIES-TED model card's recipe, verbatim in spirit: spaced SELFIES, pad to 128,
    run the BART encoder, mean over the attention mask."""
    import selfies
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).float().eval()
    texts = [selfies.encoder(s).replace("][", "] [") for s in smiles]
    token = tokenizer(texts, return_tensors="pt", max_length=128, truncation=True, padding="max_length")
    with torch.no_grad():
        hidden = model.encoder(input_ids=token["input_ids"], attention_mask=token["attention_mask"]).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    mask = token["attention_mask"].unsqueeze(-1).expand(hidden.size()).float()
    return (torch.sum(hidden * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)).numpy()


def test_load_encode_and_rebuild_from_spec(model_dir):
    name, encoder = encoder_from_option(f"selfies-ted={model_dir}")
    assert name == "selfies-ted" and encoder.dim == 32  # d_model read from config.json
    spec = encoder.spec()
    args = spec["args"]
    assert args["model"] == os.path.realpath(model_dir)
    assert args["sha256"].startswith("sha256:") and len(args["sha256"]) == 7 + 64
    assert {k: args[k] for k in ("input", "pooling", "max_length", "truncation", "dtype")} == {
        "input": "selfies", "pooling": "mean", "max_length": 128, "truncation": "truncate", "dtype": "float16"
    }
    assert spec["dtype"] == "float16" and spec["num_gpus"] == 1.0 and spec["class"].endswith(":SelfiesTED")
    batch = encoder.encode(molecules())
    assert batch.values.shape == (len(SMILES), 32) and batch.values.dtype == np.float16
    assert batch.errors == [None] * len(SMILES)
    assert len({row.tobytes() for row in batch.values}) == len(SMILES)
    again = encoder_from_spec(spec)  # what each Ray actor does
    np.testing.assert_array_equal(again.encode(molecules()).values, batch.values)
    # The model is loaded once per process and never pickled with the encoder.
    assert encoder.loaded() is encoder.loaded()
    clone = pickle.loads(pickle.dumps(encoder))
    assert clone._loaded is None
    np.testing.assert_array_equal(clone.encode(molecules()[:3]).values, batch.values[:3])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_matches_the_model_card_computation(model_dir, pooling):
    encoder = create_encoder("selfies-ted", {"model": model_dir, "dtype": "float32", "pooling": pooling})
    got = encoder.encode(molecules()).values
    want = manual_selfies_ted(model_dir, [m.smiles for m in molecules()], pooling)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_length_buckets_cover_every_row_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=200).tolist()

    def padding(batches):
        return 1 - sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)

    batches = length_buckets(lengths, max_tokens=256, max_rows=16)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 16 and (len(b) * longest <= 256 or len(b) == 1)
        assert lengths[b[0]] == longest  # longest first
    assert padding(batches) < 0.15  # sorting keeps padding small
    assert length_buckets([500], max_tokens=64, max_rows=8) == [[0]]
    # A budget that holds the whole batch: without a padding limit it is one pass padded to
    # its longest row; with one, it is cut into near-uniform passes once each is big enough.
    assert len(length_buckets(lengths, max_tokens=65536, max_rows=1024, max_padding=1.0)) == 1
    cut = length_buckets(lengths, max_tokens=65536, max_rows=1024, min_tokens=128, max_padding=0.1)
    assert sorted(i for b in cut for i in b) == list(range(200))
    assert padding(cut) < 0.1 and len(cut) < 40
    for b in cut:  # a row more than 10% shorter joins only while the pass is under min_tokens
        longest = lengths[b[0]]
        for k, i in enumerate(b):
            assert lengths[i] >= 0.9 * longest or k * longest < 128


def test_bucketed_batches_give_the_vectors_of_one_at_a_time(model_dir):
    encoder = create_encoder("selfies-ted", {"model": model_dir, "dtype": "float32"})
    encoder._max_tokens = 48  # several buckets of different lengths in one batch
    mols = molecules(SMILES + [LONG])
    batch = encoder.encode(mols).values
    alone = np.stack([encoder.encode([m]).values[0] for m in mols])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-5)


def test_failures_are_per_molecule_with_the_reason(model_dir):
    encoder = create_encoder(
        "selfies-ted", {"model": model_dir, "max_length": 24, "truncation": "error", "dtype": "float32"}
    )
    mols = molecules(["CCO", NOT_SELFIES, LONG, "c1ccccc1O"])
    batch = encoder.encode(mols)
    assert batch.errors[0] is None and batch.errors[3] is None
    assert batch.errors[1].startswith("selfies-ted: SELFIES conversion failed") and "I with 3 bond(s)" in batch.errors[1]
    assert batch.errors[2] == "selfies-ted: 42 tokens > max_length 24 (truncation='error')"
    assert not batch.values[[1, 2]].any()
    good = encoder.encode([mols[0], mols[3]]).values
    np.testing.assert_allclose(batch.values[[0, 3]], good, rtol=1e-5, atol=1e-6)

    # truncate: the long molecule keeps its first 22 symbols between [CLS] and [SEP].
    truncating = create_encoder("selfies-ted", {"model": model_dir, "max_length": 24, "dtype": "float32"})
    errors = [None]
    ids = truncating.token_ids([truncating.text_of(mols[2])], errors, [0])[0]
    tok = truncating.tokenizer()
    assert len(ids) == 24 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    out = truncating.encode([mols[2]])
    assert out.errors == [None] and out.values.any()


def test_out_of_memory_splits_the_batch_and_lowers_the_budget(model_dir, monkeypatch):
    import torch

    encoder = create_encoder("selfies-ted", {"model": model_dir, "dtype": "float32"})
    mols = molecules()
    expected = encoder.encode(mols).values
    real_forward = encoder.forward
    calls = []

    def small_card(model, sequences):  # a card that fits 3 sequences, or none longer than 40 tokens
        calls.append(len(sequences))
        if len(sequences) > 3 or max(map(len, sequences)) > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(model, sequences)

    monkeypatch.setattr(encoder, "forward", small_card)
    budget = encoder.max_tokens("cpu")
    batch = encoder.encode(mols + molecules([LONG]))
    np.testing.assert_allclose(batch.values[: len(mols)], expected, rtol=1e-5, atol=1e-5)
    assert batch.errors[-1].startswith("selfies-ted: OutOfMemoryError: CUDA out of memory")
    assert calls[0] == len(mols) + 1 and encoder.max_tokens("cpu") < budget


def test_identity_is_path_plus_content_hash(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DMF_RAY_CACHE", str(tmp_path / "cache"))
    other = save_random_bart(str(tmp_path / "other"), smiles=SMILES + [LONG], seed=1)
    a = create_encoder("selfies-ted", {"model": model_dir}).spec()
    b = create_encoder("selfies-ted", {"model": other}).spec()
    assert a["args"]["sha256"] != b["args"]["sha256"]
    assert len(list((tmp_path / "cache" / "sha256").iterdir())) >= 3  # per-file digests cached on disk

    # Replace the weights at the same path: a worker rebuilding the old spec refuses them, even
    # when the file keeps its size and the old mtime is put back.
    weights = tmp_path / "other" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    stat = weights.stat()
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelMismatchError, match="a different model cannot be stored under the same name"):
        encoder_from_spec(b)
    # Only the files that determine the vectors count: training leftovers do not.
    before = content_hash(model_dir, create_encoder("selfies-ted", {"model": model_dir}).model_files)
    (tmp_path / "copy").mkdir()
    for name in os.listdir(model_dir):
        (tmp_path / "copy" / name).write_bytes(open(os.path.join(model_dir, name), "rb").read())
    (tmp_path / "copy" / "optimizer.pt").write_bytes(b"training state")
    assert content_hash(str(tmp_path / "copy"), create_encoder("selfies-ted", {"model": model_dir}).model_files) == before


def test_cli_options_presets_and_their_errors(model_dir):
    _, generic = encoder_from_option(f"hf={model_dir};input=selfies;pooling=cls;max_length=64;dtype=float32;device=cpu")
    assert generic.args["input"] == "selfies" and generic.args["pooling"] == "cls" and generic.args["max_length"] == 64
    assert generic.dtype == "float32" and generic.num_gpus == 0.0 and "device" not in generic.args
    _, default = encoder_from_option(f"hf={model_dir}")
    assert default.args["input"] == "smiles" and default.args["max_length"] == 128  # tokenizer/model limit
    assert default.num_gpus == 1.0 and default.resources() == {"num_cpus": 1.0, "num_gpus": 1.0}
    _, shared = encoder_from_option(f"selfies-ted={model_dir};num_gpus=0.5")
    assert shared.num_gpus == 0.5
    with pytest.raises(ValueError) as info:
        encoder_from_option(f"hf={model_dir};pooling=max;color=blue;max_length=ten")
    message = str(info.value)
    assert "unknown option 'color=blue'" in message and "max_length='ten'" in message
    with pytest.raises(ValueError, match="pooling 'max' is not one of mean, cls"):
        encoder_from_option(f"hf={model_dir};pooling=max")
    with pytest.raises(ValueError, match="max_length 4096 exceeds the model's 128 positions"):
        encoder_from_option(f"selfies-ted={model_dir};max_length=4096")
    with pytest.raises(FileNotFoundError, match="model directory './no/such/model' does not exist"):
        encoder_from_option("selfies-ted=./no/such/model")
    with pytest.raises(ValueError, match="needs a model directory"):
        encoder_from_option("selfies-ted=")


def test_without_the_hf_extra_dmf_still_works(model_dir, monkeypatch):
    code = "import sys, dmf_ray.encoders as e; print(sorted(e.available_encoders())); print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "'selfies-ted'" in out[0] and "'hf'" in out[0]
    assert out[1] == "False False"  # registering costs no heavy import
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'dmf-ray\[hf\]'") as info:
        encoder_from_option(f"selfies-ted={model_dir}")
    assert isinstance(info.value, ValueError)  # the CLI prints it as one line


# ---- the plugin path: a model shipped as its own package ----------------------------------
TOY_PACKAGE = '''
"""A stand-in for a model package such as SMI-TED or MHG-GED: its own loader and encode()."""
import os
import torch


class ToyModel(torch.nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.embed = torch.nn.Embedding(128, dim)

    def encode(self, smiles):
        if any("Br" in s for s in smiles):
            raise ValueError("bromine is not in the vocabulary")
        rows = [self.embed(torch.tensor([min(ord(c), 127) for c in s], device=self.embed.weight.device)).mean(0) for s in smiles]
        return torch.stack(rows)


def load(folder):
    model = ToyModel()
    model.load_state_dict(torch.load(os.path.join(folder, "toy.pt")))
    return model.eval()
'''

TOY_PLUGIN = '''
"""The dmf_ray wrapper a user writes around that package (see README: plugins)."""
import torch
from dmf_ray.encoders import PretrainedEncoder


class ToySmiTed(PretrainedEncoder):
    description = "toy SMI-TED-style package wrapped as a modality"
    version = "1"
    model_files = ("*.pt", "*.json")

    @property
    def dim(self):
        return 8

    def load_model(self, directory, device):
        import toy_smited
        return toy_smited.load(directory).to(device)

    def embed(self, model, molecules):
        with torch.no_grad():
            return model.encode([m.smiles for m in molecules]).float().cpu().numpy()
'''


def test_model_package_plugin_through_an_entry_point(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("DMF_RAY_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    (site / "toy_smited").mkdir(parents=True)
    (site / "toy_smited" / "__init__.py").write_text(textwrap.dedent(TOY_PACKAGE))
    (site / "dmf_toy_plugin.py").write_text(textwrap.dedent(TOY_PLUGIN))
    dist = site / "dmf_toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dmf-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dmf_ray.encoders]\ntoy-smi-ted = dmf_toy_plugin:ToySmiTed\n")
    weights = tmp_path / "toy-weights"
    weights.mkdir()
    torch.manual_seed(0)
    state = {"embed.weight": torch.randn(128, 8)}
    torch.save(state, weights / "toy.pt")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    try:
        assert "toy-smi-ted" in available_encoders()
        name, encoder = encoder_from_option(f"toy-smi-ted={weights};dtype=float16")
        spec = encoder.spec()
        assert spec["args"]["model"] == str(weights.resolve()) and spec["args"]["sha256"].startswith("sha256:")
        assert spec["dim"] == 8 and spec["dtype"] == "float16" and spec["num_gpus"] == 1.0
        mols = molecules(["CCO", "BrCCBr", "c1ccccc1O", "CCBr", "CC(=O)O"])
        batch = encoder.encode(mols)
        # The package fails the whole call on bromine; the wrapper isolates those molecules.
        assert [e is None for e in batch.errors] == [True, False, True, False, True]
        assert batch.errors[1] == "toy-smi-ted: ValueError: bromine is not in the vocabulary"
        import toy_smited

        direct = toy_smited.load(str(weights)).encode(["CCO", "c1ccccc1O", "CC(=O)O"]).detach().numpy()
        np.testing.assert_allclose(batch.values[[0, 2, 4]].astype(np.float32), direct, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(encoder_from_spec(spec).encode(mols).values, batch.values)
        # New weights under the same path: the recorded identity no longer matches.
        torch.save({"embed.weight": torch.randn(128, 8)}, weights / "toy.pt")
        with pytest.raises(ModelMismatchError):
            encoder_from_spec(spec)
    finally:
        base._REGISTRY.pop("toy-smi-ted", None)
        for module in ("dmf_toy_plugin", "toy_smited"):
            sys.modules.pop(module, None)
