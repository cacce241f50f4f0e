"""The child process of the Keras -> ONNX export (see :mod:`workbench.export.keras_onnx`).

Run as ``python -m workbench.export.keras_onnx_child REQUEST.json`` with ``KERAS_BACKEND=torch``
set: Keras fixes its backend once per process, and the parent runs Keras on TensorFlow. It
loads the model (a Keras 3 ``.keras``, or a tf_keras ``.h5`` through Keras 3's own HDF5 reader),
calls it once on zeros so every layer is built, and writes the ONNX file with Keras's public
``model.export(path, format="onnx")`` (torch.onnx's dynamo exporter under the hood) at
batch size 1. The outcome goes to the request's ``result`` file as JSON; nothing is printed.
"""

from __future__ import annotations

import json
import sys
import traceback


def main(request_path: str) -> int:
    req = json.loads(open(request_path, encoding="utf-8").read())
    result: dict = {"ok": False}
    try:
        import numpy as np
        import keras

        if keras.backend.backend() != "torch":
            raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()}, expected torch")
        model = keras.saving.load_model(req["src"], compile=False, safe_mode=not req["trust"])
        specs = [keras.InputSpec(shape=tuple(s["shape"]), dtype="float32", name=s["name"]) for s in req["inputs"]]
        zeros = [np.zeros(tuple(s["shape"]), dtype=np.float32) for s in req["inputs"]]
        model(zeros if len(zeros) > 1 else zeros[0])
        model.export(req["out"], format="onnx", input_signature=[specs] if len(specs) > 1 else specs,
                     verbose=False, opset_version=req.get("opset"))
        result = {"ok": True, "keras": keras.__version__, "backend": keras.backend.backend()}
    except Exception as exc:  # reported to the parent, which raises a typed error
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        result = {"ok": False, "error": type(exc).__name__, "message": (lines[0] if lines else "")[:600],
                  "traceback": traceback.format_exc()[-4000:]}
    with open(req["result"], "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
