"""The latency model: a documented estimate per op, from the graph and a target profile.

For every op of the graph::

    cycles(op) = op_overhead_cycles
               + class_factor(op) * cycles_per_mac[dtype]  * MACs(op)
               +                    cycles_per_byte[dtype] * activation_bytes(op)

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
* Threads (LiteRT boards): ops that XNNPACK parallelises (convolutions, fully connected,
  pooling, matmul) get ``1 + (threads - 1) * parallel_efficiency`` times faster. TFLM is
  single-threaded.
* LiteRT boards: an op the XNNPACK delegate does not take runs in LiteRT's builtin kernels,
  ``undelegated_factor`` times slower.

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

# Ops XNNPACK splits across threads.
PARALLEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV",
                          "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN",
                          "Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "MaxPool", "GlobalAveragePool"})
# Runtimes that split PARALLEL_OPS across threads (XNNPACK in LiteRT, MLAS in ONNX Runtime).
MULTI_THREADED = ("litert", "ort")

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


def speedup(threads: int, efficiency: float) -> float:
    return 1.0 + max(0, threads - 1) * efficiency


def op_class(graph: Graph, op: Op) -> str:
    """The op's class for ``class_factors``: an ONNX Conv whose every group reads one input channel is depthwise."""
    if op.kind == "Conv" and int(op.options.get("group", 1) or 1) > 1:
        w = graph.tensor(op.inputs[1]) if len(op.inputs) > 1 else None
        if w is not None and w.shape and len(w.shape) > 1 and w.shape[1] == 1:  # one input channel per group
            return "depthwise"
    return OP_CLASSES.get(op.kind, "")


def op_cycles(graph: Graph, op: Op, target: Target, threads: int, delegated: bool | None = None) -> float:
    cm = target.cost
    row = cm.dtype(dtype_row(graph.op_dtype(op)))
    factor = cm.class_factors.get(op_class(graph, op), 1.0)
    work = factor * row.cycles_per_mac * graph.macs(op) + row.cycles_per_byte * activation_bytes(graph, op)
    if op.kind in PARALLEL_OPS and target.runtime.name in MULTI_THREADED and delegated is not False:
        work /= speedup(threads, cm.parallel_efficiency)
    cycles = cm.op_overhead_cycles + work
    if delegated is False:
        cycles *= cm.undelegated_factor
    return cycles


def estimate_latency(graph: Graph, target: Target, threads: int | None = None, delegated: set[int] | None = None) -> LatencyEstimate:
    """Per-op and total latency of one inference of ``graph`` on ``target``.

    ``delegated``: for LiteRT targets, the indices of the ops the XNNPACK delegate takes
    (None: assume all are).
    """
    threads = 1 if target.runtime.name == "tflm" else max(1, min(threads or target.threads, target.cores))
    rows = []
    for op in graph.ops:
        dlg = None if target.runtime.name != "litert" else (True if delegated is None else op.index in delegated)
        cyc = op_cycles(graph, op, target, threads, dlg)
        rows.append(OpCost(index=op.index, name=op.name, kind=op.kind, dtype=graph.op_dtype(op), macs=graph.macs(op),
                           bytes=activation_bytes(graph, op), weight_bytes=weight_bytes(graph, op), cycles=cyc,
                           latency_ms=cyc / target.clock_hz * 1e3, delegated=dlg))
    total = sum(r.latency_ms for r in rows)
    desc = (f"{target.runtime.name}+{target.runtime.kernels} on {target.core} at {target.clock_mhz:g} MHz, "
            f"{threads} thread(s): cycles = overhead + class x cycles/MAC x MACs + cycles/byte x activation bytes")
    return LatencyEstimate(total_ms=total, threads=threads, ops=tuple(rows), model=desc)
