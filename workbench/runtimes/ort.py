"""ONNX Runtime runner (.onnx and .ort)."""

from __future__ import annotations

import numpy as np

from workbench.core.errors import ModelFormatError, RuntimeFailure, UnsupportedError
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import spec_from
from workbench.runtimes.base import RUNNERS, Runner

ORT_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int64)": "int64",
             "tensor(float16)": "float16", "tensor(int32)": "int32"}


class OrtRunner(Runner):
    name = "ort"
    batch_size = 64

    def __init__(self, handle: ModelHandle, threads: int | None = None, optimization: str = "all"):
        if handle.format not in ("onnx", "ort"):
            raise UnsupportedError(f"ONNX Runtime runs .onnx and .ort models; '{handle.path}' is {handle.format}.",
                                   hint="Export it first: workbench export MODEL --format onnx -o model.onnx")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                       "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
        try:
            self.sess = ort.InferenceSession(str(handle.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFormatError(f"ONNX Runtime could not load '{handle.path}': {str(exc).strip().splitlines()[0]}") from None
        self.handle = handle
        self.threads = threads
        ins, outs = self.sess.get_inputs(), self.sess.get_outputs()
        self._name = ins[0].name
        self._fixed_batch = isinstance(ins[0].shape[0], int) if ins[0].shape else False
        if self._fixed_batch:
            self.batch_size = ins[0].shape[0]
        self.inputs = tuple(spec_from(i.name, [d if isinstance(d, int) else None for d in i.shape], ORT_TYPES.get(i.type, "float32"),
                                      layout=h.layout if (h := _match(handle, i.name)) else None) for i in ins)
        self.outputs = tuple(spec_from(o.name, [d if isinstance(d, int) else None for d in o.shape], ORT_TYPES.get(o.type, "float32")) for o in outs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._run_all(x)[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            return list(self.sess.run(None, {self._name: x}))
        except Exception as exc:
            raise RuntimeFailure(f"ONNX Runtime failed to run '{self.handle.path}': {str(exc).strip().splitlines()[0]}") from None

    def info(self) -> dict:
        import onnxruntime as ort

        return {"runtime": "ort", "version": ort.__version__, "threads": self.threads}


def _match(handle: ModelHandle, name: str):
    for s in handle.inputs:
        if s.name == name:
            return s
    return handle.inputs[0] if handle.inputs else None


RUNNERS.add("ort", OrtRunner)
