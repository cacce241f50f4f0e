"""ExecuTorch runner (.pte): the ``forward`` method in ExecuTorch's runtime (``executorch.runtime``),
XNNPACK-delegated parts in XNNPACK, the rest in ExecuTorch's CPU kernels.

Models exported by workbench take and return float tensors (an int8 program quantizes inside), so
``predict`` feeds the samples as they are, one at a time (the method's shapes are fixed at export).
``threads`` resizes the runtime's process-wide thread pool, which XNNPACK's kernels share; without it
the pool keeps its default (one thread per core).
"""

from __future__ import annotations

import numpy as np

from workbench.core.errors import RuntimeFailure, UnsupportedError
from workbench.frontends.handle import ModelHandle
from workbench.runtimes.base import RUNNERS, Runner

NUMPY_TO_TORCH = {"float32": "float32", "int8": "int8", "uint8": "uint8", "int32": "int32", "int64": "int64",
                  "float16": "float16", "bool": "bool"}


def thread_pool(threads: int | None) -> int | None:
    """Set the ExecuTorch thread pool to ``threads`` (when given); returns the pool's size."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return None
    if threads:
        portable_lib._unsafe_reset_threadpool(int(threads))
    return int(portable_lib._threadpool_get_thread_count())


class ExecuTorchRunner(Runner):
    name = "executorch"
    batch_size = 1

    def __init__(self, handle: ModelHandle, threads: int | None = None):
        if handle.format != "pte":
            raise UnsupportedError(f"ExecuTorch runs .pte programs; '{handle.path}' is {handle.format}.",
                                   hint="Export it first: workbench export MODEL --format executorch -o model.pte")
        from workbench.frontends.executorch_models import method_specs, open_program

        import torch

        self.torch = torch
        self.threads = thread_pool(threads)
        self.program, self.method = open_program(handle.path)
        self.handle = handle
        self.inputs, self.outputs = method_specs(self.method)
        if not self.inputs:
            raise UnsupportedError(f"The ExecuTorch program '{handle.path}' takes no tensor input.")
        self._dtype = getattr(torch, NUMPY_TO_TORCH.get(self.inputs[0].dtype, "float32"))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._run_all(x)[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = []
        for sample in x:
            t = self.torch.from_numpy(np.ascontiguousarray(sample[None])).to(self._dtype)
            try:
                ys = self.method.execute([t])
            except Exception as exc:
                msg = str(exc).strip().splitlines()
                raise RuntimeFailure(f"ExecuTorch failed to run '{self.handle.path}': {(msg[0] if msg else type(exc).__name__)[:300]}",
                                     hint="Check the input shape against `workbench inspect`; --debug shows the runtime's log.") from None
            arrays = [y.numpy() if hasattr(y, "numpy") else np.asarray(y) for y in ys]
            if not outs:
                outs = [[] for _ in arrays]
            for k, a in enumerate(arrays):
                outs[k].append(a)
        return [np.concatenate(o) for o in outs]

    def info(self) -> dict:
        import importlib.metadata

        return {"runtime": "executorch", "version": importlib.metadata.version("executorch"), "threads": self.threads}


RUNNERS.add("executorch", ExecuTorchRunner)
