"""Comparisons a user can trust with several outputs and mixed-range outputs.

Multi-output models: a converter reorders outputs (a .tflite lists its subgraph's outputs in its
own order; a SavedModel sorts its signature keys), so outputs are paired by name, every output is
measured, and ``--output`` picks the one the task metric is about. Mixed-range outputs: a
detector output concatenating box coordinates (0-320) and sigmoid scores shares one int8 scale
and loses its scores while the whole-output SQNR and cosine look excellent: the collapsed slice
is named in a warning.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main


def run_cli(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    """A Keras model with a 4-value box head first and a 3-class softmax head second, its float .tflite
    (whose subgraph lists the two outputs the other way round) and its SavedModel; data with class labels."""
    import keras

    from workbench import api

    d = tmp_path_factory.mktemp("two_outputs")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    boxes = keras.layers.Dense(4, name="boxes")(h)
    classes = keras.layers.Dense(3, activation="softmax", name="classes")(h)
    model = keras.Model(inp, [boxes, classes])
    model.save(d / "two.keras")
    model.export(str(d / "two_savedmodel"), verbose=False)
    rng = np.random.default_rng(0)
    x = rng.random((120, 8), dtype=np.float32)
    y = rng.integers(0, 3, 120)
    np.savez(d / "data.npz", x=x, y=y)
    api.convert(d / "two.keras", "tflite", d / "two.tflite", scheme="float")
    return d


def test_float_export_of_a_two_output_model_compares_equal_output_by_output(two_outputs):
    from ai_edge_litert.interpreter import Interpreter

    from workbench.evaluate.compare import evaluate_models

    d = two_outputs
    it = Interpreter(str(d / "two.tflite"))
    assert [tuple(o["shape"][1:]) for o in it.get_output_details()] == [(3,), (4,)]  # the converter reordered them
    for candidate in (d / "two.tflite", d / "two_savedmodel"):
        m = evaluate_models(d / "two.keras", candidate, d / "data.npz", samples=None).metrics
        assert m["pairing"] == "name" and m["output"] == "boxes"
        by = {o["name"]: o for o in m["outputs"]}
        assert set(by) == {"boxes", "classes"} and by["boxes"]["candidate_name"] == "output_0"
        assert by["boxes"]["shape"] == [4] and by["classes"]["shape"] == [3]
        for o in by.values():  # a float export is the same function: every output matches
            assert o["max_abs_error"] < 1e-5 and o["cosine"] > 0.999999 and o["sqnr_db"] > 80
            assert not o["range_loss"]["collapsed"] and not o["range_loss"]["coarse"]
            assert len(o["range_loss"]["per_channel"]) == o["shape"][-1]
    # the SavedModel as the reference and the .tflite as the candidate: keys against signature keys
    m = evaluate_models(d / "two_savedmodel", d / "two.tflite", d / "data.npz", samples=None).metrics
    assert m["pairing"] == "name" and all(o["max_abs_error"] < 1e-5 for o in m["outputs"])


@pytest.mark.parametrize("scheme", ["float", "fp16"])
def test_export_parity_of_a_reordered_two_output_model_pairs_by_name(two_outputs, tmp_path, scheme):
    d = two_outputs
    for source in (d / "two.keras", d / "two_savedmodel"):
        out = tmp_path / f"{source.stem}_{scheme}.tflite"
        r = run_cli("quantize", source, "--scheme", scheme, "-o", out, "--json")
        assert r.exit_code == 0, r.output  # was: "output shape (3,) differs from the source's (4,)", a converter defect
        check = json.loads(r.stdout)["recipe"]["check"]
        assert check["pairing"] == "name" and len(check["outputs"]) == 2
        assert all(o["max_abs_error"] <= o["tolerance"] for o in check["outputs"].values())


def test_output_picks_the_head_the_task_metric_is_about(two_outputs):
    import keras

    from workbench.evaluate.compare import evaluate_models

    d = two_outputs
    data = np.load(d / "data.npz")
    probs = keras.saving.load_model(d / "two.keras")(data["x"])[1]
    expected = float(np.mean(np.asarray(probs).argmax(1) == data["y"]))
    for name in ("classes", "output_1", "1"):
        m = evaluate_models(d / "two.keras", d / "two.tflite", d / "data.npz", samples=None, output=name).metrics
        assert m["output"] == "classes" and m["metric"] == "top1"
        assert m["reference_accuracy"] == pytest.approx(expected) and m["accuracy_drop_pp"] == pytest.approx(0.0, abs=1e-9)
    r = run_cli("compare", d / "two.keras", d / "two.tflite", "--data", d / "data.npz", "--output", "classes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["output"] == "classes" and doc["reference_accuracy"] == pytest.approx(expected) and len(doc["outputs"]) == 2
    r = run_cli("compare", d / "two.keras", d / "two.tflite", "--data", d / "data.npz")
    assert r.exit_code == 0 and "paired by name" in r.output and "classes = output_1" in r.output
    r = run_cli("compare", d / "two.keras", d / "two.tflite", "--data", d / "data.npz", "--output", "scores")
    assert r.exit_code == 2 and "No output is named 'scores'" in r.output and "boxes" in r.output and "Traceback" not in r.output


def test_quantize_eval_reports_every_output_and_takes_eval_output(two_outputs, tmp_path):
    d = two_outputs
    out = tmp_path / "two_int8.tflite"
    r = run_cli("quantize", d / "two.keras", "--scheme", "int8", "--calib", d / "data.npz", "--eval", d / "data.npz",
                "--eval-output", "classes", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["metrics"]
    assert m["output"] == "classes" and m["metric"] == "top1" and m["pairing"] == "name"
    assert {o["name"] for o in m["outputs"]} == {"boxes", "classes"}
    assert all(o["cosine"] > 0.99 for o in m["outputs"])  # int8 of a small dense net keeps both heads
    r = run_cli("quantize", d / "two.keras", "--scheme", "int8", "--calib", d / "data.npz", "--eval", d / "data.npz",
                "--eval-output", "nope", "-o", tmp_path / "bad.tflite")
    assert r.exit_code == 2 and "No output is named 'nope'" in r.output and not (tmp_path / "bad.tflite").exists()


def test_outputs_whose_names_do_not_pair_are_paired_by_position_with_a_warning():
    from workbench.runtimes.pairing import pair_outputs

    pairs, how, notes = pair_outputs((("a", "output_0"), ("b", "output_1")), (("output_1",), ("output_0",)), 2, 2)
    assert how == "name" and [(p.ref_index, p.cand_index) for p in pairs] == [(0, 1), (1, 0)] and not notes
    pairs, how, notes = pair_outputs((("output_0",), ("output_1",)), (("boxes",), ("scores",)), 2, 2)
    assert how == "position" and [(p.ref_index, p.cand_index) for p in pairs] == [(0, 0), (1, 1)]
    assert "boxes, scores" in notes[0] and "by position" in notes[0]
    pairs, how, notes = pair_outputs((("x", "output_0"), ("y", "output_1")), (("output_1", "t:1"),), 2, 1)
    assert how == "name" and [(p.ref_index, p.cand_index) for p in pairs] == [(1, 0)] and "not compared: x" in notes[-1]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """One output concatenating 4 box coordinates in 0-320 and 2 sigmoid scores (about 0.1-0.5)."""
    import keras

    from workbench import api

    d = tmp_path_factory.mktemp("detector")
    keras.utils.set_random_seed(1)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation="relu")(inp)
    boxes = keras.layers.Rescaling(320.0)(keras.layers.Dense(4, activation="sigmoid")(h))
    scores = keras.layers.Dense(2, activation="sigmoid", bias_initializer=keras.initializers.Constant(-1.0))(h)
    keras.Model(inp, keras.layers.Concatenate(name="detections")([boxes, scores])).save(d / "det.keras")
    np.savez(d / "data.npz", x=np.random.default_rng(1).random((200, 16), dtype=np.float32))
    api.convert(d / "det.keras", "tflite", d / "det_int8.tflite", scheme="int8", calib=str(d / "data.npz"), calib_samples=200,
                per_channel=False)
    api.convert(d / "det.keras", "tflite", d / "det_float.tflite", scheme="float")
    return d


def test_scores_sharing_an_int8_scale_with_boxes_are_named_as_collapsed(detector):
    from workbench.evaluate.compare import evaluate_models

    d = detector
    c = evaluate_models(d / "det.keras", d / "det_int8.tflite", d / "data.npz", samples=None)
    m = c.metrics
    assert m["cosine"] > 0.999 and m["sqnr_db"] > 30  # the whole-output numbers hide the loss
    loss = m["outputs"][0]["range_loss"]
    assert loss["channels"] == 6 and sorted(loss["collapsed"] + loss["coarse"]) == [4, 5]
    score = loss["per_channel"][4]
    assert score["reference_max"] - score["reference_min"] > 0.05 and score["candidate_levels"] <= 2
    assert score["sqnr_db"] < 10 and all(loss["per_channel"][k]["sqnr_db"] > 25 for k in range(4))
    warned = [w for w in c.warnings if "slice(s) 4-5 of 6" in w]
    assert len(warned) == 1 and "'detections'" in warned[0] and "hide" in warned[0]
    r = run_cli("compare", d / "det.keras", d / "det_int8.tflite", "--data", d / "data.npz")
    assert r.exit_code == 0 and "slice(s) 4-5 of 6" in r.output and "collapsed/coarse" in r.output
    # the float export keeps every slice: no warning
    f = evaluate_models(d / "det.keras", d / "det_float.tflite", d / "data.npz", samples=None)
    assert not f.warnings and not f.metrics["outputs"][0]["range_loss"]["collapsed"]


def test_range_loss_tells_collapsed_from_coarse_and_ignores_an_honest_int8_grid():
    from workbench.evaluate.outputs import range_loss

    rng = np.random.default_rng(3)
    ref = np.c_[rng.uniform(0, 320, 2000), rng.uniform(0, 1, 2000), rng.uniform(0, 0.3, 2000)]
    scale = 320 / 255  # one int8 scale for everything
    cand = np.round(ref / scale) * scale
    loss = range_loss(ref, cand)
    assert loss["collapsed"] == [2] and loss["coarse"] == [1]  # 0-0.3 rounds to 0; 0-1 keeps 2 of ~256 levels
    own = np.c_[[np.round(ref[:, k] / (ref[:, k].max() / 255)) * (ref[:, k].max() / 255) for k in range(3)]].T
    assert range_loss(ref, own)["collapsed"] == [] and range_loss(ref, own)["coarse"] == []  # a scale per slice is fine
