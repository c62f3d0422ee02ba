"""Figures 3-5 helpers without a model: the row cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.analyses import row_cosine


def testrow_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert row_cosine(a, b) == pytest.approx((1 - 1 + 0) / 3)
    assert math.isnan(row_cosine(np.zeros((0, 2)), np.zeros((0, 2))))
