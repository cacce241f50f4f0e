"""Runners for the original models in their own frameworks (the float reference)."""

from __future__ import annotations

import numpy as np

from workbench.core.errors import UnsupportedError
from workbench.frontends.handle import ModelHandle
from workbench.runtimes.base import RUNNERS, Runner


class TorchRunner(Runner):
    name = "torch"
    batch_size = 256

    def __init__(self, handle: ModelHandle, threads: int | None = None):
        if handle.framework != "torch":
            raise UnsupportedError(f"The torch runtime runs PyTorch models; '{handle.path}' is {handle.format}.")
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = handle.obj
        self.inputs, self.outputs = handle.inputs, handle.outputs
        if handle.format in ("exported_program", "torchscript") and handle.inputs and handle.inputs[0].shape:
            self.batch_size = handle.inputs[0].shape[0] or 1  # traced graphs are specialised to their batch size

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            y = self.model(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        y = y[0] if isinstance(y, (tuple, list)) else y
        return y.numpy()

    def info(self) -> dict:
        return {"runtime": "torch", "version": self.torch.__version__}


class KerasRunner(Runner):
    name = "keras"
    batch_size = 256

    def __init__(self, handle: ModelHandle, threads: int | None = None):
        if handle.framework != "keras":
            raise UnsupportedError(f"The keras runtime runs Keras models; '{handle.path}' is {handle.format}.")
        self.handle = handle
        self.model = handle.obj
        self.inputs, self.outputs = handle.inputs, handle.outputs

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.handle.format == "savedmodel":
            sig = self.model.signatures["serving_default"]
            import tensorflow as tf

            out = sig(**{self.inputs[0].name: tf.constant(x, dtype=tf.float32)})
            return np.asarray(out[self.outputs[0].name])
        y = self.model(x, training=False)
        y = y[0] if isinstance(y, (tuple, list)) else y
        return np.asarray(y)

    def info(self) -> dict:
        return {"runtime": "keras", "version": self.handle.meta.get("keras_version")}


RUNNERS.add("torch", TorchRunner)
RUNNERS.add("keras", KerasRunner)
