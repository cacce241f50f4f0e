"""Pruning: magnitude and channel, PyTorch and Keras (3 and tf_keras), CLI and API, bad input,
and interrupted training resumed from checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError, UnsupportedError
from workbench.optimize.config import PruneConfig, TrainConfig

FACTORY = "workbench.builtin.models.reference:digits_torch"
SMALL = ["--train-samples", "256", "--batch-size", "32"]


def run(args, **kw):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)
    return result


def torch_prune_args(digits_torch_path, out, *extra):
    return ["prune", digits_torch_path, "--factory", FACTORY, "--train", "digits:train", "--val", "digits:test",
            "-o", out, *extra]


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5])
def test_sparsity_outside_open_interval_is_refused(sparsity):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        PruneConfig(sparsity=sparsity)


def test_cli_sparsity_out_of_range_exits_2(tmp_path, digits_torch_path):
    r = run(torch_prune_args(digits_torch_path, tmp_path / "o.pt", "--sparsity", "1.2"))
    assert r.exit_code == 2
    assert "between 0 and 1" in r.output
    assert not (tmp_path / "o.pt").exists()


def test_impossible_combinations_are_refused():
    with pytest.raises(ConfigError, match="distill"):  # channel + polynomial is now gradual channel pruning
        PruneConfig(method="magnitude", distill=True)
    with pytest.raises(ConfigError, match="criterion"):
        PruneConfig(method="magnitude", criterion="bn-gamma")
    with pytest.raises(ConfigError, match="batch-size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="hinge")


def test_polynomial_schedule_rises_to_the_target():
    cfg = PruneConfig(sparsity=0.8, schedule="polynomial", train=TrainConfig(epochs=4))
    values = [cfg.sparsity_at(s, 100) for s in range(100)]
    assert values[0] == 0.0
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[75] == pytest.approx(0.8) and values[-1] == pytest.approx(0.8)
    assert PruneConfig(sparsity=0.3).sparsity_at(0, 10) == 0.3


# ---------------------------------------------------------------- PyTorch

def test_torch_magnitude_polynomial_cli(tmp_path, digits_torch_path):
    import torch

    out = tmp_path / "mag.pt"
    r = run(torch_prune_args(digits_torch_path, out, "--sparsity", "0.6", "--schedule", "polynomial", "--epochs", "2",
                             "--no-int8", "--json", *SMALL))
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    state = torch.load(out, weights_only=True)  # a plain state_dict again: masks were removed
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    for name in ("conv1.weight", "conv2.weight", "fc.weight"):
        w = state[name]
        assert float((w == 0).float().mean()) == pytest.approx(round(0.6 * w.numel()) / w.numel())
    assert d["after"]["nonzero_params"] < 0.45 * d["before"]["nonzero_params"]
    assert d["ratios"]["file_gzip_bytes"] < 0.8  # zeros compress...
    assert d["ratios"]["file_bytes"] > 0.95      # ...but the file keeps every weight
    assert d["after"]["accuracy"] > 0.85
    assert {r_["layer"] for r_ in d["layers"]} == {"conv1", "conv2", "fc"}
    assert Path(str(out) + ".json").exists()  # manifest
    assert not (tmp_path / "mag.pt.ckpt").exists()  # checkpoints removed on success
    from workbench.frontends import load

    assert load(out, factory=FACTORY).format == "state_dict"  # loads into the same factory


def test_torch_channel_cli_measures_the_deployed_model(tmp_path, digits_torch_path):
    out = tmp_path / "ch.pt2"
    r = run(torch_prune_args(digits_torch_path, out, "--sparsity", "0.5", "--method", "channel", "--epochs", "2", "--json",
                             *SMALL))
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rows = {x["layer"]: x for x in d["layers"]}
    assert rows["conv1"]["shape_after"] == [4, 1, 3, 3]
    assert rows["conv2"]["shape_after"] == [8, 4, 3, 3]
    assert rows["fc"]["shape_after"] == [10, 128]  # flatten: 8 kept channels x 16 positions
    b, a = d["before"]["int8"], d["after"]["int8"]
    assert a["tflite_bytes"] < 0.75 * b["tflite_bytes"]
    assert a["latency"]["median_us"] > 0 and a["latency"]["threads"] == 1
    assert a["accuracy"] > 0.85 and d["after"]["accuracy"] > 0.85
    from workbench.frontends import load

    h = load(out)
    assert h.format == "exported_program" and h.outputs[0].shape[-1] == 10


def test_wrong_output_suffix_names_the_right_one(tmp_path, digits_torch_path):
    r = run(torch_prune_args(digits_torch_path, tmp_path / "ch.pt", "--sparsity", "0.5", "--method", "channel"))
    assert r.exit_code == 2
    assert ".pt2" in r.output


def _cat_model():
    import torch

    class CatNet(torch.nn.Module):
        input_shape = (1, 1, 8, 8)

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)
            return self.fc(torch.mean(y, dim=(2, 3)))

    return CatNet()


def _grouped_model():
    import torch

    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=2), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 4 * 4, 10))


def test_channel_pruning_refuses_what_it_cannot_follow_naming_the_layer():
    import torch

    from workbench.optimize.prune_torch import plan_channels

    cfg = PruneConfig(method="channel", sparsity=0.5)
    with pytest.raises(UnsupportedError, match=r"layer 'cat'.*torch.*cat"):
        plan_channels(_cat_model(), torch.zeros(1, 1, 8, 8), cfg, "CatNet")
    with pytest.raises(UnsupportedError, match=r"layer '1'.*grouped Conv2d \(groups=2"):
        plan_channels(_grouped_model(), torch.zeros(1, 1, 8, 8), cfg, "grouped")


def test_channel_plan_keeps_residual_blocks_consistent():
    """Fashion-MNIST reference: both sides of every add keep the same channel set, depthwise
    groups follow their inputs, batch norms are sliced with their convolutions."""
    import torch

    from workbench.builtin.models.reference import fashion_torch
    from workbench.optimize.prune_torch import apply_plan, plan_channels

    model = fashion_torch().eval()
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_()
    plan = plan_channels(model, torch.zeros(1, 1, 28, 28), PruneConfig(method="channel", sparsity=0.5), "fashion")
    block1 = next(g for g in plan.groups if "block1.pw.0" in g["layers"])
    assert {"down1.0", "block1.dw.0", "down1.1", "block1.pw.1"} <= set(block1["layers"])
    assert block1["channels"] == 64 and block1["kept"] == 32
    np.testing.assert_array_equal(plan.out_keep["down1.0"], plan.out_keep["block1.pw.0"])
    np.testing.assert_array_equal(plan.same_keep["block1.dw.0"], plan.out_keep["down1.0"])
    np.testing.assert_array_equal(plan.in_keep["block1.pw.0"], plan.out_keep["down1.0"])
    fc = next(g for g in plan.groups if g["layers"] == ["fc"])
    assert not fc["pruned"] and "output" in fc["reason"]
    pruned = apply_plan(model, plan).eval()
    assert pruned.block1.dw[0].groups == 32 and pruned.down2[0].in_channels == 32 and pruned.fc.in_features == 64
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bn_gamma_criterion_ranks_by_batch_norm():
    import torch

    from workbench.builtin.models.reference import fashion_torch
    from workbench.optimize.prune_torch import plan_channels

    model = fashion_torch().eval()
    with torch.no_grad():
        model.stem[1].weight.copy_(torch.arange(32, dtype=torch.float32))  # gamma rises with the index
    plan = plan_channels(model, torch.zeros(1, 1, 28, 28), PruneConfig(method="channel", sparsity=0.5, criterion="bn-gamma"), "f")
    np.testing.assert_array_equal(plan.out_keep["stem.0"], np.arange(16, 32))


def test_round_to_keeps_multiples_and_never_removes_more_than_asked():
    """--round-to 4 on the digits model at 25%: conv1 (8 filters) would keep 6, which CMSIS-NN's depthwise kernel
    runs on its slow generic path; rounded up it keeps 8, conv2 keeps 12 of 16 (already a multiple)."""
    import torch

    from workbench.builtin.models.reference import digits_torch
    from workbench.optimize.prune_torch import plan_channels

    model = digits_torch().eval()
    x = torch.zeros(1, 1, 8, 8)
    plain = {g["layers"][0]: g["kept"] for g in plan_channels(model, x, PruneConfig(method="channel", sparsity=0.25), "d").groups}
    rounded = {g["layers"][0]: g["kept"] for g in
               plan_channels(model, x, PruneConfig(method="channel", sparsity=0.25, round_to=4), "d").groups}
    assert plain["conv1"] == 6 and rounded["conv1"] == 8
    assert plain["conv2"] == rounded["conv2"] == 12
    at_75 = {g["layers"][0]: g["kept"] for g in
             plan_channels(model, x, PruneConfig(method="channel", sparsity=0.75, round_to=8), "d").groups}
    assert at_75["conv1"] == 8 and at_75["conv2"] == 8  # 2 and 4 rounded up to 8
    with pytest.raises(ConfigError, match="--round-to"):
        PruneConfig(method="channel", sparsity=0.5, round_to=0)


# ---------------------------------------------------------------- bad data

def test_training_data_without_labels_is_refused(tmp_path, digits_torch_path):
    data = tmp_path / "nolabels.npz"
    np.savez(data, x=np.random.default_rng(0).random((50, 8, 8, 1), dtype=np.float32))
    r = run(["prune", digits_torch_path, "--factory", FACTORY, "--train", data, "--sparsity", "0.5",
             "-o", tmp_path / "o.pt"])
    assert r.exit_code == 2
    assert "no labels" in r.output


def test_training_data_of_the_wrong_shape_is_refused(tmp_path, digits_torch_path):
    data = tmp_path / "wrong.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((50, 5, 5, 1), dtype=np.float32), y=rng.integers(0, 10, 50))
    r = run(["prune", digits_torch_path, "--factory", FACTORY, "--train", data, "--sparsity", "0.5",
             "-o", tmp_path / "o.pt"])
    assert r.exit_code == 2
    assert "(5, 5, 1)" in r.output and "expects (1, 8, 8)" in r.output


def test_labels_outside_the_model_classes_are_refused(tmp_path, digits_torch_path):
    data = tmp_path / "labels.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((50, 8, 8, 1), dtype=np.float32), y=rng.integers(0, 12, 50))
    r = run(["prune", digits_torch_path, "--factory", FACTORY, "--train", data, "--sparsity", "0.5",
             "-o", tmp_path / "o.pt"])
    assert r.exit_code == 2
    assert "10 outputs" in r.output


# ---------------------------------------------------------------- interruption and resume

HOOK = '''
import os

CALLS = {"n": 0}


def step(model, x, y, optimizer, loss_fn):
    CALLS["n"] += 1
    stop = os.environ.get("WB_TEST_STOP_FILE")
    if stop and os.path.exists(stop) and CALLS["n"] > int(os.environ["WB_TEST_STOP_AFTER"]):
        raise KeyboardInterrupt
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss
'''


def test_interrupted_training_resumes_from_the_last_checkpoint(tmp_path, digits_torch_path, monkeypatch):
    import torch

    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    stop = tmp_path / "stop"
    stop.write_text("")
    monkeypatch.setenv("WB_TEST_STOP_FILE", str(stop))
    monkeypatch.setenv("WB_TEST_STOP_AFTER", "10")  # 8 steps per epoch: stop inside epoch 2
    args = ["--sparsity", "0.5", "--schedule", "polynomial", "--epochs", "3", "--no-int8", "--json",
            "--step", f"{hook}:step", *SMALL]
    out = tmp_path / "m.pt"
    r = run(torch_prune_args(digits_torch_path, out, *args))
    assert r.exit_code == 130
    assert not out.exists()
    ckpt = tmp_path / "m.pt.ckpt"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 8
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0001.ckpt", "state.json"]  # no temp files left

    r = run(torch_prune_args(digits_torch_path, out, *args))  # no --resume: the checkpoint is not discarded silently
    assert r.exit_code == 2 and "--resume" in r.output

    stop.unlink()
    r = run(torch_prune_args(digits_torch_path, out, *args, "--resume"))
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["training"]["resumed_from_epoch"] == 1 and d["training"]["steps"] == 24
    assert [h["epoch"] for h in d["training"]["history"]] == [1, 2, 3]
    assert not ckpt.exists()

    ref = tmp_path / "ref.pt"  # the same run, never interrupted
    assert run(torch_prune_args(digits_torch_path, ref, *args)).exit_code == 0
    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path, digits_torch_path, monkeypatch):
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    stop = tmp_path / "stop"
    stop.write_text("")
    monkeypatch.setenv("WB_TEST_STOP_FILE", str(stop))
    monkeypatch.setenv("WB_TEST_STOP_AFTER", "9")
    args = ["--epochs", "2", "--no-int8", "--step", f"{hook}:step", *SMALL]
    out = tmp_path / "m.pt"
    assert run(torch_prune_args(digits_torch_path, out, "--sparsity", "0.5", *args)).exit_code == 130
    stop.unlink()
    r = run(torch_prune_args(digits_torch_path, out, "--sparsity", "0.7", *args, "--resume"))
    assert r.exit_code == 2 and "another model, data or config" in r.output
    ckpt = tmp_path / "m.pt.ckpt" / "epoch-0001.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-10] + b"0123456789")
    r = run(torch_prune_args(digits_torch_path, out, "--sparsity", "0.5", *args, "--resume"))
    assert r.exit_code == 2 and "does not match the hash" in r.output
    r = run(torch_prune_args(digits_torch_path, out, "--sparsity", "0.5", *args, "--overwrite"))
    assert r.exit_code == 0, r.output  # --overwrite discards the damaged run and starts over


def test_mse_loss_trains(tmp_path, digits_torch_path):
    r = run(torch_prune_args(digits_torch_path, tmp_path / "m.pt", "--sparsity", "0.3", "--loss", "mse", "--epochs", "1",
                             "--no-int8", "--json", *SMALL))
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["config"]["train"]["loss"] == "mse" and d["training"]["history"][0]["loss"] > 0


# ---------------------------------------------------------------- Keras

def test_keras3_magnitude_goes_through_tf_keras_and_comes_back(tmp_path, digits_keras_path):
    from workbench.frontends import load
    from workbench.optimize.prune import prune

    out = tmp_path / "mag.keras"
    cfg = PruneConfig(sparsity=0.7, train=TrainConfig(epochs=2))
    d = prune(digits_keras_path, out, cfg, "digits:train", "digits:test").to_dict()
    h = load(out)
    assert h.format == "keras" and h.meta["keras_api"] == 3
    kernel = h.obj.get_layer("conv2").get_weights()[0]
    assert float((kernel == 0).mean()) == pytest.approx(round(0.7 * kernel.size) / kernel.size)
    assert "bridge" in d["route"] and d["pruned_layers"] == ["conv1", "conv2", "fc"]
    b, a = d["before"]["int8"], d["after"]["int8"]
    assert a["tflite_bytes"] == b["tflite_bytes"]          # unstructured zeros: same file size
    assert a["tflite_gzip_bytes"] < b["tflite_gzip_bytes"]  # only the compressed size shrinks
    assert d["after"]["accuracy"] > 0.85
    assert any("gzip" in n for n in d["notes"])


def test_keras3_channel_rebuilds_with_fewer_filters(tmp_path, digits_keras_path):
    from workbench.frontends import load

    out = tmp_path / "ch.keras"
    r = run(["prune", digits_keras_path, "--train", "digits:train", "--val", "digits:test", "--sparsity", "0.5",
             "--method", "channel", "--epochs", "2", "--no-int8", "--json", "-o", out, *SMALL])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    m = load(out).obj
    assert m.get_layer("conv1").filters == 4 and m.get_layer("conv2").filters == 8
    assert m.get_layer("fc").get_weights()[0].shape == (128, 10)
    assert d["after"]["accuracy"] > 0.85


def test_keras_channel_refuses_unsupported_layer(tmp_path):
    import keras

    from workbench.optimize.prune_keras import plan_channels

    inp = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, name="a")(inp)
    b = keras.layers.Conv2D(4, 3, name="b")(inp)
    x = keras.layers.Concatenate(name="joined")([a, b])
    out = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    with pytest.raises(UnsupportedError, match=r"layer 'joined' \(Concatenate\)"):
        plan_channels(keras.Model(inp, out), PruneConfig(method="channel"), "concat model")


def test_tf_keras_h5_keeps_its_format(tmp_path, digits_keras_path):
    from workbench.frontends import load
    from workbench.optimize import keras_bridge
    from workbench.optimize.prune import prune

    src = tmp_path / "digits.h5"
    keras_bridge.to_tf_keras(load(digits_keras_path).obj).save(str(src))
    out = tmp_path / "ch.h5"
    cfg = PruneConfig(method="channel", sparsity=0.5, train=TrainConfig(epochs=1, train_samples=128))
    prune(src, out, cfg, "digits:train", "digits:test", measure_int8=False)
    h = load(out)
    assert h.format == "h5" and h.meta["keras_api"] == 2 and h.obj.get_layer("conv2").filters == 8


def test_keras_resume_restores_optimizer_state(tmp_path, digits_keras_path, monkeypatch):
    hook = tmp_path / "khook.py"
    hook.write_text(HOOK.replace('''    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss''', '''    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = loss_fn(model(x, training=True), y)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss'''))
    stop = tmp_path / "stop"
    stop.write_text("")
    monkeypatch.setenv("WB_TEST_STOP_FILE", str(stop))
    monkeypatch.setenv("WB_TEST_STOP_AFTER", "5")
    out = tmp_path / "k.keras"
    args = ["prune", digits_keras_path, "--train", "digits:train", "--sparsity", "0.5", "--method", "channel",
            "--epochs", "2", "--no-int8", "--json", "--step", f"{hook}:step", "-o", out, "--train-samples", "128"]
    assert run(args).exit_code == 130
    stop.unlink()
    r = run(args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["training"]["resumed_from_epoch"] == 1


def test_a_failing_training_step_is_reported_as_the_users(tmp_path, digits_torch_path):
    hook = tmp_path / "bad.py"
    hook.write_text("def step(model, x, y, optimizer, loss_fn):\n    return model(x).nonexistent\n")
    r = run(torch_prune_args(digits_torch_path, tmp_path / "m.pt", "--sparsity", "0.5", "--epochs", "1", "--no-int8",
                             "--step", f"{hook}:step", *SMALL))
    assert r.exit_code == 2
    assert f"training step '{hook}:step' failed: AttributeError" in r.output
