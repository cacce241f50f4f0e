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
        return self._run_all(x)[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            y = self.model(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        ys = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, (tuple, list)) else [y]
        return [t.numpy() for t in ys]

    def output_names(self) -> tuple[tuple[str, ...], ...]:
        # output_<i>: the position in what forward() returns, which litert-torch keeps as the signature's keys
        return tuple(tuple(dict.fromkeys((f"output_{i}", s.name))) for i, s in enumerate(self.outputs))

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
        return self._run_all(x)[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        if self.handle.format == "savedmodel":
            sig = self.model.signatures["serving_default"]
            import tensorflow as tf

            out = sig(**{self.inputs[0].name: tf.constant(x, dtype=tf.float32)})
            return [np.asarray(out[o.name]) for o in self.outputs]
        y = self.model(x, training=False)
        ys = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, (tuple, list)) else [y]
        return [np.asarray(t) for t in ys]

    def output_names(self) -> tuple[tuple[str, ...], ...]:
        """A SavedModel: its signature keys. A Keras model: the output layer's name, then ``output_<i>`` (the
        keys TFLiteConverter and ``model.export`` give its outputs), then the tensor's name."""
        if self.handle.format == "savedmodel":
            return tuple((o.name,) for o in self.outputs)
        layers = list(getattr(self.model, "output_names", None) or ())
        return tuple(tuple(dict.fromkeys(((layers[i],) if i < len(layers) else ()) + (f"output_{i}", s.name)))
                     for i, s in enumerate(self.outputs))

    def info(self) -> dict:
        return {"runtime": "keras", "version": self.handle.meta.get("keras_version")}


RUNNERS.add("torch", TorchRunner)
RUNNERS.add("keras", KerasRunner)
