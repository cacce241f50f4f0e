"""TF1 frozen graphs (a GraphDef ``.pb``) to .tflite through TensorFlow's TF1 compatibility converter,
``tf.compat.v1.lite.TFLiteConverter.from_frozen_graph``, with every scheme the Keras path has
(float, fp16, dynamic, int8, int16x8; the settings are :func:`workbench.export.keras_tflite.configure`'s).

Placeholders with an unknown batch are converted with batch 1 (as edge runtimes run them); any other
unknown dimension needs ``--inputs NAME:SHAPE``. After each export the graph runs in a
``tf.compat.v1.Session`` and the .tflite in LiteRT on the same inputs (the calibration samples, else
seeded random ones); the max abs error and argmax agreement of every output go into the manifest and
the export fails above the scheme's tolerance (:mod:`workbench.export.parity`).
"""

from __future__ import annotations

import re

import numpy as np

from workbench.core.errors import ConfigError, RuntimeFailure, UnsupportedError
from workbench.core.quiet import captured_output
from workbench.export import parity
from workbench.export.engine import EXPORTERS, REFUSALS, Exporter, ExportJob
from workbench.export.keras_tflite import configure, import_tf
from workbench.frontends.handle import ModelHandle

SCHEMES = ("float", "fp16", "dynamic", "int8", "int16x8")
# Quantized outputs: an int8 step of a softmax is 1/256; what matters most is that the class stays the same.
QUANTIZED = parity.Tolerance(max_abs=0.05, relative=0.15, min_agreement=0.9)
TOLERANCES = {"float": parity.FLOAT, "fp16": parity.FP16, "dynamic": QUANTIZED, "int8": QUANTIZED, "int16x8": QUANTIZED}


def precheck(handle: ModelHandle) -> None:
    from workbench.frontends.graphdef import unconvertible

    info = handle.meta["graphdef"]
    if not handle.inputs:
        raise UnsupportedError(f"'{handle.path}' is a frozen graph without placeholders: it has no inputs to feed, so "
                               "there is nothing to convert (its values are all constants).",
                               hint="Freeze the graph with its tf.compat.v1.placeholder inputs kept "
                                    "(convert_variables_to_constants keeps placeholders; do not replace them by constants).")
    bad = unconvertible(info, tuple(o.name for o in handle.outputs), whole_graph=not handle.meta.get("outputs_named"))
    if bad:
        what = "; ".join(f"{', '.join(ops)}: {why}" for why, ops in bad.items())
        raise UnsupportedError(f"'{handle.path}' has ops that cannot go to TFLite: {what}.",
                               hint="Freeze the inference graph only (is_training=False, convert_variables_to_constants "
                                    "on the prediction outputs), or name those outputs with --outputs NAME,... to convert "
                                    "just the part that computes them.")
    if not handle.outputs:
        raise ConfigError(f"No output can be told in '{handle.path}': every node is consumed by another.",
                          hint="Name the outputs with --outputs NAME,...")


def input_shapes(handle: ModelHandle) -> dict[str, list[int]]:
    shapes = {}
    for s in handle.inputs:
        dims = list(s.shape)
        if not dims and s.shape == ():
            raise ConfigError(f"The shape of input '{s.name}' of '{handle.path}' is not recorded in the graph.",
                              hint=f"Pass it: --inputs {s.name}:1x224x224x3 (batch first, 'x' between dimensions).")
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise ConfigError(f"Input '{s.name}' of '{handle.path}' has unknown dimensions {tuple(s.shape)}.",
                              hint=f"Pass its shape: --inputs {s.name}:" + "x".join(str(d or 'N') for d in dims) + " with N filled in.")
        shapes[s.name] = dims
    return shapes


def _converter_error(job: ExportJob, exc: Exception, log: str) -> RuntimeFailure:
    text = f"{exc}\n{log}"
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op", text)))
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    key = next((ln for ln in lines if "not supported" in ln or "failed to legalize" in ln.lower() or "error:" in ln),
               lines[0] if lines else type(exc).__name__)
    if ops:
        return RuntimeFailure(f"TFLite conversion of the frozen graph '{job.handle.path}' ({job.config.scheme}) failed: "
                              f"TFLite has no builtin op for {', '.join(ops)}.",
                              hint=f"Replace {', '.join(ops)} in the code that builds the graph and freeze it again; "
                                   "--debug shows the converter's message.")
    return RuntimeFailure(f"TFLite conversion of the frozen graph '{job.handle.path}' ({job.config.scheme}) failed: {key[:300]}",
                          hint="Try --scheme float first; --debug shows the converter's traceback.")


def run(job: ExportJob) -> dict:
    h = job.handle
    if job.config.needs_calibration and len(h.inputs) != 1:
        raise UnsupportedError(f"'{h.path}' has {len(h.inputs)} inputs; calibrated schemes take one calibration set for "
                               "one input.", hint="Use --scheme fp16 or dynamic, or name one input with --inputs.")
    import tempfile
    from pathlib import Path

    from workbench.runtimes.tf1 import pruned_graph_def

    shapes = input_shapes(h)
    tf = import_tf()
    with tempfile.TemporaryDirectory(prefix="workbench-tf1-") as tmp, captured_output() as cap:
        try:
            pruned = Path(tmp) / "inference.pb"
            pruned.write_bytes(pruned_graph_def(tf, h).SerializeToString())
            conv = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
                str(pruned), input_arrays=list(shapes), output_arrays=[o.name for o in h.outputs], input_shapes=shapes)
        except Exception as exc:  # the graph does not import (ValueError), or names missing (ValueError)
            raise _converter_error(job, exc, cap.text) from exc
    recipe = configure(tf, conv, job)
    recipe["converter"] = "tf.compat.v1.lite.TFLiteConverter.from_frozen_graph"
    recipe["input_shapes"] = shapes
    error = None
    with captured_output() as cap:
        try:
            data = conv.convert()
        except Exception as exc:  # ConverterError, ValueError, ...
            error = exc
    if error is not None:
        raise _converter_error(job, error, cap.text) from error
    job.out.write_bytes(data)
    recipe["parity"] = check_parity(job, shapes)
    return recipe


def check_parity(job: ExportJob, shapes: dict[str, list[int]]) -> dict:
    """The graph in a TF1 Session against the .tflite in LiteRT, every output, batch 1."""
    from workbench.runtimes import open_runner

    h = job.handle
    batch = shapes[h.inputs[0].name][0]  # the converted graph's fixed batch (1 unless --inputs says otherwise)
    feeds = {}
    for i, s in enumerate(h.inputs):
        calib = job.calib if (i == 0 and job.calib is not None) else None
        x = parity.parity_inputs(tuple(shapes[s.name]), calib, samples=parity.SAMPLES * batch, seed=i)
        feeds[s.name] = x.astype(s.dtype) if np.issubdtype(np.dtype(s.dtype), np.floating) else (x * 4).astype(s.dtype)
    n = min(len(v) for v in feeds.values()) // batch
    runs = [{k: v[j * batch : (j + 1) * batch] for k, v in feeds.items()} for j in range(n)]
    ref_runner = open_runner(h)
    try:
        ref = [ref_runner.run_all(feed) for feed in runs]
    finally:
        ref_runner.close()
    cand = _run_tflite(job.out, runs)
    tol = TOLERANCES[job.config.scheme]
    result = {}
    for o in h.outputs:
        r = np.concatenate([np.asarray(x[o.name], dtype=np.float32) for x in ref])
        c = np.concatenate([x[o.name] for x in cand])
        c = c.reshape(r.shape) if c.size == r.size else c
        result[o.name] = parity.check(r, c, f"{job.config.scheme} export of the frozen graph '{h.path}' (output '{o.name}')", tol)
    return result


def _run_tflite(path, runs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    from workbench.runtimes.litert import interpreter_module

    mod, _ = interpreter_module()
    with captured_output(fds=(2,), python_streams=False):
        interp = mod.Interpreter(model_path=str(path))
        interp.allocate_tensors()
    ins = {d["name"]: d for d in interp.get_input_details()}
    outs = interp.get_output_details()
    results = []
    for feed in runs:
        for name, x in feed.items():
            d = ins.get(name) or ins.get(f"{name}:0") or next(iter(ins.values()))
            interp.set_tensor(d["index"], _quantize(x, d))
        interp.invoke()
        results.append({_node_name(d["name"]): _dequantize(interp.get_tensor(d["index"]), d) for d in outs})
    return results


def _node_name(tensor_name: str) -> str:
    return tensor_name[:-2] if tensor_name.endswith(":0") else tensor_name


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zp = detail.get("quantization", (0.0, 0))
    dt = np.dtype(detail["dtype"])
    if scale and np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)
    return x.astype(dt)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zp = detail.get("quantization", (0.0, 0))
    if scale and np.issubdtype(y.dtype, np.integer):
        return (y.astype(np.float32) - zp) * scale
    return y.astype(np.float32)


EXPORTERS.add(("tf1", "tflite"), Exporter(run=run, schemes=SCHEMES, calibrators=("minmax",), per_tensor=True, keep_float=False,
                                          precheck=precheck,
                                          note="TF1 frozen graphs convert with TensorFlow's TF1 converter (min/max calibration)."))
REFUSALS[("tf1", "onnx")] = ("TF1 graph -> ONNX needs tf2onnx, which does not install with the pinned TensorFlow 2.21 / "
                             "protobuf; convert to .tflite (--format tflite), or re-export ONNX from the code that built the graph.")
