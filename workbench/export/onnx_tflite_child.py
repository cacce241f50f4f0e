"""The child process of the ONNX -> TFLite conversion (see :mod:`workbench.export.onnx_tflite`).

Run as ``python -m workbench.export.onnx_tflite_child REQUEST.json`` with its working folder set to a
staging folder: onnx2tf prints to stdout, draws progress bars on stderr, writes schema files beside its
output and rewrites the ``.onnx`` it is given in place (its op-naming pass saves over the input), so it
only ever sees a copy, in a folder of its own.

Steps: the input shapes are fixed (a dynamic batch becomes the requested one), ONNX Runtime's basic
graph optimizations fold constants and shape arithmetic into a copy of the graph (standard ONNX ops only;
onnx2tf's own simplifier, onnxsim, is not installed), ONNX shape inference annotates it, and onnx2tf
converts it through its TensorFlow-free ``flatbuffer_direct`` backend with its op-coverage report on.
Without the folding, PaddleOCR's direction classifier (a Shape -> Slice -> Concat -> Reshape before its
Softmax) failed in onnx2tf's Softmax lowering ("axis is out of range. axis=1 normalized=1 rank=1"); with it,
it converts to within 1e-6 of ONNX Runtime.
The outcome goes to the request's ``result`` file as JSON; nothing is printed.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def prepare(src: str, dst: Path, shapes: dict[str, list[int]]) -> None:
    import onnx
    import onnxruntime as ort

    model = onnx.load(src)
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    fixed = dst.with_name("fixed.onnx")
    onnx.save(model, str(fixed))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(fixed), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.shape_inference.infer_shapes(onnx.load(str(dst)), data_prop=True)
    onnx.save(optimized, str(dst))


def main(request_path: str) -> int:
    req = json.loads(Path(request_path).read_text(encoding="utf-8"))
    work = Path(req["work"])
    result: dict = {"ok": False}
    try:
        src = work / "model.onnx"
        prepare(req["src"], src, req["shapes"])
        result["stage"] = "onnx2tf"
        import onnx2tf

        onnx2tf.convert(input_onnx_file_path=str(src), output_folder_path=str(work / "out"), non_verbose=True,
                        not_use_onnxsim=True, report_op_coverage=True, tflite_backend="flatbuffer_direct",
                        keep_nwc_or_nhwc_or_ndhwc_input_names=req.get("channel_last_inputs") or None)
        result = {"ok": True, "onnx2tf": getattr(onnx2tf, "__version__", "?")}
    except BaseException as exc:  # reported to the parent, which raises a typed error (SystemExit included: onnx2tf exits on some errors)
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        result.update({"ok": False, "error": type(exc).__name__, "message": (lines[0] if lines else "")[:600],
                       "node_op": getattr(exc, "node_op", None), "node_name": getattr(exc, "node_name", None),
                       "traceback": traceback.format_exc()[-4000:]})
    report = next(iter(sorted((work / "out").glob("*_op_coverage_report.json"))), None) if (work / "out").is_dir() else None
    if report is not None:
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
            result["coverage"] = {k: data.get(k) for k in ("graph_ops", "unsupported_nodes", "graph_summary", "conversion_error")}
            result["custom_nodes"] = [{"node_name": n.get("node_name"), "onnx_op": n.get("onnx_op"), "message": n.get("message")}
                                      for n in data.get("graph_node_reports") or [] if n.get("dispatch_mode") == "custom"]
        except (OSError, ValueError):
            pass
    tflite = next(iter(sorted((work / "out").glob("*_float32.tflite"))), None) if (work / "out").is_dir() else None
    result["tflite"] = str(tflite) if tflite else None
    Path(req["result"]).write_text(json.dumps(result, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
