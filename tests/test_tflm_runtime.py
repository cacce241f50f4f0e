"""TensorFlow Lite Micro runtime: op set, exact arena, runner, and errors that name the op."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite_micro")

from workbench.core.errors import RuntimeFailure, UnsupportedError  # noqa: E402
from workbench.frontends import load  # noqa: E402
from workbench.frontends.tflite_reader import read_tflite  # noqa: E402
from workbench.runtimes import tflm  # noqa: E402

# Tries one arena size in a fresh process: exit 0 if the model allocates and runs, 5 if not.
# Independent of workbench's own child so that the test does not check the code with itself.
TRY_ARENA = textwrap.dedent("""
    import sys, numpy as np
    from tflite_micro import runtime
    try:
        it = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
        d = it.get_input_details(0)
        it.set_input(np.zeros(tuple(d["shape"]), d["dtype"]), 0)
        it.invoke()
    except Exception:
        sys.exit(5)
""")


def runs_with(model: Path, arena: int) -> bool:
    r = subprocess.run([sys.executable, "-c", TRY_ARENA, str(model), str(arena)], capture_output=True, timeout=60)
    assert r.returncode in (0, 5), f"unexpected exit {r.returncode}: {r.stderr[-400:]}"
    return r.returncode == 0



@pytest.fixture(scope="module")
def gelu_tflite(artifacts):
    """A small float model with a GELU op, which TFLite Micro has no kernel for."""
    out = artifacts / "gelu.tflite"
    if not out.exists():
        import keras
        import tensorflow as tf

        from workbench.core.quiet import captured_output

        m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Activation("gelu", name="act_gelu"),
                              keras.layers.Dense(4, name="head")])
        with captured_output():
            out.write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
    return out


@pytest.fixture(scope="module")
def dense_int8(artifacts):
    """One int8 Dense layer: with the interpreter reused after failed allocations, TFLM crashed on it."""
    out = artifacts / "dense_int8.tflite"
    if not out.exists():
        import keras
        import tensorflow as tf

        from workbench.core.quiet import captured_output

        m = keras.Sequential([keras.Input((640,)), keras.layers.Dense(128, activation="relu")])
        c = tf.lite.TFLiteConverter.from_keras_model(m)
        rng = np.random.default_rng(0)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([rng.standard_normal((1, 640)).astype(np.float32)] for _ in range(16))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = c.inference_output_type = tf.int8
        with captured_output():
            out.write_bytes(c.convert())
    return out


def sine_model() -> Path:
    import tflite_micro

    return Path(tflite_micro.__file__).parent / "python" / "tflite_micro" / "sine_float.tflite"


def test_supported_ops_come_from_the_package():
    ops = tflm.tflm_supported_ops()
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "ADD", "QUANTIZE", "RESHAPE"} <= ops
    # missing in TFLite Micro (seen with real models)
    assert not ({"TOPK_V2", "REDUCE_PROD", "ATAN2", "GELU"} & ops)
    assert "TFLite_Detection_PostProcess" in tflm.tflm_supported_custom_ops()
    assert tflm.tflm_version()


@pytest.mark.parametrize("which", ["float", "int8", "int16x8", "sine", "dense"])
def test_arena_is_the_smallest_that_runs(which, digits_tflite_float, digits_tflite_int8, digits_int16x8, dense_int8):
    model = {"float": digits_tflite_float, "int8": digits_tflite_int8, "int16x8": digits_int16x8, "sine": sine_model(),
             "dense": dense_int8}[which]
    details = tflm.measure_arena_details(model)
    n = details.arena_bytes
    assert details.exact and details.reported_total is not None
    assert runs_with(model, n), f"does not run with the measured arena {n}"
    assert not runs_with(model, n - 1), f"also runs with {n - 1} bytes: {n} is not the minimum"


def test_arena_equals_independent_bisection(digits_tflite_int8):
    n = tflm.measure_arena(digits_tflite_int8)
    lo, hi = 1024, 1 << 16  # lo fails, hi runs; both far above the ~400-byte crash zone
    assert not runs_with(digits_tflite_int8, lo) and runs_with(digits_tflite_int8, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs_with(digits_tflite_int8, mid) else (mid, hi)
    assert hi == n


def test_tflm_matches_litert_reference_kernels_int8(digits_tflite_int8, digits_test):
    from workbench.evaluate.compare import predict
    from workbench.runtimes import open_runner

    data = digits_test.take(200, seed=0)
    t = open_runner(digits_tflite_int8, "tflm")
    r = open_runner(digits_tflite_int8, "litert", kernels="reference")
    yt, yr = predict(t, data), predict(r, data)
    lsb = np.abs(yt - yr) / t.outputs[0].scale
    # The two int8 kernel sets round a few intermediate values differently: at most 1 LSB apart.
    assert lsb.max() <= 1.0 + 1e-6
    assert np.mean(lsb.max(axis=1) < 0.5) >= 0.97
    assert np.mean(yt.argmax(1) == yr.argmax(1)) >= 0.99
    assert t.info()["runtime"] == "tflm"


def test_tflm_runner_float_matches_litert(digits_tflite_float, digits_test):
    from workbench.evaluate.compare import predict
    from workbench.runtimes import open_runner

    data = digits_test.take(100, seed=0)
    yt = predict(open_runner(digits_tflite_float, "tflm"), data)
    yr = predict(open_runner(digits_tflite_float, "litert", kernels="reference"), data)
    np.testing.assert_allclose(yt, yr, atol=1e-4)


def test_missing_op_is_named_with_its_layer(gelu_tflite):
    g = read_tflite(gelu_tflite)
    problems = tflm.check_tflm(g)
    assert [p["op"] for p in problems] == ["GELU"]
    p = problems[0]
    assert p["kind"] == "missing_op" and "act_gelu" in p["layer"] and p["index"] == g.ops[[o.kind for o in g.ops].index("GELU")].index
    with pytest.raises(UnsupportedError, match="GELU"):
        tflm.measure_arena(gelu_tflite)
    with pytest.raises(UnsupportedError, match="GELU"):
        tflm.TflmRunner(load(gelu_tflite))


def test_allocation_failure_in_the_child_names_the_op(gelu_tflite):
    # Past the up-front scan: TFLM itself only says "failed to allocate tensors"; the op
    # name comes from its C stderr, which the child captures.
    result = tflm._child(["arena", str(gelu_tflite)], 60, "test")
    err = tflm._explain(result, read_tflite(gelu_tflite), gelu_tflite)
    assert isinstance(err, UnsupportedError) and "GELU" in str(err) and "act_gelu" in str(err)


def test_float16_and_hybrid_models_say_which_scheme_works(digits_fp16, digits_dynamic):
    kinds = {p["kind"] for p in tflm.check_tflm(read_tflite(digits_fp16))}
    assert kinds == {"float16"}
    hybrid = tflm.check_tflm(read_tflite(digits_dynamic))
    assert hybrid and all(p["kind"] == "hybrid" for p in hybrid)
    assert "int8" in hybrid[0]["scheme"] and "float32" in hybrid[0]["scheme"]
    for model in (digits_fp16, digits_dynamic):
        with pytest.raises(UnsupportedError) as e:
            tflm.measure_arena(model)
        assert "int8" in str(e.value) and "int16x8" in str(e.value)


def test_crash_in_the_child_is_a_clear_error(digits_tflite_int8, tmp_path):
    # An arena of 100 bytes segfaults TFLite Micro; only the child dies.
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 8, 8, 1), np.int8))
    with pytest.raises(RuntimeFailure, match="crashed"):
        tflm._child(["run", str(digits_tflite_int8), str(x), str(tmp_path / "y.npy"), "100"], 60, "running with a tiny arena")


def test_timeout_stops_the_child():
    with pytest.raises(RuntimeFailure, match="within"):
        tflm._child(["probe", *tflm.CUSTOM_CANDIDATES], 0.05, "probing")


def test_runner_registered_and_refuses_non_tflite(digits_keras_path):
    from workbench.runtimes.base import RUNNERS, _register_builtin

    _register_builtin()
    assert RUNNERS.get("tflm") is tflm.TflmRunner
    with pytest.raises(UnsupportedError, match="tflite"):
        tflm.TflmRunner(load(digits_keras_path))
