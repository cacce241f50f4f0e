"""``emulate`` for ExecuTorch programs (.pte) on Linux boards, which run them in ExecuTorch's runtime
with the XNNPACK backend.

The board's profile describes it as it runs LiteRT; for a .pte its runtime becomes ExecuTorch
(``executorch``), registered here in the registries the other runtimes use: op support
(:data:`workbench.emulate.compat.CHECKERS`), memory (:data:`workbench.emulate.memory.MEASURERS`),
the runner for ``--eval`` (:data:`workbench.emulate.emulator.TARGET_RUNNERS`) and the report's
runtime facts (:data:`workbench.emulate.emulator.RUNTIME_INFO`).

* **Graph**: read from the .pte without torch (:func:`workbench.frontends.xnnpack_graph.program_graph`):
  the XNNPACK delegate's own nodes, as the TFLite ops XNNPACK runs for them in LiteRT, with their
  MACs; ops ExecuTorch runs outside the delegate keep their operator names.
* **Latency**: the board's cost model (:mod:`workbench.emulate.cost`). ExecuTorch's XNNPACK backend
  runs XNNPACK's kernels, the library LiteRT's XNNPACK delegate runs and the coefficients are fitted
  to, so delegated ops are priced like their LiteRT counterparts; an op outside the delegate runs in
  ExecuTorch's portable kernels, which the fit does not cover: it gets the profile's undelegated
  factor and the report names it.
* **Op support**: the program is loaded in ExecuTorch's runtime in a fresh process; an operator the
  runtime has no kernel for is named from its log.
* **RAM**: the peak resident memory of that process after one inference (:mod:`pte_child`). ExecuTorch's
  Python runtime imports torch, so the figure includes torch's libraries (the breakdown gives the
  process before and after loading the program); a C++ runner on the board needs less.
* MCU targets: ExecuTorch's MCU firmware is not built by this tool (its sources are not available
  offline): refused, with the way out.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from workbench.core.errors import MissingDependencyError, ModelFormatError, RuntimeFailure, UnsupportedError
from workbench.emulate import compat, memory
from workbench.emulate.emulator import RUNTIME_INFO, TARGET_RUNNERS
from workbench.emulate.ort_board import ort_install_bytes
from workbench.emulate.targets import Target
from workbench.frontends.graph import Graph

RUNTIME_PACKAGES = ("executorch", "torch")  # ExecuTorch's Python runtime links libtorch


def pte_target(handle, tgt: Target) -> tuple[Target, Graph]:
    """The board as it runs ``handle`` (a .pte), and the graph to cost. Refuses MCU and NPU boards."""
    if tgt.kind != "linux" or tgt.npu is not None:
        where = "an NPU board" if tgt.npu is not None else "an MCU"
        raise UnsupportedError(
            f"'{handle.path}' is an ExecuTorch program; {tgt.name} is {where}, and ExecuTorch firmware for MCUs is not "
            "built by this tool yet (ExecuTorch's MCU runtime sources are not available offline).",
            hint="Export the model to .tflite for the MCU (workbench export MODEL.pt --format tflite --scheme int8), "
                 "or emulate the .pte on a Linux board (workbench targets list).")
    from workbench.frontends.xnnpack_graph import program_graph

    graph = program_graph(handle.path)
    rt = replace(tgt.runtime, name="executorch", kernels="xnnpack", package="executorch",
                 code_bytes=sum(ort_install_bytes(p) for p in RUNTIME_PACKAGES))
    return replace(tgt, runtime=rt), graph


def measure_pte(model: Path, threads: int, timeout: float = 120.0) -> dict:
    """Run :mod:`workbench.emulate.pte_child` on ``model`` in a fresh process; a failed load keeps the runtime's
    log (``log``), which names the operator it lacks."""
    from workbench.emulate.child import run_child

    child = run_child("workbench.emulate.pte_child", "ExecuTorch's runtime", model, [str(threads)], timeout)
    result = child.result
    if result.get("error") == "import":
        raise MissingDependencyError("executorch", "executorch", "Emulating an ExecuTorch program on a Linux board")
    if "error" in result:
        result["log"] = child.stderr[-4000:]
    return result


def _measured(model: str, context: dict) -> dict:
    if "executorch" not in context:
        context["executorch"] = measure_pte(Path(model), context.get("threads") or 1, context.get("timeout", 120.0))
    return context["executorch"]


def missing_operators(log: str) -> list[str]:
    """Operators ExecuTorch's runtime logs as having no registered kernel."""
    return list(dict.fromkeys(re.findall(r"Missing operator:\s*\[\d+\]\s*([\w:.]+)", log)))


@compat.CHECKERS.register("executorch")
def _check(graph: Graph, model_path: str, context: dict) -> compat.Compat:
    m = _measured(model_path, context)
    delegated = frozenset(graph.meta.get("delegated", ()))
    notes = ["Latency: ExecuTorch's XNNPACK backend runs XNNPACK's kernels, the library LiteRT's XNNPACK delegate "
             "runs and this board's cost coefficients are fitted to, so delegated ops are priced like their LiteRT "
             "counterparts (workbench profile MODEL --remote USER@BOARD measures the program there)."]
    outside = [op for op in graph.ops if op.index not in delegated]
    if outside:
        kinds = sorted({f"{op.kind} ({graph.op_dtype(op)})" for op in outside})
        notes.append(f"{len(outside)} of {len(graph.ops)} ops run outside the XNNPACK delegate, in ExecuTorch's portable "
                     f"kernels, which the cost fit does not cover (priced with the board's undelegated factor): "
                     + ", ".join(kinds[:8]) + ("" if len(kinds) <= 8 else ", ..."))
    notes.append("RAM: ExecuTorch's Python runtime imports torch, so the measured process holds torch's libraries; a C++ "
                 "runner on the board needs less (the breakdown gives the process before and after loading the program).")
    if "error" not in m:
        return compat.Compat(unsupported=(), delegated=delegated, notes=tuple(notes))
    message = (m.get("message") or "").strip()
    first = message.splitlines()[0] if message else "unknown error"
    missing = missing_operators(m.get("log", "") + "\n" + message)
    if missing:
        problems = []
        for name in missing:
            op = next((o for o in graph.ops if o.kind == name), None)
            problems.append({"kind": "missing_op", "index": op.index if op is not None else None, "op": name,
                             "layer": name, "message": f"ExecuTorch's runtime has no kernel registered for {name}.",
                             "scheme": "lower the op to XNNPACK (rewrite the layer), or build the runtime with its kernel"})
        return compat.Compat(unsupported=tuple(problems), delegated=delegated, notes=tuple(notes))
    if m["error"] == "run":
        problem = {"kind": "runtime_failure", "message": f"ExecuTorch loads the program but fails to run it: {first[:300]}"}
        return compat.Compat(unsupported=(problem,), delegated=delegated, notes=tuple(notes))
    raise ModelFormatError(f"ExecuTorch's runtime could not load '{model_path}': {first[:300]}",
                           hint="The file may be corrupt or from another ExecuTorch version; --debug and workbench inspect "
                                "say more.")


@memory.MEASURERS.register("executorch")
def _memory(model: Path, graph: Graph, target: Target, context: dict) -> memory.Memory:
    m = _measured(str(model), context)
    if "error" in m:
        raise RuntimeFailure(f"ExecuTorch could not run '{model}': {(m.get('message') or '').splitlines()[0][:300]}")
    return memory.linux_board(
        Path(model).stat().st_size, target, m,
        runtime_storage_measured="the executorch and torch packages installed on this machine",
        process_interpreter_rss_bytes=m["interpreter_rss"],
        program_rss_bytes=max(0, int(m["rss"]) - int(m["baseline_rss"])),
        measured_with=f"executorch {m.get('version') or ''} (torch {m.get('torch') or '?'})", inputs=m.get("inputs"),
        method="peak resident memory of a fresh Python process that imports ExecuTorch's runtime (and "
               "torch with it), loads the program and runs one inference, measured on this machine")


@RUNTIME_INFO.register("executorch")
def runtime_info(context: dict) -> dict:
    m = context.get("executorch") or {}
    return {} if "error" in m or not m else {"module": m.get("module"), "version": m.get("version"),
                                             "backend": "XnnpackBackend", "threads": m.get("threads")}


@TARGET_RUNNERS.register("executorch")
def _pte_runner(handle, target: Target, threads: int):
    from workbench.runtimes.executorch import ExecuTorchRunner

    return ExecuTorchRunner(handle, threads=threads)
