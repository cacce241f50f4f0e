"""Every command x every bad input: a one-paragraph error, exit 2 (or 1 for a failed check),
no traceback, no partial output."""

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 200

# {m}: the model under test, {o}: an output path, {good}: a valid .tflite
COMMANDS = {
    "inspect": "inspect {m}",
    "export": "export {m} --format tflite -o {o}",
    "export-tflm": "export {m} --format tflm -o {o}",
    "export-tflm-no-strip": "export {m} --format tflm --no-strip -o {o}",
    "strip": "strip {m} -o {o}",
    "strip-tflm-only": "strip {m} --tflm-only -o {o}",
    "export-tflm-compress": "export {m} --format tflm --compress -o {o}",
    "cluster": "cluster {m} --train digits:train --epochs 1 -o {o}",
    "export-onnx": "export {m} --format onnx -o {o}",
    "quantize-tflite-weight-int4": "quantize {m} --scheme weight-int4 -o {o}",
    "quantize": "quantize {m} --scheme int8 --calib digits:train -o {o}",
    "compare": "compare {m} {good} --data digits:test --samples 20",
    "debug-quant": "debug-quant {m} --calib digits:train --samples 4",
    "emulate": "emulate {m} --target stm32l4r5",
    "profile": "profile {m} --runs 3 --warmup 1",
    "prune": "prune {m} --train digits:train --sparsity 0.5 --method magnitude --epochs 1 -o {o}",
    "qat": "qat {m} --train digits:train --epochs 1 -o {o}",
}


def _bad_models(tmp_path, good: bytes) -> dict:
    out = {"missing": tmp_path / "missing.tflite"}
    (out.setdefault("empty", tmp_path / "empty.tflite")).write_bytes(b"")
    (out.setdefault("truncated", tmp_path / "truncated.tflite")).write_bytes(good[: len(good) // 3])
    corrupt = bytearray(good)
    for i in range(8, 120, 3):  # the root table and vtable offsets: structure, not weights
        corrupt[i] ^= 0xA5
    (out.setdefault("corrupted", tmp_path / "corrupted.tflite")).write_bytes(bytes(corrupt))
    (out.setdefault("wrong_format", tmp_path / "picture.tflite")).write_bytes(PNG)
    return out


def _invoke(template: str, **kw):
    args = template.format(**{k: str(v) for k, v in kw.items()}).split()
    return CliRunner().invoke(main, args)


def _assert_clean_failure(r, out, codes=(2,)):
    assert r.exit_code in codes, (r.exit_code, r.output)
    text = r.output
    assert "Traceback" not in text and "Internal error" not in text, text
    assert text.count("Error:") == 1 and len(text.strip().splitlines()) <= 6, text  # one short paragraph
    assert not out.exists(), "partial output left behind"


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("bad", ["missing", "empty", "truncated", "corrupted", "wrong_format"])
def test_bad_model_files(tmp_path, digits_tflite_int8, command, bad):
    good = digits_tflite_int8.read_bytes()
    models = _bad_models(tmp_path, good)
    out = tmp_path / "out.bin"
    r = _invoke(COMMANDS[command], m=models[bad], o=out, good=digits_tflite_int8)
    _assert_clean_failure(r, out)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "nan.npz", x=np.full((30, 8, 8, 1), np.nan, np.float32), y=np.zeros(30, np.int64))
    np.savez(d / "empty.npz", x=np.zeros((0, 8, 8, 1), np.float32), y=np.zeros(0, np.int64))
    np.savez(d / "shape.npz", x=np.zeros((30, 5, 5, 1), np.float32), y=np.zeros(30, np.int64))
    np.save(d / "strings.npy", np.array(["a", "b", "c"]))
    (d / "junk.npz").write_bytes(b"not a zip")
    return {"nan": d / "nan.npz", "empty": d / "empty.npz", "shape": d / "shape.npz", "dtype": d / "strings.npy",
            "unreadable": d / "junk.npz", "missing": d / "nope.npz", "wrong_model_data": "fashion-mnist:test"}


DATA_COMMANDS = {
    "quantize": "quantize {m} --scheme int8 --calib {d} -o {o}",
    "quantize-eval": "quantize {m} --scheme dynamic --eval {d} -o {o}",
    "compare": "compare {m} {good} --data {d}",
    "emulate": "emulate {good} --target stm32l4r5 --eval {d}",
    "quantize-tflite": "quantize {float} --scheme int8 --calib {d} -o {o}",
    "quantize-keras-onnx": "quantize {m} --format onnx --scheme int8 --calib {d} -o {o}",
    "compare-metric": "compare {m} {good} --data {d} --metric top5",
    "prune": "prune {m} --train {d} --sparsity 0.5 --method magnitude --epochs 1 -o {o}",
    "qat": "qat {m} --train {d} --epochs 1 -o {o}",
    "cluster": "cluster {m} --train {d} --epochs 1 -o {o}.keras",
}


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
@pytest.mark.parametrize("bad", ["nan", "empty", "shape", "dtype", "unreadable", "missing", "wrong_model_data"])
def test_bad_data(tmp_path, digits_keras_path, digits_tflite_int8, digits_tflite_float, bad_data, command, bad):
    out = tmp_path / "out.bin"
    r = _invoke(DATA_COMMANDS[command], m=digits_keras_path, d=bad_data[bad], o=out, good=digits_tflite_int8,
                float=digits_tflite_float)
    _assert_clean_failure(r, out)


# The conversion matrix's refusals (issue 14): each one short paragraph, exit 2, nothing written.
MATRIX_REFUSALS = {
    "onnx-to-int8-tflite-without-data": ("quantize {onnx} --format tflite --scheme int8 -o {o}", "--calib"),
    "mixed-without-layers": ("quantize {float} --scheme mixed-int16 --calib digits:train -o {o}", "--int16-layer"),
    "int16-layer-matches-nothing": ("quantize {float} --scheme mixed-int16 --int16-layer nosuchop --calib digits:train -o {o}",
                                    "matches no op"),
    "int8-tflite-again": ("quantize {good} --scheme int8 --calib digits:train -o {o}", "already quantized"),
    "weight-int4-from-keras": ("quantize {m} --scheme weight-int4 -o {o}", "Available here"),
    "auc-on-a-classifier": ("compare {m} {good} --data digits:test --samples 20 --metric auc", "0/1 labels"),
    "old-budget-key": ("run {recipe} -o {o} --fail-on accuracy_drop>1", "accuracy_drop_pp"),
}


@pytest.mark.parametrize("case", sorted(MATRIX_REFUSALS))
def test_conversion_matrix_refusals(tmp_path, digits_keras_path, digits_tflite_int8, digits_tflite_float, model_zoo, case):
    tmpl, text = MATRIX_REFUSALS[case]
    out = tmp_path / "out.bin"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodels: [{{name: m, path: {digits_tflite_float}}}]\nvariants: [{{name: f, scheme: float}}]\n")
    r = _invoke(tmpl, m=digits_keras_path, good=digits_tflite_int8, float=digits_tflite_float, onnx=model_zoo["onnx"], o=out,
                recipe=recipe)
    _assert_clean_failure(r, out)
    assert text in r.output, r.output


def test_unknown_target_lists_valid_ones(digits_tflite_int8):
    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target", "stm32-unknown"])
    assert r.exit_code == 2 and "stm32l4r5" in r.output and "Traceback" not in r.output


def test_malformed_target_file(tmp_path, digits_tflite_int8):
    bad = tmp_path / "board.yaml"
    bad.write_text("name: myboard\nkind: mcu\nclock_mhz: fast\n")
    r = CliRunner().invoke(main, ["emulate", str(digits_tflite_int8), "--target-file", str(bad)])
    assert r.exit_code == 2 and "board.yaml" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("command", ["export", "quantize", "prune", "qat"])
def test_output_exists_and_unwritable(tmp_path, digits_keras_path, command):
    tmpl = {"export": COMMANDS["export"], "quantize": COMMANDS["quantize"], "prune": COMMANDS["prune"], "qat": COMMANDS["qat"]}[command]
    suffix = ".keras" if command == "prune" else ".tflite"  # prune keeps the input's format
    existing = tmp_path / f"exists{suffix}"
    existing.write_bytes(b"keep me")
    r = _invoke(tmpl, m=digits_keras_path, o=existing, good="")
    assert r.exit_code == 2 and "--overwrite" in r.output and existing.read_bytes() == b"keep me"
    unwritable = tmp_path / "no" / "such" / "dir" / f"m{suffix}"
    r = _invoke(tmpl, m=digits_keras_path, o=unwritable, good="")
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output


# --- issue 19: TF1 frozen graphs (a GraphDef .pb), written here with the wire format alone ------------------

def _ld(field: int, payload: bytes) -> bytes:
    n, out = len(payload), bytearray([field << 3 | 2])
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out) + payload


def _node(name: str, op: str, inputs=(), attrs=b"") -> bytes:
    return _ld(1, _ld(1, name.encode()) + _ld(2, op.encode()) + b"".join(_ld(3, i.encode()) for i in inputs) + attrs)


def _graphdef(with_placeholder: bool) -> bytes:
    dtype = _ld(5, _ld(1, b"dtype") + _ld(2, b"\x30\x01"))  # attr dtype: DT_FLOAT
    shape = _ld(5, _ld(1, b"shape") + _ld(2, _ld(7, _ld(2, b"\x08\x01") + _ld(2, b"\x08\x04"))))  # [1, 4]
    first = _node("x", "Placeholder", attrs=dtype + shape) if with_placeholder else _node("x", "Const", attrs=dtype)
    return first + _node("y", "Relu", ["x"], _ld(5, _ld(1, b"T") + _ld(2, b"\x30\x01")))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_truncated_frozen_graph(tmp_path, digits_tflite_int8, command):
    good = _graphdef(with_placeholder=True)
    from workbench.frontends.detect import detect_format

    (tmp_path / "ok.pb").write_bytes(good)
    assert detect_format(tmp_path / "ok.pb") == "frozen_graph"
    bad = tmp_path / "graph.pb"
    bad.write_bytes(good[: len(good) - 7])
    out = tmp_path / "out.bin"
    r = _invoke(COMMANDS[command], m=bad, o=out, good=digits_tflite_int8)
    _assert_clean_failure(r, out)


@pytest.mark.parametrize("command", ["export", "export-tflm", "quantize"])
def test_frozen_graph_without_placeholders(tmp_path, digits_tflite_int8, command):
    m = tmp_path / "consts.pb"
    m.write_bytes(_graphdef(with_placeholder=False))
    out = tmp_path / "out.bin"
    r = _invoke(COMMANDS[command], m=m, o=out, good=digits_tflite_int8)
    _assert_clean_failure(r, out)
    assert "without placeholders" in r.output, r.output
