"""TensorFlow Lite Micro (the ``tflite-micro`` package): op support, the exact tensor arena
a model needs, and a Runner.

TFLM is never run in this process. Its Python interpreter segfaults with a very small
arena and writes most errors only to the C stderr, so every call goes through a child
process (:mod:`workbench.runtimes.tflm_child`) that is bounded in time, killed on a
timeout, and whose stderr is read to name what went wrong.

* :func:`tflm_supported_ops` asks the installed interpreter which builtin ops its op
  resolver registers (by probing it, see ``tflm_child.probe``), instead of a table that
  would drift from the package.
* :func:`check_tflm` lists what stops a model from running in TFLM, with the op, its index
  and layer, and which quantization scheme would work.
* :func:`measure_arena` returns the smallest arena with which the model allocates and runs
  an inference, found in the child by reading TFLM's own allocation report and bisecting.
  It is measured with the host (64-bit) build and its recording allocator; a 32-bit MCU
  build stores smaller pointers and no recording bookkeeping, so it needs the same or less.
* :class:`TflmRunner` runs a batch of samples in one child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from workbench.core.errors import MissingDependencyError, RuntimeFailure, UnsupportedError
from workbench.frontends.handle import ModelHandle
from workbench.frontends.graph import Graph, Op
from workbench.runtimes.base import RUNNERS, Runner
from workbench.runtimes.tflm_child import parse_failed_node

CHILD_MODULE = "workbench.runtimes.tflm_child"
RESULT_PREFIX = "@@tflm-result "
PHASE_MARK = "@@tflm-phase invoke"  # tflm_child.PHASE_INVOKE: allocation done, invoke started

# Custom op names TFLM ships kernels for, as registered by ``AddCustom("NAME", ...)`` in
# tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro, main branch, 2026).
# Only candidates: tflm_supported_custom_ops() keeps those the installed package registers.
CUSTOM_CANDIDATES = (
    "CIRCULAR_BUFFER", "TFLM_DECODE", "TFLite_Detection_PostProcess", "ethos-u", "SignalDelay", "SignalEnergy",
    "SignalFftAutoScale", "SignalFilterBank", "SignalFilterBankLog", "SignalFilterBankSquareRoot",
    "SignalFilterBankSpectralSubtraction", "SignalFramer", "SignalIrfft", "SignalOverlapAdd", "SignalPCAN",
    "SignalRfft", "SignalStacker", "SignalWindow",
)

# Ops whose weights are a constant input: with float activations and int8 weights they are
# "hybrid" (dynamic-range) ops, which TFLM refuses.
WEIGHTED_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "BATCH_MATMUL": 1,
                "CONV_3D": 1, "UNIDIRECTIONAL_SEQUENCE_LSTM": 2, "SVDF": 1, "EMBEDDING_LOOKUP": 1}

SCHEMES_THAT_RUN = "full int8 (int8 activations and weights, calibrated), int16x8 or float32"


def _package_root() -> str:
    import workbench

    return str(Path(workbench.__file__).resolve().parent.parent)


def _child(args: list[str], timeout: float, what: str) -> dict:
    """Run the child with ``args``; return its JSON result. Raises on timeout, crash, missing package."""
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        proc = subprocess.run([sys.executable, "-m", CHILD_MODULE, *args], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"TFLite Micro did not finish {what} within {timeout:g} s; the process was stopped.",
                             hint="Pass a longer timeout, or check the model with: workbench inspect MODEL") from None
    if proc.returncode < 0:
        sig = -proc.returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        raise RuntimeFailure(f"TFLite Micro crashed ({name}) while {what}.",
                             hint=_first_lines(proc.stderr) or "Re-export the model; if it persists, report it with the model attached.")
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if result is None:
        raise RuntimeFailure(f"TFLite Micro gave no result while {what} (exit code {proc.returncode}).",
                             hint=_first_lines(proc.stderr) or None)
    if result.get("error") == "import":
        raise MissingDependencyError("tflite_micro", "micro", "Running models in TensorFlow Lite Micro")
    return result


def _first_lines(text: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return "\n".join(lines[:n])


@lru_cache(maxsize=1)
def _probe() -> dict:
    return _child(["probe", *CUSTOM_CANDIDATES], timeout=120.0, what="listing the ops its op resolver registers")


def tflm_supported_ops() -> frozenset[str]:
    """Builtin op names (as in ``Op.kind``) the installed TFLM interpreter's op resolver registers."""
    return frozenset(_probe()["builtin"])


def tflm_supported_custom_ops() -> frozenset[str]:
    """Custom op codes (e.g. ``TFLite_Detection_PostProcess``) the installed TFLM registers."""
    return frozenset(_probe()["custom"])


def tflm_version() -> str | None:
    return _probe().get("tflite_micro")


def layer_label(op: Op) -> str:
    """A short layer name for messages: converters join fused names with ';'."""
    name = op.name or ""
    return name.split(";")[0] if name else f"op {op.index}"


def _problem(kind: str, op: Op | None, message: str, scheme: str | None = None) -> dict:
    d = {"kind": kind, "message": message}
    if op is not None:
        d.update({"index": op.index, "op": op.kind, "layer": op.name})
    if scheme:
        d["scheme"] = scheme
    return d


def check_tflm(graph: Graph) -> list[dict]:
    """What stops ``graph`` from running in TFLM: missing ops, custom and Flex ops, float16
    tensors, hybrid (dynamic-range) ops. Each problem is a dict with ``kind``, ``message``
    and, when it concerns one op, ``index``, ``op`` and ``layer``; ``scheme`` says what
    would work instead."""
    if graph.format != "tflite":
        raise UnsupportedError(f"TFLite Micro runs .tflite models; this graph is {graph.format}.",
                               hint="Export it first: workbench export MODEL --format tflite -o model.tflite")
    builtin = tflm_supported_ops()
    custom = tflm_supported_custom_ops()
    problems: list[dict] = []
    for op in graph.ops:
        if op.custom:
            if op.kind.startswith("Flex"):
                problems.append(_problem(
                    "flex_op", op,
                    f"op {op.index} '{op.kind}' (layer '{layer_label(op)}') is a TensorFlow (Flex) op; TFLite Micro runs builtin ops only.",
                    "re-convert without SELECT_TF_OPS (builtin ops only), changing the layer that needs it"))
            elif op.kind not in custom:
                problems.append(_problem(
                    "custom_op", op,
                    f"op {op.index} is the custom op '{op.kind}' (layer '{layer_label(op)}'), which TFLite Micro does not register.",
                    "replace the layer with builtin ops, or register your own kernel for it"))
        elif op.kind not in builtin:
            problems.append(_problem(
                "missing_op", op,
                f"op {op.index} {op.kind} (layer '{layer_label(op)}') has no TFLite Micro kernel.",
                "replace the layer with ops TFLite Micro supports (see workbench inspect for the op list)"))
    f16 = [t for t in graph.tensors if t.dtype == "float16"]
    if f16:
        users = [op for op in graph.ops if any(0 <= i < len(graph.tensors) and graph.tensors[i].dtype == "float16" for i in op.inputs)]
        op = users[0] if users else None
        problems.append(_problem(
            "float16", op,
            f"the model stores {len(f16)} tensor(s) as float16 (float16 quantization); TFLite Micro has no float16 kernels.",
            f"re-export with scheme int8 (or int16x8, or float32): TFLite Micro runs {SCHEMES_THAT_RUN}"))
    for op in graph.ops:
        w = WEIGHTED_OPS.get(op.kind)
        if w is None or w >= len(op.inputs):
            continue
        wt = graph.tensor(op.inputs[w])
        act = graph.op_dtype(op)
        if wt is not None and wt.const and wt.dtype in ("int8", "int4", "uint8") and act in ("float32", "float16"):
            problems.append(_problem(
                "hybrid", op,
                f"op {op.index} {op.kind} (layer '{layer_label(op)}') is a hybrid op: {act} activations with {wt.dtype} weights "
                "(dynamic-range quantization); TFLite Micro refuses hybrid models.",
                f"re-export with scheme int8 (calibrated, int8 activations), int16x8 or float32: TFLite Micro runs {SCHEMES_THAT_RUN}"))
    return problems


def raise_for_problems(problems: list[dict], where: str) -> None:
    """Raise UnsupportedError for the first problem (all are listed in the message)."""
    if not problems:
        return
    lines = [p["message"] for p in problems[:8]]
    more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
    hint = problems[0].get("scheme")
    raise UnsupportedError(f"'{where}' cannot run in TensorFlow Lite Micro: " + " ".join(lines) + more,
                           hint=f"What would work: {hint}." if hint else None)


@dataclass(frozen=True)
class ArenaMeasurement:
    """The arena a model needs in TFLM, measured in a child process."""

    arena_bytes: int  # the smallest arena with which it allocates and runs
    exact: bool  # False: it runs even at the safety floor, so this is an upper bound
    reported_total: int | None  # RecordingMicroAllocator's "Arena allocation total"
    head_bytes: int | None  # non-persistent part: activations and scratch buffers
    tail_bytes: int | None  # persistent part: tensor structs, node data, allocator bookkeeping
    attempts: int
    tflite_micro: str | None

    def to_dict(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "exact": self.exact, "reported_total": self.reported_total, "head_bytes": self.head_bytes,
                "tail_bytes": self.tail_bytes, "attempts": self.attempts, "tflite_micro": self.tflite_micro,
                "method": "smallest arena with which the host TFLM build allocates and invokes (bisection from its allocation report)"}


def measure_arena_details(model_path: str | Path, timeout: float = 120.0, graph: Graph | None = None) -> ArenaMeasurement:
    path = Path(model_path)
    if graph is None:
        from workbench.frontends.tflite_reader import read_tflite

        graph = read_tflite(path)
    raise_for_problems(check_tflm(graph), str(path))
    result = _child(["arena", str(path.resolve())], timeout, f"measuring the tensor arena of '{path}'")
    if "error" in result:
        raise _explain(result, graph, path)
    return ArenaMeasurement(arena_bytes=int(result["arena_bytes"]), exact=bool(result.get("exact", True)), reported_total=result.get("reported_total"),
                            head_bytes=result.get("head"), tail_bytes=result.get("tail"),
                            attempts=int(result.get("attempts", 0)), tflite_micro=result.get("tflite_micro"))


def measure_arena(model_path: str | Path, timeout: float = 120.0) -> int:
    """The exact minimal tensor arena, in bytes, with which TFLM allocates and runs the model."""
    return measure_arena_details(model_path, timeout).arena_bytes


def _explain(result: dict, graph: Graph, path: Path) -> Exception:
    """Turn the child's captured C stderr into a typed error naming the op."""
    import re

    log = result.get("log", "") or ""
    m = re.search(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'", log)
    if m:
        kind = m.group(1)
        ops = [op for op in graph.ops if op.kind == kind]
        where = f" (op {ops[0].index}, layer '{layer_label(ops[0])}')" if ops else ""
        err = UnsupportedError(f"'{path}' uses {kind}{where}, which TensorFlow Lite Micro has no kernel for.",
                               hint="Replace that layer with supported ops and export again.")
        if ops:
            err.problem = _problem("missing_op", ops[0], f"op {ops[0].index} {kind} (layer '{layer_label(ops[0])}') has no TFLite Micro kernel.",
                                   "replace the layer with ops TFLite Micro supports")
        return err
    if "Hybrid models are not supported" in log:
        return UnsupportedError(f"'{path}' is a hybrid (dynamic-range) model, which TensorFlow Lite Micro refuses.",
                                hint=f"Re-export with scheme int8, int16x8 or float32: TFLite Micro runs {SCHEMES_THAT_RUN}.")
    node = parse_failed_node(log)
    if node is not None and node["stage"] == "prepare":
        op = node_op(graph, node)
        idx = op.index if op is not None else node["number"]
        layer = f", layer '{layer_label(op)}'" if op is not None else ""
        detail = _first_lines(log.split("Node ")[0], 2)
        err = UnsupportedError(f"TensorFlow Lite Micro cannot prepare op {idx} {node['op']}{layer} of '{path}'"
                               + (f": {detail}" if detail else "."),
                               hint="The op's data types or options are not supported by its TFLite Micro kernel; "
                                    f"TFLite Micro runs {SCHEMES_THAT_RUN}.")
        if op is not None:
            err.problem = _problem("prepare_failed", op, f"op {idx} {op.kind} (layer '{layer_label(op)}') is refused by its TFLite Micro kernel"
                                   + (f": {detail}" if detail else "."), f"an op and dtype combination TFLite Micro supports ({SCHEMES_THAT_RUN})")
        return err
    if result.get("phase") == "invoke" or result.get("error") == "invoke":
        return _invoke_failure(result, graph, path, log)
    crash = re.search(r"crashed with signal (\d+)", log)
    if crash and result.get("arena_tried"):
        sig = int(crash.group(1))
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return RuntimeFailure(f"TensorFlow Lite Micro crashed ({name}) while preparing '{path}', with every arena up to "
                              f"{result['arena_tried'] >> 20} MiB: one of its kernels rejects this model's parameters.",
                              hint=_degenerate_hint(graph) or "Check the model with: workbench inspect MODEL")
    if result.get("error") == "allocate" and result.get("arena_tried"):
        detail = _first_lines(log) or "no message"
        return RuntimeFailure(f"TensorFlow Lite Micro could not allocate '{path}' even with a {result['arena_tried'] >> 20} MiB arena: {detail}")
    return RuntimeFailure(f"TensorFlow Lite Micro failed on '{path}': {result.get('message') or _first_lines(log) or result.get('error')}")


def _signal_name(log: str) -> str | None:
    import re

    crash = re.search(r"crashed with signal (\d+)", log)
    if not crash:
        return None
    try:
        return signal.Signals(int(crash.group(1))).name
    except ValueError:
        return f"signal {crash.group(1)}"


def node_op(graph: Graph, node: dict) -> Op | None:
    """The op of ``graph`` TFLM means by ``node`` (see :func:`parse_failed_node`): node numbers count
    within a subgraph, so the op at that position of the first subgraph whose op there has that
    name (the main graph first); else the main graph's op at that position."""
    by_subgraph: dict[int, list[Op]] = {}
    for op in graph.ops:
        by_subgraph.setdefault(op.subgraph, []).append(op)
    n = node["number"]
    for k in sorted(by_subgraph):
        ops = by_subgraph[k]
        if n < len(ops) and ops[n].kind == node["op"]:
            return ops[n]
    main = by_subgraph.get(0, [])
    return main[n] if n < len(main) else None


def _invoke_failure(result: dict, graph: Graph, path: Path, log: str) -> RuntimeFailure:
    """The model allocates but TFLM fails (or aborts) while running it: name the phase and the op.

    The op is the node TFLM names in its own message ("Node SQRT (number 246) failed to invoke");
    only when it names none, the child's bisection over truncated models."""
    how = f"crashed ({_signal_name(log)})" if _signal_name(log) else "failed"
    node = result.get("failed_node") or parse_failed_node(log)
    if node is not None:
        op = node_op(graph, node)
        idx = op.index if op is not None else node["number"]
        found = "named by TFLite Micro's own message"
    else:
        idx = result.get("op_index")
        op = graph.ops[idx] if isinstance(idx, int) and 0 <= idx < len(graph.ops) else None
        found = "found by running the model cut after each op"
    where = (f" in op {idx} {op.kind} (layer '{layer_label(op)}'), {found}"
             if op is not None else "; the op could not be singled out")
    detail = _first_lines(log.replace(PHASE_MARK, ""), 2)
    err = RuntimeFailure(f"TensorFlow Lite Micro {how} while running '{path}' (allocation succeeded; the failure is in invoke){where}."
                         + (f" It said: {detail}" if detail else ""),
                         hint=_degenerate_hint(graph, op) or "The op's kernel rejects this model's parameters at run time; "
                         "try another scheme (int8 / float32) or report it to TensorFlow Lite Micro with the model attached.")
    err.phase = "invoke"
    err.arena_bytes = result.get("allocation_arena_bytes")
    err.problem = _problem("runtime_failure", op, f"TFLite Micro {how} in invoke"
                           + (f" at op {idx} {op.kind} (layer '{layer_label(op)}')" if op is not None else ""),
                           "a scheme and op set TFLite Micro runs")
    err.problem["phase"] = "invoke"
    return err


# TFLM's int8 SOFTMAX needs beta * input_scale * 2^26 > 1: CalculateSoftmaxParams (kernels/softmax_common.cc,
# kScaledDiffIntegerBits = 5) hands beta * scale * 2^(31 - 5) to QuantizeMultiplierGreaterThanOne, which
# aborts (TFLITE_CHECK_GT) otherwise.
SOFTMAX_MIN_SCALE = 2.0 ** -26


def _degenerate_hint(graph: Graph, op: Op | None = None) -> str | None:
    """A hint about degenerate quantization only when a SOFTMAX input scale really is below what TFLM accepts."""
    ops = [op] if op is not None and op.kind == "SOFTMAX" else [o for o in graph.ops if o.kind == "SOFTMAX"]
    for o in ops:
        t = graph.tensors[o.inputs[0]]
        beta = float(o.options.get("beta", 1.0) or 1.0)
        if t.dtype == "int8" and t.scale and beta * float(t.scale[0]) <= SOFTMAX_MIN_SCALE:
            return (f"The input of SOFTMAX op {o.index} (layer '{layer_label(o)}') has a degenerate quantization scale "
                    f"{float(t.scale[0]):.3g} (TFLite Micro needs beta x scale > 2^-26 = 1.5e-8): the calibration data "
                    "did not exercise it. Calibrate with real samples and export again.")
    return None


class TflmRunner(Runner):
    """Runs a .tflite model in TensorFlow Lite Micro, all samples of a call in one child process."""

    name = "tflm"
    batch_size = None  # one child per predict() call, whatever the number of samples

    def __init__(self, handle: ModelHandle, arena_size: int | None = None, timeout: float = 600.0):
        if handle.format != "tflite":
            raise UnsupportedError(f"TFLite Micro runs .tflite models; '{handle.path}' is {handle.format}.",
                                   hint="Export it first: workbench export MODEL --format tflite -o model.tflite")
        graph = handle.meta.get("graph")
        if graph is None:
            from workbench.frontends.tflite_reader import read_tflite

            graph = read_tflite(handle.path)
        raise_for_problems(check_tflm(graph), str(handle.path))
        self.handle = handle
        self.graph = graph
        self.arena_size = arena_size
        self.timeout = timeout
        self.inputs = handle.inputs
        self.outputs = handle.outputs
        self.last_arena: int | None = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="workbench-tflm-") as tmp:
            xin = Path(tmp) / "inputs.npy"
            yout = Path(tmp) / "outputs.npy"
            np.save(xin, np.ascontiguousarray(x), allow_pickle=False)
            args = ["run", str(Path(self.handle.path).resolve()), str(xin), str(yout)]
            if self.arena_size:
                args.append(str(int(self.arena_size)))
            result = _child(args, self.timeout, f"running {len(x)} sample(s) of '{self.handle.path}'")
            if "error" in result:
                raise _explain(result, self.graph, Path(self.handle.path))
            self.last_arena = result.get("arena_bytes")
            self.last_invoke_seconds = result.get("invoke_seconds")  # time inside invoke(), for benchmarks
            return np.load(yout, allow_pickle=False)

    def info(self) -> dict:
        return {"runtime": "tflm", "module": "tflite_micro", "version": tflm_version(), "arena_size": self.arena_size or self.last_arena}


RUNNERS.add("tflm", TflmRunner)
