"""``emulate`` for .onnx and .ort models on Linux boards, which run them in ONNX Runtime.

The board's profile describes it as it runs LiteRT; for an ONNX model its runtime becomes
ONNX Runtime's CPU execution provider (``ort``), registered here in the same registries the
built-in runtimes use: op support (:data:`workbench.emulate.compat.CHECKERS`), memory
(:data:`workbench.emulate.memory.MEASURERS`) and the runner for ``--eval``
(:data:`workbench.emulate.emulator.TARGET_RUNNERS`).

* **Op support**: the model is loaded in ONNX Runtime in a fresh process; an op it has no
  kernel for is named from its message.
* **RAM**: the peak resident memory of that process after one inference (:mod:`ort_child`),
  measured on this machine, against the board's RAM less what its OS keeps.
* **Storage**: the model's bytes (with its external data); ONNX Runtime's own install on this
  machine is reported beside it, not added.
* **Latency**: the board's cost model (:mod:`workbench.emulate.cost`) on the graph as ONNX
  Runtime executes it: QuantizeLinear/DequantizeLinear pairs around an op fold into its int8
  kernel. The coefficients are fitted to LiteRT with XNNPACK; ONNX Runtime's kernels are not
  calibrated per board, and the report says so (``workbench profile --remote`` measures it).
* MCU targets run TensorFlow Lite Micro, which takes .tflite only: refused, with the way out.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from workbench.core.errors import MissingDependencyError, ModelFormatError, RuntimeFailure, UnsupportedError
from workbench.emulate import compat, memory
from workbench.emulate.emulator import RUNTIME_INFO, TARGET_RUNNERS
from workbench.emulate.targets import Target
from workbench.frontends.graph import Graph

QDQ = ("QuantizeLinear", "DequantizeLinear")


def onnx_target(handle, tgt: Target) -> tuple[Target, Graph]:
    """The board as it runs ``handle`` (an .onnx/.ort model), and the graph to cost: shapes resolved,
    Q/DQ folded. Refuses MCU and NPU boards, and graphs whose shapes cannot be known."""
    if tgt.kind != "linux" or tgt.npu is not None:
        where = "an NPU board" if tgt.npu is not None else "an MCU"
        raise UnsupportedError(
            f"'{handle.path}' is an ONNX model; {tgt.name} is {where} running TensorFlow Lite Micro, which runs .tflite "
            "models only.",
            hint=f"Convert it first (workbench export {handle.path.name} --format tflite --scheme int8 --calib DATA "
                 "-o model.tflite), or emulate the .onnx on a Linux board (workbench targets list).")
    graph = handle.meta.get("graph")
    if graph is None:
        raise ModelFormatError(f"'{handle.path}': its graph could not be read.")
    from workbench.frontends.onnx_shapes import run_shapes, unknown_dims

    if graph.format == "onnx" and unknown_dims(graph):
        graph, run = run_shapes(handle.path, graph, _given_shape(handle))
        if run.get("cause") == "input_shape":  # (a model ONNX Runtime cannot run gets its verdict from the op check)
            raise UnsupportedError(
                f"'{handle.path}' has dynamic dimensions emulate cannot size ({run.get('reason', 'unknown shapes')}).",
                hint="Fix them first: python -m onnxruntime.tools.make_dynamic_shape_fixed --input_name NAME "
                     "--input_shape 1,3,640,640 model.onnx fixed.onnx (or measure it: workbench profile MODEL --input-shape ...).")
    rt = tgt.runtime
    ort_rt = replace(rt, name="ort", kernels="mlas", code_bytes=ort_install_bytes(), package="onnxruntime")
    return replace(tgt, runtime=ort_rt), as_executed(graph)


def _given_shape(handle):
    opts = handle.meta.get("load_options")
    return getattr(opts, "input_shape", None)


def ort_install_bytes(package: str = "onnxruntime") -> int:
    """Bytes of ``package`` installed on this machine (its wheel's files; 0 when it is not installed)."""
    import importlib.metadata as md

    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        return 0
    total = 0
    for f in dist.files or ():
        try:
            total += os.path.getsize(dist.locate_file(f))
        except OSError:
            continue
    return total


def as_executed(graph: Graph) -> Graph:
    """The graph with QuantizeLinear/DequantizeLinear folded away: a DequantizeLinear's output takes its
    input's integer dtype (a constant's stays constant), so the op reading it costs as an int8 op, as
    ONNX Runtime runs QDQ groups in its quantized kernels."""
    if not any(op.kind in QDQ for op in graph.ops):
        return graph
    tensors = list(graph.tensors)
    for op in graph.ops:
        if op.kind == "DequantizeLinear" and op.inputs and op.outputs:
            src = graph.tensor(op.inputs[0])
            out = graph.tensor(op.outputs[0])
            if src is not None and out is not None and src.dtype in ("int8", "uint8", "int16", "uint16"):
                tensors[out.index] = replace(out, dtype=src.dtype, const=src.const)
    ops = [op for op in graph.ops if op.kind not in QDQ]
    ops = [replace(op, index=k) for k, op in enumerate(ops)]
    return replace(graph, tensors=tuple(tensors), ops=tuple(ops), meta={**graph.meta, "qdq_folded": True})


def measure_ort(model: Path, threads: int, timeout: float = 120.0, shape=None) -> dict:
    """Run :mod:`workbench.emulate.ort_child` on ``model`` in a fresh process."""
    from workbench.emulate.child import run_child

    args = [str(threads)] + ([",".join(str(int(d)) for d in shape)] if shape else [])
    result = run_child("workbench.emulate.ort_child", "ONNX Runtime", model, args, timeout).result
    if result.get("error") == "import":
        raise MissingDependencyError("onnxruntime", "all", "Emulating an ONNX model on a Linux board")
    return result


def _measured(model: str, context: dict) -> dict:
    if "ort" not in context:
        context["ort"] = measure_ort(Path(model), context.get("threads") or 1, context.get("timeout", 120.0),
                                     context.get("input_shape"))
    return context["ort"]


@compat.CHECKERS.register("ort")
def _check(graph: Graph, model_path: str, context: dict) -> compat.Compat:
    import re

    m = _measured(model_path, context)
    notes = ["Latency: the board's cost coefficients are fitted to LiteRT with XNNPACK; ONNX Runtime's CPU kernels are "
             "not calibrated for this board, so the figure is a LiteRT-equivalent estimate (workbench profile MODEL "
             "--remote USER@BOARD measures ONNX Runtime there)."]
    if graph.meta.get("qdq_folded"):
        notes.append("QuantizeLinear/DequantizeLinear pairs are costed as folded into int8 kernels, as ONNX Runtime runs them.")
    if "error" not in m:
        return compat.Compat(unsupported=(), delegated=None, notes=tuple(notes))
    message = (m.get("message") or "").strip()
    first = message.splitlines()[0] if message else "unknown error"
    named = re.search(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'", message)
    if named:
        kind, _, name = named.groups()
        op = next((o for o in graph.ops if o.name == name), None)
        problem = {"kind": "missing_op", "index": op.index if op is not None else None, "op": kind, "layer": name,
                   "message": f"ONNX Runtime has no CPU kernel for the {kind} node '{name}' at this opset: {first[:300]}",
                   "scheme": "re-export at another opset, or replace the op"}
    elif m["error"] == "run":
        problem = {"kind": "runtime_failure", "message": f"ONNX Runtime loads the model but fails to run it: {first[:300]}"}
    else:
        raise ModelFormatError(f"ONNX Runtime could not load '{model_path}': {first[:300]}",
                               hint="Check the file with workbench inspect; it may be corrupt or need a newer onnxruntime.")
    return compat.Compat(unsupported=(problem,), delegated=None, notes=tuple(notes))


@memory.MEASURERS.register("ort")
def _memory(model: Path, graph: Graph, target: Target, context: dict) -> memory.Memory:
    from workbench.frontends.onnx_reader import model_files

    m = _measured(str(model), context)
    if "error" in m:
        raise RuntimeFailure(f"ONNX Runtime could not run '{model}': {(m.get('message') or '').splitlines()[0][:300]}")
    files = model_files(model, graph) if graph.format == "onnx" else [Path(model)]
    return memory.linux_board(
        sum(f.stat().st_size for f in files), target, m,
        runtime_storage_measured="the onnxruntime package installed on this machine",
        measured_with=f"onnxruntime {m.get('version') or ''}".strip(), inputs=m.get("inputs"),
        method="peak resident memory of a fresh Python process that loads the model in ONNX Runtime "
               "(CPU execution provider) and runs one inference, measured on this machine")


@RUNTIME_INFO.register("ort")
def runtime_info(context: dict) -> dict:
    m = context.get("ort") or {}
    return {} if "error" in m or not m else {"module": "onnxruntime", "version": m.get("version"),
                                             "provider": "CPUExecutionProvider", "threads": m.get("threads")}


@TARGET_RUNNERS.register("ort")
def _ort_runner(handle, target: Target, threads: int):
    from workbench.runtimes.ort import OrtRunner

    return OrtRunner(handle, threads=threads)
