"""The Keras 3 <-> tf_keras bridge that lets tfmot prune and quantize Keras 3 models."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.core.errors import UnsupportedError
from workbench.optimize import keras_bridge as kb


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def _x(model, n=4):
    return np.random.default_rng(0).random((n, *model.inputs[0].shape[1:])).astype(np.float32)


def test_digits_round_trip_is_exact(digits_keras_path, keras):
    m3 = keras.saving.load_model(str(digits_keras_path), compile=False)
    m2 = kb.to_tf_keras(m3)
    assert type(m2).__module__.startswith("tf_keras")
    x = _x(m3)
    np.testing.assert_array_equal(np.asarray(m3(x)), np.asarray(m2(x)))
    back = kb.to_keras3(m2)
    assert type(back).__module__.startswith("keras")
    np.testing.assert_array_equal(np.asarray(m3(x)), np.asarray(back(x)))
    assert [layer.name for layer in back.layers] == [layer.name for layer in m3.layers]


def test_batch_norm_depthwise_and_residual_adds(keras):
    from workbench.builtin.models.reference import fashion_keras

    m3 = fashion_keras()
    x = _x(m3)
    m2 = kb.to_tf_keras(m3)
    np.testing.assert_allclose(np.asarray(m3(x)), np.asarray(m2(x)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(m3(x)), np.asarray(kb.to_keras3(m2)(x)), atol=1e-5)


def test_sequential_and_renamed_options(keras):
    m3 = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, name="c"),
                           keras.layers.LeakyReLU(negative_slope=0.2, name="lrelu"), keras.layers.Flatten(),
                           keras.layers.Dense(3)])
    m2 = kb.to_tf_keras(m3)
    assert m2.get_layer("lrelu").get_config()["alpha"] == pytest.approx(0.2)  # negative_slope is alpha in tf_keras
    x = _x(m3)
    np.testing.assert_allclose(np.asarray(m3(x)), np.asarray(m2(x)), atol=1e-6)
    assert kb.to_keras3(m2).get_layer("lrelu").get_config()["negative_slope"] == pytest.approx(0.2)


def test_custom_and_lambda_layers_are_refused_all_named(keras):
    @keras.saving.register_keras_serializable(package="wbtest")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inp = keras.Input((4,))
    x = Doubler(name="twice")(inp)
    x = keras.layers.Lambda(lambda t: t + 1, name="plus_one")(x)
    out = keras.layers.Dense(2, name="fc")(x)
    with pytest.raises(UnsupportedError) as err:
        kb.to_tf_keras(keras.Model(inp, out), "'custom.keras'")
    msg = str(err.value)
    assert "'twice' (Doubler: a custom layer)" in msg and "'plus_one' (Lambda" in msg and "'custom.keras'" in msg
    assert "'fc'" not in msg


def test_subclassed_models_are_refused(keras):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(UnsupportedError, match="subclassed"):
        kb.to_tf_keras(net)


def test_options_tf_keras_lacks_are_refused_by_name(keras):
    inp = keras.Input((4,))
    out = keras.layers.Dense(2, lora_rank=2, name="adapted")(inp)
    with pytest.raises(UnsupportedError, match=r"'adapted' \(Dense\) sets 'lora_rank=2'"):
        kb.to_tf_keras(keras.Model(inp, out))


def test_tfmot_accepts_the_bridged_model(digits_keras_path, keras):
    """tfmot refuses Keras 3 models (tensorflow/model-optimization#1119); the bridged copy works."""
    import os

    import tensorflow as tf

    from workbench.optimize.prune_keras import import_tfmot

    before = os.environ.get("TF_USE_LEGACY_KERAS")
    tfmot = import_tfmot()
    assert os.environ.get("TF_USE_LEGACY_KERAS") == before  # tfmot's switch does not leak into the process
    if before is None:
        assert tf.keras.version().startswith("3.")
    m3 = keras.saving.load_model(str(digits_keras_path), compile=False)
    with pytest.raises(ValueError):
        tfmot.quantization.keras.quantize_model(m3)
    q = tfmot.quantization.keras.quantize_model(kb.to_tf_keras(m3))
    assert any(layer.name.startswith("quant_") for layer in q.layers)
    p = tfmot.sparsity.keras.prune_low_magnitude(kb.to_tf_keras(m3))
    assert any(layer.name.startswith("prune_low_magnitude_") for layer in p.layers)


def test_rebuild_with_config_overrides(digits_keras_path, keras):
    m3 = keras.saving.load_model(str(digits_keras_path), compile=False)
    graph = kb.read_graph(m3)
    assert graph.api == 3 and [r.layer for r in graph.inputs] == ["image"]
    assert graph.layer("flatten").input_shape == (None, 4, 4, 16)
    smaller = kb.rebuild(graph, 3, configs={"conv2": {"filters": 5}})
    assert smaller.get_layer("conv2").filters == 5 and smaller.get_layer("fc").get_weights()[0].shape == (80, 10)
