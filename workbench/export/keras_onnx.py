"""Keras 3 and tf_keras (.h5) models to ONNX, without tf2onnx (which does not install with the
pinned TensorFlow 2.21 / protobuf set).

Keras 3 is multi-backend: a child process with ``KERAS_BACKEND=torch`` loads the file, runs it
once and calls ``model.export(path, format="onnx")``, which hands the model (a torch module on
that backend) to torch.onnx's dynamo exporter at batch size 1 (:mod:`keras_onnx_child`).
A child, because the backend is fixed per process and this one runs Keras on TensorFlow.
tf_keras ``.h5`` files take the same route: Keras 3 reads the HDF5 format itself, and a file
it cannot read is refused with the reason.

Refused before any work: SavedModel folders (no Keras layers), and custom or Lambda layers
(their Python code would have to run on the torch backend), named. After every export the
ONNX file is run in ONNX Runtime against the Keras model in TensorFlow on the same inputs
(:mod:`workbench.export.parity`); above the tolerance the export fails. int8, int16x8,
dynamic and fp16 then go through ONNX Runtime's quantizer (:mod:`onnx_quant`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import workbench
from workbench.core.errors import ConfigError, RuntimeFailure, UnsupportedError
from workbench.export import parity
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.onnx_quant import ONNX_EXPORTER_SETTINGS, ort_from, quantize_onnx
from workbench.frontends.handle import ModelHandle

OPSET = 18
CHILD_TIMEOUT_S = 600
# Layer classes Keras ships whose code lives outside the model file; anything else is the user's own.
KERAS_MODULES = ("keras.", "tf_keras.", "keras_core.")


def layers_of(model, prefix: str = ""):
    for layer in getattr(model, "layers", ()):
        name = f"{prefix}{layer.name}"
        yield name, layer
        if getattr(layer, "layers", None):
            yield from layers_of(layer, f"{name}/")


def refuse_unportable(handle: ModelHandle) -> None:
    """Name every layer the torch backend cannot rebuild from the file: Lambda and custom classes."""
    where = f"'{handle.path}'"
    if handle.format == "savedmodel":
        raise UnsupportedError(f"{where} is a SavedModel folder, which holds a TensorFlow graph, not Keras layers: "
                               "it cannot be exported to ONNX without tf2onnx (which does not install with the pinned TensorFlow).",
                               hint="Export the .keras or .h5 model instead, or use --format tflite.")
    bad = []
    for name, layer in layers_of(handle.obj):
        cls = type(layer)
        if cls.__name__ == "Lambda":
            bad.append(f"{name} (Lambda)")
        elif not cls.__module__.startswith(KERAS_MODULES):
            bad.append(f"{name} ({cls.__module__}.{cls.__name__})")
    if bad:
        raise UnsupportedError(
            f"{where} cannot be exported to ONNX: these layers carry Python code that Keras's torch backend would have to "
            f"run: {', '.join(bad)}.",
            hint="Replace them with standard Keras layers, or export to TFLite (--format tflite), which traces the TensorFlow graph.")


def input_shapes(handle: ModelHandle) -> list[dict]:
    out = []
    for s in handle.inputs:
        shape = (1, *s.shape[1:]) if s.shape else None
        if shape is None or any(d is None for d in shape):
            raise ConfigError(f"The input '{s.name}' of '{handle.path}' has a dynamic shape {s.shape}; ONNX export needs a fixed one.",
                              hint="Save the model with a fixed input shape (keras.Input(shape=(28, 28, 1))).")
        out.append({"name": s.name, "shape": [int(d) for d in shape]})
    return out


def child_env(tmp: Path) -> dict:
    env = dict(os.environ)
    root = str(Path(workbench.__file__).resolve().parents[1])
    env.update({"KERAS_BACKEND": "torch", "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"), "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)})
    return env


# One float export per model content and input shapes in this process: a recipe exports the same Keras model
# to ONNX for several schemes, and each child process costs seconds (torch import + dynamo export).
_EXPORTED: dict[tuple, tuple[bytes, dict]] = {}


def export_in_child(handle: ModelHandle, out: Path, tmp: Path, trust: bool) -> dict:
    from workbench.core.files import sha256_file

    key = (sha256_file(handle.path), json.dumps(input_shapes(handle)), OPSET, trust)
    if key in _EXPORTED:
        data, result = _EXPORTED[key]
        Path(out).write_bytes(data)
        return {**result, "reused_from_this_process": True}
    result = _export_in_child(handle, out, tmp, trust)
    _EXPORTED[key] = (Path(out).read_bytes(), result)
    return result


def _export_in_child(handle: ModelHandle, out: Path, tmp: Path, trust: bool) -> dict:
    request = {"src": str(Path(handle.path).resolve()), "out": str(out), "inputs": input_shapes(handle), "trust": trust,
               "opset": OPSET, "result": str(tmp / "result.json")}
    (tmp / "request.json").write_text(json.dumps(request), encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, "-m", "workbench.export.keras_onnx_child", str(tmp / "request.json")],
                              env=child_env(tmp), cwd=str(tmp), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"The Keras -> ONNX export of '{handle.path}' took longer than {CHILD_TIMEOUT_S} s and was stopped.") from None
    result_file = tmp / "result.json"
    if not result_file.exists():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise RuntimeFailure(f"The Keras -> ONNX export of '{handle.path}' crashed in its child process (exit code "
                             f"{proc.returncode}): {tail[0][:400]}", hint="Try --format tflite.")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    if not result["ok"]:
        what = "read this tf_keras .h5 file" if handle.format == "h5" else "export the model"
        raise RuntimeFailure(f"Keras 3 on the torch backend could not {what} ('{handle.path}'): {result['error']}: "
                             f"{result['message']}",
                             hint=("Load it in tf_keras, rebuild it in Keras 3 and save a .keras file, or use --format tflite."
                                   if handle.format == "h5" else "Use --format tflite, or export the PyTorch version of the model."))
    return result


def export_float_onnx(job: ExportJob, out: Path, tmp: Path) -> dict:
    from workbench.frontends import load

    handle = job.handle
    refuse_unportable(handle)
    child = export_in_child(handle, out, tmp, trust=bool(getattr(handle.meta.get("load_options"), "trust_model", False)))
    x = parity.parity_inputs(handle.inputs[0].shape, job.calib)
    ref = parity.run_model(handle, x)
    cand = parity.run_model(load(out), x)
    checked = parity.check(ref, cand, f"Keras -> ONNX export of '{handle.path}'")
    return {"exporter": "keras.Model.export(format='onnx') on the torch backend (torch.onnx dynamo)", "opset": OPSET,
            "keras_backend": child.get("backend"), "source_api": handle.meta.get("keras_api"), "parity": checked}


def run_onnx(job: ExportJob) -> dict:
    with tempfile.TemporaryDirectory(prefix="workbench-keras-onnx-") as tmp:
        tmp = Path(tmp)
        if job.config.scheme == "float":
            return export_float_onnx(job, job.out, tmp)
        f = tmp / "float.onnx"
        recipe = export_float_onnx(job, f, tmp)
        recipe.update(quantize_onnx(f, job.out, job.config, job.calib, tmp))
    return recipe


EXPORTERS.add(("keras", "onnx"), Exporter(run=run_onnx, precheck=refuse_unportable, **ONNX_EXPORTER_SETTINGS))
EXPORTERS.add(("keras", "ort"), Exporter(run=ort_from(run_onnx), precheck=refuse_unportable, **ONNX_EXPORTER_SETTINGS))
