"""Fuzz the model readers and the graph analysis with mutated real models.

Every mutated file must end in a clean ModelFormatError or a valid graph that inspect can
describe: never another exception, never a hang. `scripts/fuzz_readers.py` runs the same
properties for longer and prints how many cases ran.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.core.errors import ModelFormatError
from workbench.frontends.onnx_reader import read_onnx_bytes
from workbench.frontends.tflite_reader import read_tflite_bytes
from workbench.frontends.fuzzing import describe_graph, mutate

SETTINGS = settings(max_examples=1000, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                    derandomize=True)


@pytest.fixture(scope="module")
def seeds(digits_tflite_float, digits_tflite_int8, model_zoo):
    return {"tflite": [digits_tflite_float.read_bytes(), digits_tflite_int8.read_bytes()],
            "onnx": [model_zoo["onnx"].read_bytes()]}


def _check(reader, data: bytes):
    try:
        g = reader(data, "<fuzz>")
    except ModelFormatError:
        return
    describe_graph(g)  # the analysis inspect and emulate use must cope with whatever parsed


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "zero"]), st.integers(0, 1 << 30),
                              st.integers(0, 255)), min_size=1, max_size=8), which=st.integers(0, 1))
def test_tflite_reader_never_crashes(seeds, ops, which):
    _check(read_tflite_bytes, mutate(seeds["tflite"][which], ops))


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "zero"]), st.integers(0, 1 << 30),
                              st.integers(0, 255)), min_size=1, max_size=8))
def test_onnx_reader_never_crashes(seeds, ops):
    _check(read_onnx_bytes, mutate(seeds["onnx"][0], ops))


@settings(max_examples=300, deadline=2000, derandomize=True)
@given(data=st.binary(max_size=512))
def test_random_bytes(data):
    _check(read_onnx_bytes, data)
    _check(read_tflite_bytes, b"\0\0\0\0TFL3" + data)


@pytest.fixture(scope="module")
def graphdef_seed():
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, (None, 8, 8, 1), name="images")
        y = tf1.nn.conv2d(x, tf1.constant(np.ones((3, 3, 1, 2), np.float32)), strides=[1, 1, 1, 1], padding="SAME")
        y = tf1.matmul(tf1.reshape(tf1.nn.relu(y), (-1, 128)), tf1.constant(np.ones((128, 3), np.float32)))
        tf1.nn.softmax(y, name="probs")
    return g.as_graph_def(add_shapes=True).SerializeToString()


def _check_graphdef(data: bytes):
    from pathlib import Path

    from workbench.frontends.graphdef import GraphDefInfo, parse_graphdef, signature, unconvertible
    from workbench.frontends.handle import ModelHandle
    from workbench.frontends.inspect import LAYER_TABLES
    from workbench.frontends.loader import LoadOptions

    try:
        info = parse_graphdef(data)
    except ValueError:
        return
    assert isinstance(info, GraphDefInfo)
    try:
        ins, outs = signature(info, LoadOptions(), Path("<fuzz>"))
    except ModelFormatError:
        return
    unconvertible(info, tuple(o.name for o in outs), whole_graph=True)
    h = ModelHandle(path=Path("<fuzz>"), format="frozen_graph", framework="tf1", inputs=ins, outputs=outs,
                    meta={"graphdef": info})
    LAYER_TABLES.get("tf1")(h)


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "zero"]), st.integers(0, 1 << 30),
                              st.integers(0, 255)), min_size=1, max_size=8))
def test_graphdef_reader_never_crashes(graphdef_seed, ops):
    _check_graphdef(mutate(graphdef_seed, ops))


@settings(max_examples=300, deadline=2000, derandomize=True)
@given(data=st.binary(max_size=512))
def test_graphdef_random_bytes(data):
    _check_graphdef(b"\x0a" + data)
