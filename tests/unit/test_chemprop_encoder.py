"""Chemprop v2 checkpoints as a modality: a tiny model built here, and ADMET-AI's shipped ones.

The reference is Chemprop's own ``MPNN.fingerprint`` on models loaded by Chemprop's own loader
(which unpickles: fine in a test, on files this test wrote or a package shipped). The encoder
reads the same files with ``weights_only=True`` and must give the same vectors.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from rdkit import Chem

from dmf_ray.encoders import encoder_from_option, encoder_from_spec
from dmf_ray.encoders.chemprop_checkpoint import CheckpointRefused, encoder_modules, read_checkpoint
from dmf_ray.molecules import parse_smiles

chemprop = pytest.importorskip("chemprop", reason="the [graph] extra (chemprop) is not installed")

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[N+](C)(C)CC(=O)[O-]", "C", "[Na+].[Cl-]",
          "N[C@@H](C)C(=O)O", "C[C@H](N)C(=O)O", "F/C=C/F", "O=C(O)c1ccccc1OC(C)=O"]
BBBP = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "moleculenet", "bbbp", "train.csv")


def reference(path: str, smiles: list[str]) -> np.ndarray:
    """Chemprop's own fingerprint for the molecules parsed from their canonical SMILES."""
    import torch
    from chemprop.data import BatchMolGraph
    from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
    from chemprop.models import load_model

    model = load_model(path).eval()
    featurizer = SimpleMoleculeMolGraphFeaturizer()
    graph = BatchMolGraph([featurizer(Chem.MolFromSmiles(parse_smiles(s).smiles)) for s in smiles])
    with torch.inference_mode():
        return model.fingerprint(graph).numpy()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A small Chemprop v2 model with random weights and batch-norm statistics, saved by Chemprop."""
    import torch
    from chemprop import models, nn
    from chemprop.models.utils import save_model

    torch.manual_seed(0)
    model = models.MPNN(nn.BondMessagePassing(d_h=16, depth=2), nn.MeanAggregation(),
                        nn.RegressionFFN(input_dim=16, hidden_dim=8), batch_norm=True)
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path_factory.mktemp("tiny-chemprop") / "model_0.pt")
    save_model(path, model.eval(), output_columns=["y"])
    return path


def test_tiny_model_gives_chemprops_own_fingerprint(tiny_checkpoint):
    _, encoder = encoder_from_option(f"chemprop={tiny_checkpoint}")
    assert encoder.dim == 16 and encoder.trained_on == ()
    batch = encoder.encode([parse_smiles(s) for s in SMILES])
    assert batch.errors == [None] * len(SMILES)
    np.testing.assert_allclose(batch.values, reference(tiny_checkpoint, SMILES), rtol=0, atol=1e-6)
    # Rebuilt from its spec (as every actor does) it gives the same vectors.
    rebuilt = encoder_from_spec(encoder.spec())
    np.testing.assert_array_equal(rebuilt.encode([parse_smiles(s) for s in SMILES]).values, batch.values)


def test_members_concatenated_or_averaged(tiny_checkpoint, tmp_path):
    directory = os.path.dirname(tiny_checkpoint)
    second = os.path.join(directory, "model_1.pt")
    if not os.path.exists(second):
        os.link(tiny_checkpoint, second)
    _, both = encoder_from_option(f"chemprop={directory};trained_on=my_assay")
    assert both.dim == 32 and both.args["members"] == ["model_0.pt", "model_1.pt"]
    assert both.spec()["trained_on"] == ["my_assay"]
    _, mean = encoder_from_option(f"chemprop={directory};combine=mean")
    molecules = [parse_smiles(s) for s in SMILES[:3]]
    v_both, v_mean = both.encode(molecules).values, mean.encode(molecules).values
    np.testing.assert_array_equal(v_both[:, :16], v_both[:, 16:])
    np.testing.assert_allclose(v_mean, v_both[:, :16], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="combine 'max' is not one of concat, mean"):
        encoder_from_option(f"chemprop={directory};combine=max")


def test_two_spellings_of_chiral_molecules_give_one_vector(tiny_checkpoint):
    _, encoder = encoder_from_option(f"chemprop={tiny_checkpoint}")
    smiles = ["N[C@@H](C)C(=O)O", "C[C@H](N)C(=O)O", "OC(=O)[C@H](C)N",
              "C[C@@H]1CC[C@H](O)CC1", "O[C@H]1CC[C@@H](C)CC1"]
    if os.path.exists(BBBP):
        with open(BBBP) as f:
            smiles += [r["smiles"] for r in csv.DictReader(f) if "@" in r["smiles"]][:40]
    canonical = [parse_smiles(s) for s in smiles if Chem.MolFromSmiles(s) is not None]
    respelled = [parse_smiles(Chem.MolToSmiles(m.mol, doRandom=True, canonical=False)) for m in canonical]
    assert [m.mol_id for m in respelled] == [m.mol_id for m in canonical]
    assert any(a.mol.GetAtomWithIdx(0).GetSymbol() != b.mol.GetAtomWithIdx(0).GetSymbol()
               for a, b in zip(canonical, respelled))  # the spellings really differ in atom order
    np.testing.assert_array_equal(encoder.encode(canonical).values, encoder.encode(respelled).values)


class UserThing:
    pass


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_needing_unpickling_is_refused_with_one_line(tmp_path, tiny_checkpoint):
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"hyper_parameters": {}, "state_dict": {}, "x": _Payload()}, evil)
    with pytest.raises(CheckpointRefused) as info:
        encoder_from_option(f"chemprop={evil}")
    message = str(info.value)
    assert "\n" not in message and "not on the allow-list" in message and "system" in message
    assert not (tmp_path / "pwned.txt").exists() and not os.path.exists("pwned.txt")
    # A class of the user's own (any module outside the allow-list) is refused the same way.
    custom = tmp_path / "custom.pt"
    torch.save({"hyper_parameters": {}, "state_dict": {}, "x": UserThing()}, custom)
    with pytest.raises(CheckpointRefused, match="UserThing, which is not on the allow-list"):
        read_checkpoint(str(custom))
    # Not a Chemprop file at all: one line too.
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointRefused, match="is not a Chemprop v2 model file"):
        read_checkpoint(str(plain))


def test_the_cli_prints_one_line_for_a_refused_checkpoint(tmp_path):
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, evil)
    run = subprocess.run([sys.executable, "-c", "from dmf_ray.encoders import encoder_from_option as f; "
                          f"f('chemprop={evil}')"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and "CheckpointRefused" in run.stderr and "allow-list" in run.stderr
    assert not (tmp_path / "pwned.txt").exists()


def _tampered(tiny_checkpoint: str, path, change) -> str:
    """A copy of the tiny checkpoint (a file this test wrote, so unpickling it is fine) with
    ``change`` applied to its message passing hyper-parameters."""
    import torch

    data = torch.load(tiny_checkpoint, weights_only=False)
    change(data["hyper_parameters"]["message_passing"])
    torch.save(data, path)
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda mp: mp.pop("d_h"), "message passing d_h is missing, not an integer in 1..65536"),
    (lambda mp: mp.update(d_h=10**7), "d_h is 10000000, not an integer in 1..65536"),
    (lambda mp: mp.update(depth=0), "depth is 0, not an integer in 1..64"),
    (lambda mp: mp.update(depth=True), "depth is True, not an integer"),
    (lambda mp: mp.update(d_v="72"), "d_v is '72', not an integer"),
    (lambda mp: mp.update(d_e=14.0), "d_e is 14.0, not an integer"),
    (lambda mp: mp.update(d_vd="many"), "d_vd is 'many', not a count of extra atom descriptors"),
])
def test_malformed_sizes_are_refused_with_one_line(tiny_checkpoint, tmp_path, change, message):
    # Review #10: these were KeyError/TypeError tracebacks.
    path = _tampered(tiny_checkpoint, tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointRefused) as info:
        encoder_from_option(f"chemprop={path}")
    assert message in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_arguments_the_classes_do_not_take_are_refused_with_one_line(tiny_checkpoint, tmp_path):
    path = _tampered(tiny_checkpoint, tmp_path / "extra.pt", lambda mp: mp.update(bogus=1))
    checkpoint = read_checkpoint(path)  # the sizes are fine: refused when the model is built
    with pytest.raises(CheckpointRefused, match=r"extra\.pt: the recorded model cannot be built \(TypeError: .*bogus"):
        encoder_modules(checkpoint)
    _, encoder = encoder_from_option(f"chemprop={path}")
    with pytest.raises(CheckpointRefused, match="cannot be built"):
        encoder.encode([parse_smiles("CCO")])


class functional:  # noqa: N801 - spelled as the torch.nn attribute it impersonates
    """Pickled as torch.nn.modules.activation.functional: torch.nn.functional is a module, not a class."""


def test_an_activation_that_is_not_a_torch_module_class_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    import torch.nn.modules.activation as activation

    functional.__module__, functional.__qualname__ = "torch.nn.modules.activation", "functional"
    monkeypatch.setattr(activation, "functional", functional, raising=False)  # only while saving
    path = _tampered(tiny_checkpoint, tmp_path / "act.pt", lambda mp: mp.update(activation=functional()))
    monkeypatch.undo()
    with pytest.raises(CheckpointRefused, match=r"act\.pt: activation torch\.nn\.modules\.activation\.functional "
                                                "is not a torch activation"):
        encoder_modules(read_checkpoint(path))


@pytest.fixture(scope="module")
def admet():
    pytest.importorskip("admet_ai", reason="the [graph] extra (admet-ai) is not installed")
    return encoder_from_option("chemprop-admet")[1]


def test_shipped_admet_models_give_chemprops_own_fingerprints(admet):
    assert admet.dim == 600 and admet.args["model"] == "package:admet_ai/resources/models"
    assert admet.args["package"].startswith("admet") and admet.args["sha256"].startswith("sha256:")
    assert {"tdc:ClinTox", "moleculenet:clintox", "moleculenet:bbbp", "moleculenet:tox21"} <= set(admet.trained_on)
    batch = admet.encode([parse_smiles(s) for s in SMILES])
    assert batch.errors == [None] * len(SMILES)
    want = np.concatenate([reference(os.path.join(admet.directory, m), SMILES) for m in admet.args["members"]], axis=1)
    np.testing.assert_allclose(batch.values, want, rtol=0, atol=1e-5)
    # ``--encoders chemprop`` with no value is the same model under another name.
    plain = encoder_from_option("chemprop")[1]
    assert plain.args == admet.args
    with pytest.raises(ValueError, match="always uses ADMET-AI's models"):
        encoder_from_option("chemprop-admet=/tmp/x.pt")


def test_leakage_flags_follow_the_files_not_their_spelling(admet, tmp_path, tiny_checkpoint):
    # Review #11: the shipped files given by absolute path (or copied) were trained_on=().
    import shutil

    members = ",".join(admet.args["members"])
    by_path = encoder_from_option(f"chemprop={admet.directory};members={members}")[1]
    assert by_path.args["model"] != admet.args["model"] and by_path.trained_on == admet.trained_on
    one = os.path.join(admet.directory, "admet_classification", "model_0.pt")
    copy = tmp_path / "mine.pt"
    shutil.copyfile(one, copy)
    for spelled in (one, str(copy)):
        trained = set(encoder_from_option(f"chemprop={spelled}")[1].trained_on)
        assert {"tdc:ClinTox", "moleculenet:clintox", "moleculenet:bbbp", "moleculenet:tox21"} <= trained
        assert trained < set(admet.trained_on)  # the classification member's data sets only
    assert encoder_from_option(f"chemprop={tiny_checkpoint}")[1].trained_on == ()
    assert encoder_from_option(f"chemprop={copy};trained_on=mine")[1].trained_on == ("mine",)  # declared wins


def test_nothing_reaches_the_terminal_while_loading_and_encoding(tmp_path):
    pytest.importorskip("admet_ai", reason="the [graph] extra (admet-ai) is not installed")
    code = ("from dmf_ray.encoders import encoder_from_option; from dmf_ray.molecules import parse_smiles; "
            "e = encoder_from_option('chemprop')[1]; assert e.encode([parse_smiles('CCO')]).errors == [None]")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout == "" and run.stderr == ""  # no Lightning banner, tip, warning or progress bar
