"""Task metrics (workbench.evaluate.metrics): values known by construction, defaults, refusals, units."""

import numpy as np
import pytest

from workbench.core.errors import DataError
from workbench.evaluate.compare import agreement
from workbench.evaluate.metrics import METRICS, model_metric, roc_auc


def test_auc_of_a_hand_counted_ranking():
    # positives 0.9, 0.8, 0.4 vs negatives 0.7, 0.3, 0.2, 0.1: 11 of 12 pairs ranked right
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    assert roc_auc(y, s) == pytest.approx(11 / 12)
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5  # a tie counts one half
    assert roc_auc(y, -s) == pytest.approx(1 / 12)


def test_auc_of_two_gaussians_matches_the_closed_form():
    # scores N(1, 1) for positives, N(0, 1) for negatives: AUC = Phi(1 / sqrt(2)) = 0.76025
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(1, 1, 20000), rng.normal(0, 1, 20000)]
    y = np.r_[np.ones(20000, int), np.zeros(20000, int)]
    assert roc_auc(y, s) == pytest.approx(0.76025, abs=0.006)


def test_autoencoder_gets_auc_of_its_reconstruction_error_and_no_accuracy():
    rng = np.random.default_rng(1)
    x = rng.random((200, 16)).astype(np.float32)
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    recon = x.copy()
    recon[100:] += rng.normal(0, 0.3, (100, 16)).astype(np.float32)  # anomalies reconstruct badly
    noisy = recon + rng.normal(0, 0.05, recon.shape).astype(np.float32)
    m = agreement(recon, noisy, y, inputs=x)
    assert m["metric"] == "auc" and m["argmax_agreement"] is None and "accuracy" not in m
    assert m["reference_auc"] == 1.0 and 0.9 < m["auc"] <= 1.0
    assert m["auc_drop_pp"] == pytest.approx((m["reference_auc"] - m["auc"]) * 100, abs=1e-6)
    assert m["metric_direction"] == "higher is better" and m["loss_units"] == "percentage points"
    with pytest.raises(DataError, match="not class scores"):
        agreement(recon, noisy, y, inputs=x, metric="top1")


def test_classifier_defaults_to_top1_and_top5_and_units():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 10)).astype(np.float32)
    y = logits.argmax(1)
    y[:50] = (y[:50] + 1) % 10  # 90% right by construction
    cand = logits.copy()
    cand[:25] = np.roll(cand[:25], 1, axis=1)
    m = agreement(logits, cand, y)
    assert m["metric"] == "top1" and m["reference_accuracy"] == pytest.approx(0.9)
    assert m["accuracy_drop_pp"] == pytest.approx((m["reference_accuracy"] - m["accuracy"]) * 100)  # points, accuracy a fraction
    m5 = agreement(logits, cand, y, metric="top5")
    assert m5["reference_top5_accuracy"] >= 0.9 and "top5_accuracy_drop_pp" in m5
    with pytest.raises(DataError, match="0/1 labels"):
        agreement(logits, cand, y, metric="auc")


def test_regression_mse_mae_psnr_in_output_units():
    target = np.linspace(0, 1, 400, dtype=np.float32).reshape(100, 4)
    ref = target + 0.01
    cand = target + 0.1
    m = agreement(ref, cand, target)
    assert m["metric"] == "mse" and m["reference_mse"] == pytest.approx(1e-4, rel=1e-3) and m["mse"] == pytest.approx(1e-2, rel=1e-3)
    assert m["mse_increase"] == pytest.approx(1e-2 - 1e-4, rel=1e-3) and m["metric_direction"] == "lower is better"
    assert agreement(ref, cand, target, metric="mae")["mae"] == pytest.approx(0.1, rel=1e-3)
    p = agreement(ref, cand, target, metric="psnr")
    assert p["reference_psnr_db"] == pytest.approx(40.0, abs=0.01) and p["psnr_db"] == pytest.approx(20.0, abs=0.01)
    assert p["psnr_drop_db"] == pytest.approx(20.0, abs=0.02)


def test_single_output_score_with_binary_labels_defaults_to_auc():
    s = np.array([[0.9], [0.2], [0.7], [0.1]], np.float32)
    m = model_metric(s, None, np.array([1, 0, 1, 0]))
    assert m["metric"] == "auc" and m["auc"] == 1.0 and "accuracy" not in m


def test_every_metric_names_its_units_and_direction():
    for m in METRICS.values():
        assert m.units and m.loss_units and m.direction in ("higher is better", "lower is better")
        assert m.loss_key.endswith(("_pp", "_db", "_increase")), m.loss_key  # units in the key


def test_old_budget_key_is_refused_naming_the_new_one():
    from workbench.core.errors import ConfigError
    from workbench.pipeline.budgets import parse_budget

    with pytest.raises(ConfigError, match="accuracy_drop_pp>1.0"):
        parse_budget("accuracy_drop>1.0")
    assert parse_budget("accuracy_drop_pp>1.0").metric == "accuracy_drop_pp"
