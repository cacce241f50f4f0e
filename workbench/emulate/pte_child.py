"""Child process for .pte programs on Linux boards: resident memory of a fresh process that loads the
program in ExecuTorch's runtime (XNNPACK backend) and runs ``forward`` once on zeros.

Run as ``python -m workbench.emulate.pte_child MODEL THREADS``; prints one JSON line that starts with
``RESULT_PREFIX``. ExecuTorch's Python runtime imports torch, so the baseline (taken after that import)
and the peak include torch's libraries: a C++ runner on the board needs less. The runtime logs a
missing operator to the process's stderr, which the parent reads.
"""

from __future__ import annotations

import sys

from workbench.emulate.litert_child import _rss, run_main

RESULT_PREFIX = "@@pte-result "


def measure(path: str, threads: int) -> dict:
    start = _rss()
    try:
        import torch
        from executorch import runtime as et_runtime
    except ImportError as exc:
        return {"error": "import", "message": f"executorch's runtime is not installed ({exc})"}
    from workbench.frontends.pte_reader import SCALAR_TYPES
    from workbench.runtimes.executorch import NUMPY_TO_TORCH, thread_pool

    pool = thread_pool(threads)
    before = _rss()
    try:
        program = et_runtime.Runtime.get().load_program(path)
        method = program.load_method("forward")
    except Exception as exc:  # the runtime raises its own types
        return {"error": "load", "message": str(exc).strip() or type(exc).__name__}
    meta = method.metadata
    inputs = []
    for i in range(meta.num_inputs()):
        info = meta.input_tensor_meta(i)
        dtype = NUMPY_TO_TORCH.get(SCALAR_TYPES.get(int(info.dtype()), "float32"), "float32")
        inputs.append(torch.zeros(tuple(int(d) for d in info.sizes()), dtype=getattr(torch, dtype)))
    try:
        method.execute(inputs)
    except Exception as exc:
        return {"error": "run", "message": str(exc).strip() or type(exc).__name__}
    after = _rss()
    import importlib.metadata as md

    return {"interpreter_rss": start["rss"], "baseline_rss": before["rss"], "rss": after["rss"], "peak_rss": after["peak"],
            "module": "executorch.runtime", "version": md.version("executorch"), "torch": torch.__version__,
            "threads": pool, "inputs": [list(t.shape) for t in inputs]}


def main(argv: list[str]) -> int:
    return run_main(argv, "python -m workbench.emulate.pte_child MODEL [THREADS]", RESULT_PREFIX,
                    lambda a: measure(a[0], int(a[1]) if len(a) > 1 else 1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
