from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from workbench.frontends.handle import ModelHandle, TensorSpec
from workbench.core.registry import Registry

RUNNERS: Registry[Callable[..., "Runner"]] = Registry("runtime")

# The runtime a format runs in when none is named.
DEFAULT_RUNTIME = {"tflite": "litert", "onnx": "ort", "ort": "ort", "keras": "keras", "h5": "keras",
                   "savedmodel": "keras", "torchscript": "torch", "exported_program": "torch", "state_dict": "torch",
                   "pickle": "torch", "frozen_graph": "tf1-session",
                   "savedmodel_tf1": "tf1-session", "pte": "executorch"}


class Runner:
    """Base class. Subclasses set ``name``, ``inputs``, ``outputs`` and implement ``_run``."""

    name = "runner"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batch_size: int | None = 1  # samples per call; None: any

    def _run(self, x: np.ndarray) -> np.ndarray:  # raw in, raw first output
        raise NotImplementedError

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Raw in, every raw output in ``outputs`` order. A runner that can only fetch its first output
        keeps this default, and ``predict_all`` then gives that one."""
        return [self._run(x)]

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Float outputs (first output) for float samples ``x``."""
        bs = batch_size or self.batch_size or len(x)
        outs = []
        spec_in = self.inputs[0]
        for i in range(0, len(x), bs):
            xb = quantize_input(np.asarray(x[i : i + bs]), spec_in)
            outs.append(dequantize_output(self._run(xb), self.outputs[0]))
        return np.concatenate(outs)

    def predict_all(self, x: np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
        """Float outputs of every output the runner can fetch (``outputs`` order) for float samples ``x``."""
        bs = batch_size or self.batch_size or len(x)
        chunks: list[list[np.ndarray]] = []
        spec_in = self.inputs[0]
        for i in range(0, len(x), bs):
            xb = quantize_input(np.asarray(x[i : i + bs]), spec_in)
            specs = self.outputs
            chunks.append([dequantize_output(y, specs[k]) if k < len(specs) else np.asarray(y, dtype=np.float32)
                           for k, y in enumerate(self._run_all(xb))])
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def output_names(self) -> tuple[tuple[str, ...], ...]:
        """For each output ``predict_all`` gives, the names it goes by (first: the one to show). Outputs are
        paired by these names across runtimes: a converter may reorder a model's outputs but keeps
        its signature names (``output_0``, a Keras layer's name, a SavedModel key)."""
        return tuple((s.name,) for s in self.outputs)

    def info(self) -> dict:
        return {"runtime": self.name}

    def close(self) -> None:
        pass


def quantize_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    dt = np.dtype(spec.dtype)
    if spec.quantized and np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        q = np.round(x / spec.scale) + spec.zero_point
        return np.clip(q, info.min, info.max).astype(dt)
    return x.astype(dt, copy=False)


def dequantize_output(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantized and np.issubdtype(np.asarray(y).dtype, np.integer):
        return (y.astype(np.float32) - spec.zero_point) * spec.scale
    return np.asarray(y, dtype=np.float32)


def open_runner(model: str | Path | ModelHandle, runtime: str | None = None, **options) -> Runner:
    from workbench.frontends import load

    handle = model if isinstance(model, ModelHandle) else load(model)
    _register_builtin()
    name = runtime or DEFAULT_RUNTIME.get(handle.format)
    return RUNNERS.get(name)(handle, **options)


_done = False


def _register_builtin() -> None:
    global _done
    if not _done:
        from workbench.runtimes import executorch, frameworks, litert, ort, tf1, tflm  # noqa: F401

        _done = True
