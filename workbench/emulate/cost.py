"""The latency model: a documented estimate per op, from the graph and a target profile.

For every op of the graph::

    work(op)   = class_factor(op) * cycles_per_mac[dtype]  * MACs(op)
               +                    cycles_per_byte[dtype] * activation_bytes(op)
               +            element_cycles[kind(op)]      * activation_elements(op)

    cycles(op) = op_overhead_cycles + work(op) / speedup(op)
    time(op)   = cycles(op) / clock                        (x undelegated_factor, see below)

* ``MACs`` come from :meth:`workbench.frontends.graph.Graph.macs` (convolutions, fully connected,
  matmuls; pooling counts its window); every other op has 0 MACs.
* ``activation_bytes`` is the data an op moves: the bytes of its non-constant inputs and
  of its outputs (only the outputs for SHAPE and RANK, which read no data). It carries what does not scale with MACs: im2col copies, requantizing each
  output, elementwise ops, reshapes, memory traffic.
* ``dtype`` is the dtype the op computes in (``int8``, ``int16`` for 16x8 models, ``float32``),
  from :meth:`Graph.op_dtype`; other integer types (int32 shape arithmetic) use the int8 row.
* ``class_factor`` scales the MAC term of an op class (``depthwise``, ``fully_connected``);
  1 when the profile does not set it.
* ``element_cycles`` (per op kind, e.g. ``HARD_SWISH``, ``LOGISTIC``, ``MUL``, ``ADD``, ``MEAN``):
  cycles per activation element the op reads or writes (``activation_elements``, counted like
  ``activation_bytes``), for the ops whose cost is neither MACs nor plain data movement:
  activation functions, the elementwise products and sums of squeeze-excite blocks and
  residuals, global pooling. 0 for a kind the profile does not list. ONNX ops use the entry of
  their TFLite kind (``Mul`` -> ``MUL``, ``HardSwish`` -> ``HARD_SWISH``, ...).
* Threads (LiteRT boards): ops that XNNPACK parallelises (convolutions, fully connected,
  pooling, matmul) get ``speedup = 1 + (threads - 1) * parallel_efficiency * u / (u + parallel_grain)``
  times faster, where ``u`` = MACs + output elements is the op's size: an op much smaller than
  ``parallel_grain`` is not sped up by threads (too little work to split), a much larger one gets
  the full ``1 + (threads - 1) * parallel_efficiency``. ``parallel_grain`` 0 (the default) gives
  every parallel op the full speed-up. TFLM is single-threaded.
* LiteRT boards: an op the XNNPACK delegate does not take runs in LiteRT's builtin kernels,
  ``undelegated_factor`` times slower. ExecuTorch programs (.pte) on the same boards: an op outside the
  XNNPACK delegate runs in ExecuTorch's portable kernels and gets the same factor (not fitted to them).

The coefficients of each profile are fitted to published measurements (see the profile's
``cost.calibration`` and ``sources``, and ``scripts/bench_emulate.py``, which reproduces the
fits and prints the errors).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.emulate.targets import Target
from workbench.frontends.graph import Graph, Op

# Op class of each op kind that has its own factor in a profile's ``class_factors``.
OP_CLASSES = {
    "DEPTHWISE_CONV_2D": "depthwise",
    "FULLY_CONNECTED": "fully_connected",
    "BATCH_MATMUL": "fully_connected",
    "CONV_2D": "conv",
    "TRANSPOSE_CONV": "conv",
    "CONV_3D": "conv",
    "AVERAGE_POOL_2D": "pool",
    "MAX_POOL_2D": "pool",
    # ONNX op types (.onnx/.ort on Linux boards); a Conv whose groups equal its channels is depthwise (op_class)
    "Conv": "conv", "ConvTranspose": "conv", "Gemm": "fully_connected", "MatMul": "fully_connected",
    "AveragePool": "pool", "MaxPool": "pool",
}

# ONNX op types whose ``element_cycles`` entry is the TFLite kind's (profiles key element costs by TFLite names).
ELEMENT_KINDS = {"HardSwish": "HARD_SWISH", "Sigmoid": "LOGISTIC", "Mul": "MUL", "Add": "ADD", "ReduceMean": "MEAN",
                 "GlobalAveragePool": "MEAN"}

# Ops XNNPACK splits across threads.
PARALLEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV",
                          "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN",
                          "Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "MaxPool", "GlobalAveragePool"})
# Runtimes that split PARALLEL_OPS across threads (XNNPACK in LiteRT and in ExecuTorch, MLAS in ONNX Runtime).
MULTI_THREADED = ("litert", "ort", "executorch")
# Runtimes whose ops run either in the XNNPACK delegate or, ``undelegated_factor`` times slower, outside it.
DELEGATING = ("litert", "executorch")

DTYPE_ROWS = {"int8": "int8", "uint8": "int8", "int16": "int16", "float32": "float32", "float16": "float32",
              "bfloat16": "float32", "float64": "float32"}


def dtype_row(dtype: str) -> str:
    return DTYPE_ROWS.get(dtype, "int8")


# Ops that read only their input's shape, not its data.
METADATA_OPS = frozenset({"SHAPE", "RANK"})


def activation_bytes(graph: Graph, op: Op) -> int:
    total = 0
    for i in (() if op.kind in METADATA_OPS else op.inputs):
        t = graph.tensor(i)
        if t is not None and not t.const:
            total += t.nbytes or 0
    for i in op.outputs:
        t = graph.tensor(i)
        if t is not None:
            total += t.nbytes or 0
    return int(total * getattr(op, "repeat", 1))  # a loop body's op moves its data once per iteration


def activation_elements(graph: Graph, op: Op) -> int:
    """Elements of the non-constant inputs and of the outputs (the element count behind :func:`activation_bytes`)."""
    total = 0
    for i in (() if op.kind in METADATA_OPS else op.inputs):
        t = graph.tensor(i)
        if t is not None and not t.const:
            total += t.elements or 0
    total += graph.out_elements(op)
    return int(total * getattr(op, "repeat", 1))


def parallel_units(graph: Graph, op: Op) -> int:
    """An op's size for thread scaling: MACs + output elements."""
    return graph.macs(op) + graph.out_elements(op) * getattr(op, "repeat", 1)


def weight_bytes(graph: Graph, op: Op) -> int:
    return int(sum((graph.tensor(i).nbytes or 0) for i in op.inputs if graph.tensor(i) is not None and graph.tensor(i).const))


@dataclass(frozen=True)
class OpCost:
    index: int
    name: str
    kind: str
    dtype: str
    macs: int
    bytes: int  # activation bytes moved
    weight_bytes: int
    cycles: float
    latency_ms: float
    delegated: bool | None  # LiteRT: taken by XNNPACK; None for TFLM

    def to_dict(self) -> dict:
        d = {"index": self.index, "name": self.name, "kind": self.kind, "dtype": self.dtype, "macs": self.macs,
             "bytes": self.bytes, "weight_bytes": self.weight_bytes, "cycles": round(self.cycles, 1),
             "latency_ms": self.latency_ms}
        if self.delegated is not None:
            d["delegated"] = self.delegated
        return d


@dataclass(frozen=True)
class LatencyEstimate:
    total_ms: float
    threads: int
    ops: tuple[OpCost, ...]
    model: str  # one line naming the cost model

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)


def speedup(threads: int, efficiency: float, units: float | None = None, grain: float = 0.0) -> float:
    """Thread speed-up of a parallel op of size ``units`` (MACs + output elements); see the module docstring."""
    share = 1.0 if grain <= 0 or units is None else units / (units + grain)
    return 1.0 + max(0, threads - 1) * efficiency * share


def op_class(graph: Graph, op: Op) -> str:
    """The op's class for ``class_factors``: an ONNX Conv whose every group reads one input channel is depthwise."""
    if op.kind == "Conv" and int(op.options.get("group", 1) or 1) > 1:
        w = graph.tensor(op.inputs[1]) if len(op.inputs) > 1 else None
        if w is not None and w.shape and len(w.shape) > 1 and w.shape[1] == 1:  # one input channel per group
            return "depthwise"
    return OP_CLASSES.get(op.kind, "")


def op_terms(graph: Graph, op: Op, target: Target, threads: int, delegated: bool | None = None) -> tuple[float, float, float]:
    """The op's cycles in three parts, threads and delegation applied: (per-op overhead, MAC and byte work,
    element work). :func:`op_cycles` is their sum; calibration scales them separately."""
    cm = target.cost
    row = cm.dtype(dtype_row(graph.op_dtype(op)))
    factor = cm.class_factors.get(op_class(graph, op), 1.0)
    work = factor * row.cycles_per_mac * graph.macs(op) + row.cycles_per_byte * activation_bytes(graph, op)
    per_element = cm.element_cycles.get(ELEMENT_KINDS.get(op.kind, op.kind), 0.0)
    elements = per_element * activation_elements(graph, op) if per_element else 0.0
    if op.kind in PARALLEL_OPS and target.runtime.name in MULTI_THREADED and delegated is not False:
        s = speedup(threads, cm.parallel_efficiency, parallel_units(graph, op), cm.parallel_grain)
        work, elements = work / s, elements / s
    k = cm.undelegated_factor if delegated is False else 1.0
    return cm.op_overhead_cycles * k, work * k, elements * k


def op_cycles(graph: Graph, op: Op, target: Target, threads: int, delegated: bool | None = None) -> float:
    return sum(op_terms(graph, op, target, threads, delegated))


def estimate_latency(graph: Graph, target: Target, threads: int | None = None, delegated: set[int] | None = None) -> LatencyEstimate:
    """Per-op and total latency of one inference of ``graph`` on ``target``.

    ``delegated``: for LiteRT targets, the indices of the ops the XNNPACK delegate takes
    (None: assume all are).
    """
    threads = 1 if target.runtime.name == "tflm" else max(1, min(threads or target.threads, target.cores))
    rows = []
    for op in graph.ops:
        dlg = None if target.runtime.name not in DELEGATING else (True if delegated is None else op.index in delegated)
        cyc = op_cycles(graph, op, target, threads, dlg)
        rows.append(OpCost(index=op.index, name=op.name, kind=op.kind, dtype=graph.op_dtype(op), macs=graph.macs(op),
                           bytes=activation_bytes(graph, op), weight_bytes=weight_bytes(graph, op), cycles=cyc,
                           latency_ms=cyc / target.clock_hz * 1e3, delegated=dlg))
    total = sum(r.latency_ms for r in rows)
    desc = (f"{target.runtime.name}+{target.runtime.kernels} on {target.core} at {target.clock_mhz:g} MHz, "
            f"{threads} thread(s): cycles = overhead + (class x cycles/MAC x MACs + cycles/byte x activation bytes"
            f" + element cycles x activation elements) / thread speed-up")
    return LatencyEstimate(total_ms=total, threads=threads, ops=tuple(rows), model=desc)
