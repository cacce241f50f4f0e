"""Gradual channel pruning: masks that rise over the fine-tuning and are removed at the end without
changing what the network computes, the warm restart of the learning rate, distillation from the
unpruned model, early stopping on a share of the training data, and the per-epoch accuracy curve
in the JSON report and the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError
from workbench.optimize.config import PruneConfig, TrainConfig

FACTORY = "workbench.builtin.models.reference:digits_torch"


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_channel_pruning_is_gradual_by_default_and_magnitude_is_not():
    assert PruneConfig(method="channel").schedule == "polynomial"
    assert PruneConfig(method="magnitude").schedule == "constant"
    assert PruneConfig(method="channel").criterion == "bn-gamma" and PruneConfig().criterion == "l1"
    assert PruneConfig(method="channel").distill is None  # decided by the schedule actually used
    assert PruneConfig(method="channel", schedule="constant").schedule == "constant"  # one-shot on request
    with pytest.raises(ConfigError, match="distill"):
        PruneConfig(method="magnitude", distill=True)
    with pytest.raises(ConfigError, match="patience"):
        PruneConfig(method="channel", patience=0)


def test_channel_sparsity_ramps_over_half_the_steps_and_the_lr_restarts_there():
    cfg = PruneConfig(method="channel", sparsity=0.5, train=TrainConfig(epochs=4, lr=0.01))
    s = [cfg.sparsity_at(k, 100) for k in range(100)]
    assert s[0] == 0.0 and all(b >= a for a, b in zip(s, s[1:])) and s[50] == pytest.approx(0.5)
    lr = [cfg.lr_at(k, 100) for k in range(100)]
    assert lr[0] == pytest.approx(0.01) and lr[49] < 0.001  # decayed over the ramp
    assert lr[50] == pytest.approx(0.01) and lr[99] < 0.001  # warm restart at the final sparsity
    off = PruneConfig(method="channel", sparsity=0.5, lr_restart=False, train=TrainConfig(epochs=4, lr=0.01))
    assert [off.lr_at(k, 100) for k in range(100)] == [off.train.lr_at(k, 100) for k in range(100)]


def test_masked_channels_are_removed_without_changing_the_outputs(digits_torch_path):
    """The masker zeroes filters, biases and batch-norm scale/shift; removing those channels is exact."""
    import torch

    from workbench.builtin.models.reference import fashion_torch
    from workbench.optimize.mask_torch import channel_masker
    from workbench.optimize.prune_torch import apply_plan, plan_channels

    torch.manual_seed(0)
    model = fashion_torch().eval()  # batch norm, depthwise convolutions and residual adds
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    sample = torch.zeros(1, 1, 28, 28)
    cfg = PruneConfig(method="channel", sparsity=0.5, train=TrainConfig(epochs=1))
    masker = channel_masker(model, sample, plan_channels(model, sample, cfg), cfg, frequency=1, where="fashion")
    masker.before_step(0, 10)
    assert masker.sparsity == 0.0  # nothing masked at the first step
    masker.before_step(3, 10)
    assert 0.0 < masker.sparsity < 0.5
    first = {k: set(v.tolist()) for k, v in masker._drop[0].items()}
    plan = masker.final()
    assert masker.sparsity == 0.5
    assert all(first[k] <= set(masker._drop[0][k].tolist()) for k in first)  # masks only grow
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        masked = model(x)
        pruned = apply_plan(model, plan).eval()(x)
    assert sum(p.numel() for p in apply_plan(model, plan).parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    np.testing.assert_allclose(pruned.numpy(), masked.numpy(), rtol=1e-4, atol=1e-4)


def test_torch_gradual_channel_pruning_reports_the_curve(tmp_path, digits_torch_path, monkeypatch):
    monkeypatch.setattr("workbench.optimize.gradual.MIN_HOLDOUT", 50)  # digits holds out 135 samples
    out = tmp_path / "g.pt2"
    r = run(["prune", digits_torch_path, "--factory", FACTORY, "--train", "digits:train", "--val", "digits:test",
             "--method", "channel", "--sparsity", "0.5", "--epochs", "4", "--json", "-o", out])  # distilled by default
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    hist = d["training"]["history"]
    sp = [h["channel_sparsity"] for h in hist]
    assert 0.0 < sp[0] < 0.5 and sp[-1] == 0.5 and sp == sorted(sp)
    assert all("holdout_accuracy" in h and "val_accuracy" in h for h in hist)
    ft = d["fine_tuning"]
    assert ft["schedule"] == "polynomial" and ft["distill"] and ft["lr_restart"]
    assert ft["holdout_samples"] > 0 and ft["train_samples"] + ft["holdout_samples"] == d["data"]["train_samples"]
    best = ft["early_stopping"]["best_epoch"]
    assert best >= 2 and hist[best - 1]["channel_sparsity"] == 0.5  # kept epoch is at the final sparsity
    assert d["after"]["accuracy"] == pytest.approx(hist[best - 1]["val_accuracy"], abs=1e-6)  # best weights restored
    rows = {x["layer"]: x for x in d["layers"]}
    assert rows["conv1"]["shape_after"] == [4, 1, 3, 3] and rows["conv2"]["shape_after"] == [8, 4, 3, 3]
    assert d["after"]["int8"]["accuracy"] >= d["before"]["accuracy"] - 0.03
    manifest = json.loads((tmp_path / "g.pt2.json").read_text())
    assert json.dumps(manifest).count("holdout_accuracy") >= len(hist)  # the curve is in the manifest too


def test_keras_gradual_channel_pruning_with_early_stopping(tmp_path, digits_keras_path, monkeypatch):
    from workbench.frontends import load

    monkeypatch.setattr("workbench.optimize.gradual.MIN_HOLDOUT", 50)
    out = tmp_path / "g.keras"
    r = run(["prune", digits_keras_path, "--train", "digits:train", "--val", "digits:test", "--method", "channel",
             "--sparsity", "0.5", "--epochs", "6", "--patience", "1", "--no-int8", "--json", "-o", out])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    hist = d["training"]["history"]
    es = d["fine_tuning"]["early_stopping"]
    assert es["patience"] == 1 and hist[-1]["channel_sparsity"] == 0.5
    if es["stopped_after_epoch"] is not None:  # stopped: no better holdout accuracy in the epoch after the best
        assert len(hist) == es["stopped_after_epoch"] <= 6
        assert hist[-1]["holdout_accuracy"] < hist[es["best_epoch"] - 1]["holdout_accuracy"]
    m = load(out).obj
    assert m.get_layer("conv1").filters == 4 and m.get_layer("conv2").filters == 8
    assert d["after"]["accuracy"] > 0.9
    text = run(["prune", digits_keras_path, "--train", "digits:train", "--method", "channel", "--sparsity", "0.5",
                "--epochs", "2", "--train-samples", "300", "--no-int8", "-o", tmp_path / "h.keras"]).output
    assert "channels masked" in text and "accuracy (holdout)" in text


def test_no_early_stopping_on_a_holdout_too_small_to_rank_epochs(tmp_path, digits_keras_path):
    r = run(["prune", digits_keras_path, "--train", "digits:train", "--method", "channel", "--sparsity", "0.5",
             "--epochs", "2", "--train-samples", "300", "--no-int8", "--json", "-o", tmp_path / "s.keras"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert "too few to rank epochs" in d["fine_tuning"]["early_stopping"]["off"]
    assert d["fine_tuning"]["holdout_samples"] == 0 and d["fine_tuning"]["train_samples"] == 300
    # 2 epochs of 10 steps: too few to ramp, so the default gradual schedule gave way to one-shot removal
    assert d["fine_tuning"]["schedule"] == "constant" and "too few to prune gradually" in d["fine_tuning"]["note"]
    assert d["config"]["schedule"] == "polynomial"
    assert len(d["training"]["history"]) == 2 and "holdout_accuracy" not in d["training"]["history"][-1]
