"""Hand-computed ROC-AUC / RMSE / MAE with NaN-masked multi-task labels."""

import math

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.metrics import is_better, primary_metric, score

nan = np.nan


def test_roc_auc_single_task_hand_computed():
    # Positive/negative pairs: (0.35 vs 0.1) ok, (0.35 vs 0.4) wrong, (0.8 vs both) ok -> 3/4.
    out = score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "classification")
    assert out["roc_auc"] == pytest.approx(0.75)
    assert out["n_tasks_scored"] == out["n_tasks"] == 1


def test_roc_auc_ties_count_half():
    out = score([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], "classification")
    # pairs (pos, neg): (0.5,0.5)=0.5, (0.5,0.2)=1, (0.9,0.5)=1, (0.9,0.2)=1 -> 3.5/4
    assert out["roc_auc"] == pytest.approx(0.875)


def test_multitask_nan_labels_ignored_and_one_class_task_skipped():
    y_true = np.array(
        [
            [0, 1, 1],
            [1, nan, 1],
            [0, 0, nan],
            [1, 1, 1],
            [nan, 0, 1],
        ],
        dtype=float,
    )
    y_pred = np.array(
        [
            [0.2, 0.9, 0.1],
            [0.6, 123.0, 0.2],  # 123 sits on a NaN label: must not matter
            [0.7, 0.3, 0.3],
            [0.9, 0.4, 0.4],
            [0.0, 0.5, 0.5],
        ]
    )
    out = score(y_true, y_pred, "classification")
    # task 0: labels 0,1,0,1 preds .2,.6,.7,.9 -> pos {.6,.9} vs neg {.2,.7}: 3/4
    # task 1: labels 1,0,1,0 preds .9,.3,.4,.5 -> pos {.9,.4} vs neg {.3,.5}: 3/4
    # task 2: only class 1 present -> skipped
    assert out["roc_auc_per_task"][0] == pytest.approx(0.75)
    assert out["roc_auc_per_task"][1] == pytest.approx(0.75)
    assert math.isnan(out["roc_auc_per_task"][2])
    assert out["roc_auc"] == pytest.approx(0.75)
    assert (out["n_tasks_scored"], out["n_tasks"]) == (2, 3)


def test_no_scoreable_task_gives_nan():
    out = score([[1], [1], [nan]], [[0.2], [0.3], [0.4]], "classification")
    assert math.isnan(out["roc_auc"]) and out["n_tasks_scored"] == 0


def test_all_nan_predictions_mark_an_unfitted_task():
    y = np.array([[0, 0], [1, 1], [0, 1]], dtype=float)
    p = np.array([[0.1, nan], [0.9, nan], [0.2, nan]])
    out = score(y, p, "classification")
    assert out["n_tasks_scored"] == 1 and out["roc_auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN predictions"):
        score(y, np.array([[0.1, nan], [0.9, 0.5], [0.2, 0.1]]), "classification")


def test_regression_rmse_mae_averaged_over_tasks_nan_masked():
    y_true = np.array([[1.0, 0.0], [2.0, nan], [3.0, 2.0]])
    y_pred = np.array([[1.0, 1.0], [4.0, 99.0], [3.0, 2.0]])
    out = score(y_true, y_pred, "regression")
    # task 0 errors 0,2,0 -> RMSE sqrt(4/3), MAE 2/3; task 1 errors 1,0 -> RMSE sqrt(1/2), MAE 1/2
    assert out["rmse_per_task"] == pytest.approx([math.sqrt(4 / 3), math.sqrt(0.5)])
    assert out["mae_per_task"] == pytest.approx([2 / 3, 0.5])
    assert out["rmse"] == pytest.approx((math.sqrt(4 / 3) + math.sqrt(0.5)) / 2)
    assert out["mae"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert out["n_tasks_scored"] == 2


def test_helpers_and_bad_input():
    assert primary_metric("classification") == "roc_auc"
    assert primary_metric("regression") == "rmse"
    assert is_better(0.9, 0.8, "roc_auc") and is_better(0.5, 0.8, "rmse")
    assert is_better(0.1, nan, "roc_auc") and not is_better(nan, 0.1, "rmse")
    with pytest.raises(ValueError, match="kind"):
        score([1], [1], "multiclass")
    with pytest.raises(ValueError, match="shape"):
        score([[1, 0]], [[1]], "regression")


def test_one_masked_roc_auc_for_evaluate_and_finetune():
    # Review #13: evaluate's score and dmf finetune's roc_auc average the same per-column ROC-AUC.
    from sklearn.metrics import roc_auc_score

    from dmf_ray.model.metrics import roc_auc_per_column
    from dmf_ray.pipelines.finetune.fit import roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 3)).astype(float)
    p = rng.random((40, 3))
    y[:7, 0] = np.nan
    y[:, 2] = 1.0  # one class: undefined
    p[:, 1] = np.nan  # a column the learner could not fit
    per = roc_auc_per_column(y, p)
    assert per[0] == pytest.approx(roc_auc_score(y[7:, 0], p[7:, 0])) and np.isnan(per[1]) and np.isnan(per[2])
    got = score(y, p, "classification")
    assert got["roc_auc"] == pytest.approx(per[0]) and got["n_tasks_scored"] == 1
    assert roc_auc(y, p) == pytest.approx(per[0])
    assert roc_auc(y[:, 2:], p[:, 2:]) is None
    assert roc_auc_per_column(y[:, 0], p[:, 0]) == per[:1]
