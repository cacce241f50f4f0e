"""Child process for .onnx/.ort models on Linux boards: resident memory of a fresh process that
loads the model in ONNX Runtime (CPU execution provider) and runs one inference.

Run as ``python -m workbench.emulate.ort_child MODEL THREADS [SHAPE]`` (SHAPE: the first input's
shape, comma-separated, for a graph with dynamic dims); prints one JSON line that starts with
``RESULT_PREFIX``. Like :mod:`workbench.emulate.litert_child`, it imports nothing but numpy
and the runtime, so the memory measured is that of a process doing nothing but holding and
running the model.
"""

from __future__ import annotations

import sys

from workbench.emulate.litert_child import _rss, run_main

RESULT_PREFIX = "@@ort-result "
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def measure(path: str, threads: int, shape: list[int] | None = None) -> dict:
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"error": "import", "message": f"onnxruntime is not installed ({exc})"}
    before = _rss()
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        with open(path, "rb") as fh:
            if fh.read(8)[4:8] == b"ORTM":
                so.add_session_config_entry("session.load_model_format", "ORT")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types
        return {"error": "load", "message": str(exc).strip() or type(exc).__name__}
    feeds = {}
    for k, i in enumerate(sess.get_inputs()):
        dims = list(shape) if k == 0 and shape else [d if isinstance(d, int) and d > 0 else 1 for d in (i.shape or [])]
        feeds[i.name] = np.zeros(dims, dtype=ORT_DTYPES.get(i.type, "float32"))
    try:
        sess.run(None, feeds)
    except Exception as exc:
        return {"error": "run", "message": str(exc).strip() or type(exc).__name__}
    after = _rss()
    return {"baseline_rss": before["rss"], "rss": after["rss"], "peak_rss": after["peak"], "module": "onnxruntime",
            "version": ort.__version__, "threads": threads, "inputs": {k: list(v.shape) for k, v in feeds.items()}}


def main(argv: list[str]) -> int:
    def run(a: list[str]) -> dict:
        shape = [int(d) for d in a[2].split(",")] if len(a) > 2 and a[2] else None
        return measure(a[0], int(a[1]) if len(a) > 1 else 1, shape)

    return run_main(argv, "python -m workbench.emulate.ort_child MODEL [THREADS] [SHAPE]", RESULT_PREFIX, run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
