"""dmf_ray.model.normalization: the one statistics code (mergeable moments over present rows)."""

from __future__ import annotations

import numpy as np

from dmf_ray.model.normalization import Moments, array_moments, batch_moments, normalization_stats, scale_of


def test_moments_merge_equals_numpy_on_the_whole():
    rng = np.random.default_rng(1)
    x = rng.normal(300.0, 25.0, size=(1000, 4))  # a large mean: the naive sum-of-squares loses digits
    parts = [x[:1], x[1:400], x[400:401], x[401:]]
    merged = Moments.empty(4)
    for part in reversed(parts):
        merged = merged.merge(Moments.of(part))
    assert merged.count == 1000
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-10)
    assert Moments.of(np.zeros((0, 4))).count == 0
    assert merged.merge(Moments.empty(4)) is merged


def test_batch_moments_use_present_rows_only():
    values = {
        "a": np.array([[1.0, 10.0], [3.0, 10.0], [999.0, -5.0]], dtype=np.float32),
        "b": np.array([[0], [4], [0]], dtype=np.uint8),
    }
    present = np.array([[True, False], [True, True], [False, False]])
    m = batch_moments(values, present, ["a", "b"])
    assert m["a"].count == 2 and m["b"].count == 1
    np.testing.assert_allclose(m["a"].mean, [2.0, 10.0])
    np.testing.assert_allclose(m["a"].std, [1.0, 0.0])
    np.testing.assert_allclose(m["b"].mean, [4.0])


def test_a_constant_feature_is_scaled_by_one():
    m = Moments.of(np.array([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0]]))
    np.testing.assert_allclose(scale_of(m), [1.0, 1.0, 1.0])
    m = Moments.of(np.array([[0.0, 2.0], [4.0, 2.0]]))
    np.testing.assert_allclose(scale_of(m), [2.0, 1.0])


def test_array_moments_in_chunks_equal_one_pass_and_stats_leave_out_absent_modalities():
    rng = np.random.default_rng(2)
    values = {"a": rng.normal(5.0, 2.0, size=(20_000, 3)).astype(np.float32),
              "b": np.zeros((20_000, 2), dtype=np.uint8)}
    present = np.ones((20_000, 2), dtype=bool)
    present[::3, 0] = False
    present[:, 1] = False  # no row has b
    rows = np.arange(1, 20_000, 2)
    chunked = array_moments(values, present, ["a", "b"], rows)
    whole = batch_moments({k: v[rows] for k, v in values.items()}, present[rows], ["a", "b"])
    assert chunked["a"].count == whole["a"].count == int(present[rows, 0].sum())
    np.testing.assert_allclose(chunked["a"].mean, whole["a"].mean, rtol=1e-12)
    np.testing.assert_allclose(chunked["a"].std, whole["a"].std, rtol=1e-10)
    stats = normalization_stats(chunked)
    assert set(stats) == {"a"}  # b has no present row: the model keeps mean 0, std 1 for it
    np.testing.assert_allclose(stats["a"][1], scale_of(chunked["a"]))
