"""An .onnx from any framework to .tflite: a documented refusal, with the upstream reasons.

Measured with the pinned set (constraints.txt), in a throwaway environment:

- onnx2tf 1.29 (the maintained ONNX -> TFLite converter) resolves to tensorflow 2.19, onnx 1.19,
  onnxruntime 1.23, numpy 1.26, protobuf 4 and ai-edge-litert 2.1: it would downgrade six pinned
  packages (``pip install --dry-run onnx2tf``).
- onnx2torch 1.5 (ONNX -> PyTorch, then litert-torch) installs without changing a pin, but it
  imports torchvision at import time, and the only torchvision for torch 2.13 on PyPI (0.28.0) is
  built against the CUDA torch: with the pinned CPU torch its operators do not register
  ("operator torchvision::nms does not exist").
- tf2onnx/onnx-tf (ONNX -> TensorFlow) do not install with TensorFlow 2.21 / protobuf 7.

So the refusal names the ways that work: convert from the source framework (PyTorch and Keras
models go to .tflite directly), or run the .onnx in ONNX Runtime (``--format onnx``/``ort``,
int8 included).
"""

from __future__ import annotations

from workbench.export.engine import REFUSALS

REASON = ("no ONNX -> TFLite converter installs with the pinned set: onnx2tf needs tensorflow 2.19, onnx 1.19, "
          "onnxruntime 1.23, numpy 1.26 and protobuf 4 (it would downgrade the pinned versions), and onnx2torch needs a "
          "torchvision that PyPI only builds for the CUDA torch (its operators do not register with the pinned CPU torch)")


REFUSALS[("onnx", "tflite")] = (f"ONNX -> TFLite is not available: {REASON}. Convert from the framework the model came "
                               "from (workbench export model.pt / model.keras --format tflite), or deploy the .onnx with "
                               "ONNX Runtime (--format onnx or ort; quantize --format onnx for int8).")
