"""dmf_ray.modalities.ModalityBatch and the batch driver dmf_ray.encoders.batch (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest

from dmf_ray.encoders import encoder_from_option
from dmf_ray.encoders.base import EncodedBatch
from dmf_ray.encoders.batch import encode_smiles
from dmf_ray.modalities import ModalityBatch


def _batch() -> ModalityBatch:
    values = {"a": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.ones((3, 1), np.uint8)}
    present = np.array([[True, False], [True, True], [False, True]])
    return ModalityBatch(np.array(["x", "y", "z"], object), ["a", "b"], values, present, [[], [], ["a failed"]])


def test_shapes_are_checked_with_the_modality_named():
    with pytest.raises(ValueError, match="modality 'b'"):
        ModalityBatch(np.array(["x"], object), ["a", "b"], {"a": np.zeros((1, 2)), "b": np.zeros((2, 1))}, np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="present has shape"):
        ModalityBatch(np.array(["x"], object), ["a"], {"a": np.zeros((1, 2))}, np.ones((2, 1), bool))


def test_subset_select_withhold_concat():
    b = _batch()
    assert b.dims == [2, 1] and len(b) == 3
    s = b.subset(np.array([2, 0]))
    assert list(s.mol_ids) == ["z", "x"] and s.present.tolist() == [[False, True], [True, False]]
    assert s.errors == [["a failed"], []]
    assert s.values["a"].tolist() == [[4.0, 5.0], [0.0, 1.0]]
    swapped = b.select(["b", "a"])
    assert swapped.names == ["b", "a"] and swapped.present[:, 0].tolist() == [False, True, True]
    with pytest.raises(KeyError, match="unknown modality 'c'"):
        b.select(["c"])
    w = b.withhold(["b"])
    assert w.present[:, 1].tolist() == [False, False, False] and b.present[:, 1].tolist() == [False, True, True]
    assert b.withhold(["a"], rows=np.array([1])).present[:, 0].tolist() == [True, False, False]
    both = ModalityBatch.concat([b, s])
    assert len(both) == 5 and both.errors[-1] == [] and both.present[3].tolist() == [False, True]
    assert b.float32()["b"].dtype == np.float32


def test_from_encoded_marks_failures_absent_with_the_reason():
    enc = {"a": EncodedBatch(np.array([[1, 2], [0, 0]], np.float32), [None, "too big"])}
    b = ModalityBatch.from_encoded(["m1", "m2"], ["a", "b"], [2, 3], enc)
    assert b.present.tolist() == [[True, False], [False, False]]
    assert b.errors == [[], ["too big"]] and b.values["b"].shape == (2, 3)
    with pytest.raises(ValueError, match="modality 'a': the encoder gave"):
        ModalityBatch.from_encoded(["m1", "m2"], ["a"], [4], enc)


def test_arrow_round_trip_nulls_are_absent():
    column = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32(), 2))
    table = pa.table({"mol_id": ["p", "q", "r"], "a": column})
    b = ModalityBatch.from_arrow(table, {"a": 2})
    assert b.present[:, 0].tolist() == [True, False, True]
    assert b.values["a"].tolist() == [[1, 2], [0, 0], [3, 4]]
    cols = b.to_columns()
    assert set(cols) == {"mol_id", "a", "present"} and cols["present"].shape == (3, 1)


def test_encode_smiles_keeps_every_input_row():
    encoders = dict(encoder_from_option(o) for o in ("ecfp", "maccs"))
    out = encode_smiles(["CCO", "C1CC", "OCC", "c1ccccc1"], encoders, names=["ecfp"])
    assert list(out.rows) == [0, 2, 3] and set(out.parse_errors) == {1}
    assert "C1CC" in str(out.parse_errors[1])
    assert out.batch.names == ["ecfp", "maccs"] and len(out.batch) == 3
    # maccs was not asked for: absent everywhere; CCO and OCC are one molecule with one id and vector
    assert out.batch.present.tolist() == [[True, False]] * 3
    assert out.batch.mol_ids[0] == out.batch.mol_ids[1]
    assert np.array_equal(out.batch.values["ecfp"][0], out.batch.values["ecfp"][1])
