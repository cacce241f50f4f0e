"""Child process for LiteRT boards: resident memory with the model loaded, and which ops the
XNNPACK delegate takes.

Run as ``python -m workbench.emulate.litert_child MODEL THREADS``; prints one JSON line that
starts with ``RESULT_PREFIX``. A fresh process is used so that the memory measured is that
of a process doing nothing but holding and running the model: Python, numpy, the LiteRT
library, the interpreter with its tensors, and one inference's worth of touched pages.

Delegation is read from the interpreter's node list: XNNPACK replaces each partition of ops
it takes by one ``DELEGATE`` node whose inputs and outputs bound the partition; the original
ops reached walking back from a delegate node's outputs to its inputs are the ones it took.
"""

from __future__ import annotations

import json
import os
import sys

RESULT_PREFIX = "@@litert-result "


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss() -> dict:
    rss = _status_kib("VmRSS")
    hwm = _status_kib("VmHWM")
    if rss is None:  # not Linux: peak from getrusage (bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak if sys.platform == "darwin" else peak * 1024
        return {"rss": peak, "peak": peak}
    return {"rss": rss * 1024, "peak": (hwm or rss) * 1024}


def delegated_ops(details: list[dict], n_original: int) -> list[int]:
    """Indices of original ops that a DELEGATE node replaced (see the module docstring)."""
    producer = {}
    for d in details:
        if d["index"] < n_original:
            for t in d["outputs"]:
                producer[int(t)] = d
    taken: set[int] = set()
    for d in details:
        if d["op_name"] != "DELEGATE":
            continue
        bound = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen = set()
        while stack:
            t = stack.pop()
            if t in seen or t in bound:
                continue
            seen.add(t)
            p = producer.get(t)
            if p is None or p["index"] in taken:
                continue
            taken.add(p["index"])
            stack.extend(int(x) for x in p["inputs"] if int(x) >= 0)
    return sorted(taken)


def measure(path: str, threads: int) -> dict:
    import numpy as np

    try:
        from ai_edge_litert import interpreter as mod

        module = "ai_edge_litert"
    except ImportError:
        try:
            from tflite_runtime import interpreter as mod

            module = "tflite_runtime"
        except ImportError:
            return {"error": "import", "message": "no LiteRT runtime (ai_edge_litert or tflite_runtime) is installed"}
    before = _rss()
    saved = os.dup(2)  # "Created TensorFlow Lite XNNPACK delegate for CPU." goes to fd 2
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        interp = mod.Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        interp.invoke()
    except (ValueError, RuntimeError) as exc:
        return {"error": "load", "message": str(exc).strip() or type(exc).__name__}
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    after = _rss()
    get_details = getattr(interp, "_get_ops_details", None)  # the only view of the execution plan; tested
    if get_details is not None:
        details = get_details()
        n_original = sum(1 for d in details if d["op_name"] != "DELEGATE")
        n_delegates = sum(1 for d in details if d["op_name"] == "DELEGATE")
        delegated = delegated_ops(details, n_original)
    else:
        n_original, n_delegates, delegated = None, None, None
    version = None
    try:
        import importlib.metadata as md

        version = md.version("ai-edge-litert" if module == "ai_edge_litert" else "tflite-runtime")
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {"baseline_rss": before["rss"], "rss": after["rss"], "peak_rss": after["peak"],
            "delegated": delegated, "ops": n_original, "partitions": n_delegates,
            "module": module, "version": version, "threads": threads}


def run_main(argv: list[str], usage: str, prefix: str, run) -> int:
    """The measuring children's command line: ``run(argv)`` -> one JSON line after ``prefix`` (exit 0), or the
    usage when no model is given (exit 2). Kept here, beside ``_rss``, so a child imports nothing else."""
    if len(argv) < 1:
        sys.stdout.write(f"usage: {usage}\n")
        return 2
    sys.stdout.write(prefix + json.dumps(run(argv)) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    return run_main(argv, "python -m workbench.emulate.litert_child MODEL [THREADS]", RESULT_PREFIX,
                    lambda a: measure(a[0], int(a[1]) if len(a) > 1 else 1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
