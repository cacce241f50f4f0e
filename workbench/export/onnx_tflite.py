"""An .onnx from any framework to .tflite: onnx2tf's TensorFlow-free backend, then ai-edge-quantizer.

Float: onnx2tf 2.6.9 (``tflite_backend="flatbuffer_direct"``, which writes the .tflite FlatBuffer itself,
without TensorFlow) in a child process (:mod:`onnx_tflite_child`: it prints to stdout, writes beside its
output and rewrites its input file, so it gets a copy in a staging folder). Every other scheme (int8,
int16x8, mixed-int16, dynamic, weight-int8, weight-int4, fp16) quantizes that float file with the
``.tflite`` path (:mod:`tflite_quant`, ai-edge-quantizer, min/max calibration).

Layout: onnx2tf turns channel-first inputs (NCHW, NCW, NCDHW) into channel-last ones (NHWC...), so the
.tflite's signature input has the channel-last shape; the manifest records both layouts and the permutation
(``input_layout``). An input that is NHWC already (a Keras model's ONNX) is kept as it is: by default onnx2tf
would read it as NCHW and write an N,H,C,W input behind a TRANSPOSE (measured on the digits Keras model).
Calibration and parity samples come in ONNX's layout and are transposed for the .tflite. Which permutation
the file wants is read from its input shape, and measured on the parity samples when the shape cannot tell
(equal dimensions). Measured too: an NCW Conv1d model converts to an NWC input (2.2e-8 from ONNX Runtime).

Checks: the float file against ONNX Runtime on the same inputs (max abs error, argmax agreement; fails
above the float tolerance), and every quantized file against ONNX Runtime (measured and recorded, judged by
``--eval``). An op onnx2tf cannot lower (it then writes a CUSTOM ``ONNX_<OP>`` op that no runtime has) is
refused (exit 2) naming the op and the node.

Measured here (Python 3.11, the pinned set), float max abs error against ONNX Runtime on 16 inputs:
digits CNN 5.7e-6, Fashion-MNIST CNN 2.9e-6, PaddleOCR's text-direction classifier from rapidocr-onnxruntime
1.4.4 9.5e-7 (1.7e-5 on rendered text lines), magika 1.0.3's model (int32 byte inputs) 2.4e-7.
int8 (ai-edge-quantizer, 200 calibration samples) against ONNX Runtime on held-out data: digits argmax
agreement 1.0 on its 449 test samples (accuracy 97.55 % both), Fashion-MNIST 0.996 on 500 test samples
(91.6 % both), the OCR classifier 0.965 on 200 rendered text lines (accuracy 83.5 % ORT, 84.0 % int8);
tests/test_onnx_to_tflite.py and tests/test_realmodels.py assert them.

Choice of converter, measured: onnx2tf 2.x declares Requires-Python >= 3.12 and exact pins of onnx 1.20,
onnxruntime 1.26, numpy 2.2 and ai-edge-litert 2.1, but its flatbuffer_direct path runs on 3.11 with the
pinned set; installed ``--no-deps --ignore-requires-python`` with the two packages it imports
(psutil, sng4onnx: ``requirements-onnx2tf.txt``, installed by the Makefile), it moves no pin. Its own int8
(``output_integer_quantized_tflite``) is not used: on the digits model it stops with "strict integer quantization
requires custom_input_op_name_np_data_path entries" (calibration .npy files with mean and std), and every scheme
of the ``.tflite`` path (ai-edge-quantizer) applies to onnx2tf's float file as to any other. onnx2tf 1.29
(what pip picks on 3.11) needs TensorFlow 2.19 and would downgrade six pins; onnx2keras installs but knows
55 ONNX ops (onnx2tf 2.6.9's registry: 192); onnx2torch needs a CUDA-only torchvision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import workbench
from workbench.core.errors import ConfigError, MissingDependencyError, RuntimeFailure, ToolFailure, UnsupportedError
from workbench.export import parity
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.tflite_quant import RECIPES
from workbench.frontends.handle import ModelHandle

CHILD_TIMEOUT_S = 900
INSTALL = "pip install --no-deps --ignore-requires-python -r requirements-onnx2tf.txt (make venv does it)"
LOWERING_ERRORS = ("NodeValidationError", "NotImplementedError")  # onnx2tf's own "this node cannot be lowered"


def onnx2tf_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("onnx2tf")
    except importlib.metadata.PackageNotFoundError:
        return None


def input_shapes(handle: ModelHandle) -> dict[str, list[int]]:
    """Fixed input shapes: an unknown batch becomes 1; any other unknown dimension needs --input-shape."""
    if len(handle.inputs) != 1:
        raise UnsupportedError(f"'{handle.path}' has {len(handle.inputs)} inputs; ONNX -> TFLite here takes one-input models.",
                               hint="Export the model with one input, or deploy the .onnx with ONNX Runtime (--format onnx).")
    s = handle.inputs[0]
    dims = list(s.shape or ())
    if not dims:
        raise ConfigError(f"The input shape of '{handle.path}' is unknown.", hint="Pass --input-shape, batch first.")
    dims[0] = 1 if dims[0] is None else dims[0]
    if any(d is None for d in dims):
        raise ConfigError(f"Input '{s.name}' of '{handle.path}' has unknown dimensions {tuple(s.shape)}.",
                          hint="Pass its shape: --input-shape " + ",".join(str(d or 'N') for d in dims) + " with N filled in.")
    return {s.name: [int(d) for d in dims]}


def precheck(handle: ModelHandle) -> None:
    input_shapes(handle)
    if onnx2tf_version() is None:
        raise missing_onnx2tf()


def missing_onnx2tf() -> MissingDependencyError:
    err = MissingDependencyError("onnx2tf", "dev", "ONNX -> TFLite conversion")
    err.hint = f"Install it with: {INSTALL}"
    return err


def _child_env(tmp: Path) -> dict:
    env = dict(os.environ)
    root = str(Path(workbench.__file__).resolve().parents[1])
    env.update({"TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp),
                "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)})
    return env


def convert_float(handle: ModelHandle, out: Path, shapes: dict[str, list[int]]) -> dict:
    """onnx2tf in a child process, its float32 .tflite copied to ``out``; returns what it reported."""
    with tempfile.TemporaryDirectory(prefix="workbench-onnx2tf-") as tmp:
        t = Path(tmp)
        req = {"src": str(Path(handle.path).resolve()), "work": str(t), "shapes": shapes, "result": str(t / "result.json"),
               # onnx2tf takes every rank-4 input for NCHW: an NHWC one would come out as N,H,C,W behind a TRANSPOSE
               "channel_last_inputs": [s.name for s in handle.inputs if s.layout == "NHWC"]}
        (t / "request.json").write_text(json.dumps(req), encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-m", "workbench.export.onnx_tflite_child", str(t / "request.json")],
                                  env=_child_env(t), cwd=str(t), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolFailure(f"onnx2tf took longer than {CHILD_TIMEOUT_S} s converting '{handle.path}' and was stopped.") from None
        res_file = t / "result.json"
        if not res_file.exists():
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise ToolFailure(f"onnx2tf crashed converting '{handle.path}' (exit code {proc.returncode}): {tail[0][:300]}",
                              hint="--format onnx deploys the model with ONNX Runtime instead.")
        res = json.loads(res_file.read_text(encoding="utf-8"))
        _refuse_unconverted(handle, res)
        Path(out).write_bytes(Path(res["tflite"]).read_bytes())
    return res


def _refuse_unconverted(handle: ModelHandle, res: dict) -> None:
    custom = res.get("custom_nodes") or []
    if res.get("ok") and custom and res.get("tflite"):
        ops = sorted({n["onnx_op"] for n in custom})
        nodes = ", ".join(f"{n['node_name']} ({n['onnx_op']})" for n in custom[:6])
        raise UnsupportedError(f"onnx2tf cannot convert the ONNX op{'s' if len(ops) > 1 else ''} {', '.join(ops)} of "
                               f"'{handle.path}' to a TFLite builtin op (nodes: {nodes}); it would write a CUSTOM op "
                               "that neither LiteRT nor TFLite Micro can run.",
                               hint=f"Replace {', '.join(ops)} in the model's source and export the ONNX again, or deploy "
                                    "the .onnx with ONNX Runtime (--format onnx).")
    if res.get("ok") and res.get("tflite"):
        return
    if res.get("error") == "ModuleNotFoundError" and "onnx2tf" in res.get("message", ""):
        raise missing_onnx2tf()
    unsupported = ((res.get("coverage") or {}).get("unsupported_nodes")) or []
    op = res.get("node_op") or next((n.get("onnx_op") for n in unsupported if n.get("onnx_op")), None) \
        or _op_from_traceback(res.get("traceback", ""))
    what = f"{res.get('error')}: {res.get('message')}"
    if res.get("stage") != "onnx2tf":
        raise RuntimeFailure(f"ONNX Runtime could not prepare '{handle.path}' for conversion ({what[:300]}).",
                             hint="Check that the model runs in ONNX Runtime: workbench benchmark MODEL --runtime ort.")
    if op and res.get("error") in LOWERING_ERRORS:
        node = res.get("node_name") or next((n.get("node_name") for n in unsupported if n.get("onnx_op") == op), None)
        raise UnsupportedError(f"onnx2tf cannot convert the ONNX op {op}" + (f" (node '{node}')" if node else "")
                               + f" of '{handle.path}' to TFLite: {res.get('message', '')[:300]}",
                               hint=f"Rewrite or remove {op} in the model's source and export the ONNX again, or deploy "
                                    "the .onnx with ONNX Runtime (--format onnx).")
    raise RuntimeFailure(f"onnx2tf could not convert '{handle.path}'" + (f" (at an {op} op)" if op else "") + f": {what[:400]}",
                         hint="--format onnx deploys the model with ONNX Runtime instead; --debug shows more.")


def _op_from_traceback(tb: str) -> str | None:
    import re

    m = re.findall(r"in build_(\w+?)_op\b", tb)
    if not m:
        return None
    return "".join(p.capitalize() for p in m[-1].split("_"))


def channel_last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


LAYOUT_NAMES = {3: ("NCW", "NWC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}


def input_layout(handle: ModelHandle, tflite: Path, x: np.ndarray) -> dict:
    """How the .tflite's input relates to the ONNX input: the permutation from ONNX's layout to the file's."""
    from workbench.frontends import load

    want = tuple(load(tflite).inputs[0].shape)
    src = tuple(x.shape[1:])
    rank = len(src) + 1
    perms = [p for p in ({tuple(range(rank)), channel_last(rank)} if rank >= 3 else {tuple(range(rank))})
             if tuple(src[i - 1] for i in p[1:]) == want[1:]]
    if not perms:
        raise RuntimeFailure(f"onnx2tf wrote an input of shape {want} for the ONNX input of shape {(1, *src)} of "
                             f"'{handle.path}': no layout change explains it.", hint="This is a converter defect.")
    if len(perms) > 1:  # equal dimensions: measure which one computes the ONNX model's outputs
        ref = parity.run_model(handle, x[:2])
        errs = {p: float(np.max(np.abs(parity.run_model(tflite, np.ascontiguousarray(np.transpose(x[:2], p))) - ref)))
                for p in perms}
        perms = [min(errs, key=errs.get)]
    perm = perms[0]
    changed = perm != tuple(range(rank))
    names = LAYOUT_NAMES.get(rank, (None, None))
    return {"onnx": names[0] if changed else handle.inputs[0].layout, "tflite": names[1] if changed else handle.inputs[0].layout,
            "permutation": list(perm), "transposed": changed}


def to_tflite_layout(x: np.ndarray | None, layout: dict) -> np.ndarray | None:
    if x is None or not layout["transposed"]:
        return x
    return np.ascontiguousarray(np.transpose(x, layout["permutation"]))


def parity_samples(handle: ModelHandle, shape: list[int], calib: np.ndarray | None) -> np.ndarray:
    if np.issubdtype(np.dtype(handle.inputs[0].dtype), np.integer) and calib is None:  # token / byte ids
        return np.random.default_rng(0).integers(0, 256, (parity.SAMPLES, *shape[1:])).astype(np.float32)
    return parity.parity_inputs(tuple(shape), calib)


def compare(handle: ModelHandle, tflite: Path, x: np.ndarray, layout: dict, what: str, tol=None) -> dict:
    """Every output of the .tflite (inputs transposed to its layout) against ONNX Runtime (inputs as they are)."""
    ref = parity.run_outputs(handle, x)
    cand = parity.run_outputs(tflite, to_tflite_layout(x, layout))
    arrays = []
    for c in cand.arrays:  # a channel-last output of a channel-first ONNX output goes back for the comparison
        shapes = [r.shape for r in ref.arrays]
        if c.ndim >= 3 and c.shape not in shapes:
            back = np.transpose(c, np.argsort(channel_last(c.ndim)))
            c = back if back.shape in shapes else c
        arrays.append(c)
    cand = parity.Outputs(cand.names, tuple(arrays))
    return parity.check_all(ref, cand, what, tol) if tol is not None else parity.measure_all(ref, cand)


def run(job: ExportJob) -> dict:
    from workbench.frontends import load

    h, cfg = job.handle, job.config
    if cfg.needs_calibration and cfg.calibrator != "minmax":
        raise UnsupportedError(f"--calibrator {cfg.calibrator} is not available for ONNX -> {cfg.scheme} TFLite "
                               "(ai-edge-quantizer calibrates with min/max).", hint="Use --calibrator minmax.")
    shapes = input_shapes(h)
    shape = shapes[h.inputs[0].name]
    x = parity_samples(h, shape, job.calib)
    with tempfile.TemporaryDirectory(prefix="workbench-onnx-tflite-") as tmp:
        f = job.out if cfg.scheme == "float" else Path(tmp) / "float.tflite"
        res = convert_float(h, f, shapes)
        layout = input_layout(h, f, x)
        recipe = {"converter": "onnx2tf (flatbuffer_direct backend, no TensorFlow)", "onnx2tf": res.get("onnx2tf"),
                  "scheme": cfg.scheme, "input_shapes": shapes, "input_layout": layout,
                  "float_parity": compare(h, f, x, layout, f"ONNX -> float TFLite of '{h.path}'", parity.FLOAT)}
        if cfg.scheme == "float":
            return recipe
        from workbench.export.tflite_quant import quantize_tflite

        calib = to_tflite_layout(job.calib, layout)
        post = quantize_tflite(load(f), job.out, cfg, calib,
                               where=f"the float .tflite of '{h.path}'", check_fp16=False)
    recipe["post_quantizer"] = post
    what = f"ONNX -> {cfg.scheme} TFLite of '{h.path}'"
    recipe["parity" if cfg.scheme == "fp16" else "agreement_with_onnxruntime"] = (
        compare(h, job.out, x, layout, what, parity.FP16) if cfg.scheme == "fp16" else compare(h, job.out, x, layout, what))
    return recipe


SCHEMES = ("float", *RECIPES)

EXPORTERS.add(("onnx", "tflite"), Exporter(
    run=run, schemes=SCHEMES, calibrators=("minmax",), per_tensor=True, keep_float=True, io_dtypes=("float32", "int8", "int16"),
    precheck=precheck,
    note="onnx2tf converts to a float .tflite with channel-last inputs; every other scheme quantizes it with "
         "ai-edge-quantizer (min/max calibration)."))
