"""The learner registry: names, grids, availability."""

from __future__ import annotations

import pytest

from dmf_ray.pipelines.evaluate import learners


def test_grids_are_small_complete_and_buildable():
    for name in learners.LEARNERS:
        for kind in ("classification", "regression"):
            points = learners.grid(name, kind, 50)
            assert 2 <= len(points) <= 3
            if name in ("rf", "xgboost"):
                assert all(p["n_estimators"] == 50 for p in points)
            if learners.available(name) is None:
                model = learners.build(name, kind, points[0], seed=0, n_jobs=1)
                assert hasattr(model, "fit")
    with pytest.raises(ValueError, match="learner must be one of"):
        learners.grid("auto", "classification", 10)  # auto is a choice among learners, not a learner
    with pytest.raises(ValueError, match="svm"):
        learners.check("svm")


def test_linear_and_mlp_learners_standardise_their_inputs():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    for name in ("logreg", "mlp"):
        model = learners.build(name, "classification", learners.grid(name, "classification", 1)[0], 0, 1)
        assert isinstance(model, Pipeline) and isinstance(model.steps[0][1], StandardScaler)
