"""Runners: one interface over LiteRT, ONNX Runtime, TFLite Micro, PyTorch and Keras.

``open_runner(model, runtime=None)`` picks the natural runtime for the model's format.
Every runner takes float samples (batch first, in the model's layout) and returns float
outputs: quantized inputs and outputs are converted with the model's own scale and zero point.
"""

from workbench.runtimes.base import RUNNERS, Runner, open_runner, quantize_input, dequantize_output

__all__ = ["RUNNERS", "Runner", "open_runner", "quantize_input", "dequantize_output"]
