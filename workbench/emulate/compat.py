"""Op support of a model on a target's runtime, one checker per runtime (a registry).

* ``tflm`` (MCUs): :func:`workbench.runtimes.tflm.check_tflm` against the op set the
  installed TFLite Micro registers. Ops without a kernel, custom and Flex ops make the
  model unsupported (a failed check); float16 and dynamic-range (hybrid) models are refused
  with the scheme that would work (bad input).
* ``litert`` (Linux boards): LiteRT's builtin kernels run every builtin op, so nothing is
  unsupported once the model loads; what matters for speed is which ops the XNNPACK
  delegate takes (int16x8 models, for one, are not delegated). That is measured by loading
  the model in LiteRT (see :mod:`workbench.emulate.litert_child`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from workbench.core.errors import UnsupportedError
from workbench.frontends.graph import Graph
from workbench.core.registry import Registry

# problem kinds that mean "this model was exported with a scheme the MCU runtime refuses":
# bad input (exit 2) with the scheme that would work, rather than a failed check.
SCHEME_PROBLEMS = ("float16", "hybrid")


@dataclass(frozen=True)
class Compat:
    unsupported: tuple[dict, ...]  # each: index, op, layer, kind, message (and scheme)
    delegated: frozenset[int] | None  # LiteRT: ops XNNPACK takes; None for TFLM
    notes: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return not self.unsupported


CHECKERS: Registry[Callable[[Graph, str, dict], Compat]] = Registry("target runtime")


@CHECKERS.register("tflm")
def _tflm(graph: Graph, model_path: str, context: dict) -> Compat:
    from workbench.runtimes.tflm import check_tflm

    problems = check_tflm(graph)
    scheme = [p for p in problems if p["kind"] in SCHEME_PROBLEMS]
    if scheme:
        first = scheme[0]
        raise UnsupportedError(
            f"'{model_path}' cannot run on an MCU with TensorFlow Lite Micro: {first['message']}",
            hint=f"What would work: {first['scheme']}.")
    return Compat(unsupported=tuple(problems), delegated=None)


@CHECKERS.register("litert")
def _litert(graph: Graph, model_path: str, context: dict) -> Compat:
    measured = context.get("litert")
    if measured is not None and "error" in measured:
        problems = _litert_load_problems(graph, measured.get("message", ""))
        if not problems:
            from workbench.emulate.memory import raise_load_error

            raise_load_error(model_path, measured)
        return Compat(unsupported=tuple(problems), delegated=None)
    if measured is None or measured.get("delegated") is None:
        return Compat(unsupported=(), delegated=None, notes=("XNNPACK delegation was not measured; all ops assumed delegated.",))
    delegated = frozenset(measured["delegated"])
    notes = []
    missing = [op for op in graph.ops if op.index not in delegated]
    if missing:
        kinds = sorted({f"{op.kind} ({graph.op_dtype(op)})" for op in missing})
        notes.append(f"{len(missing)} of {len(graph.ops)} ops are not taken by XNNPACK and run in LiteRT's builtin kernels: "
                     + ", ".join(kinds[:8]) + ("" if len(kinds) <= 8 else ", ..."))
        if any(graph.op_dtype(op) == "int16" for op in missing):
            notes.append("int16x8 ops are not delegated to XNNPACK; an int8 model runs much faster on this board.")
    return Compat(unsupported=(), delegated=delegated, notes=tuple(notes))


def _litert_load_problems(graph: Graph, message: str) -> list[dict]:
    """Ops LiteRT names when it refuses to load a model (unresolved custom ops, missing builtins)."""
    import re

    from workbench.runtimes.tflm import layer_label

    names = {n.rstrip(".") for n in re.findall(r"unresolved custom op: ([\w.\-/]+)", message)}
    names |= set(re.findall(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'", message))
    problems = []
    for op in graph.ops:
        if op.kind in names:
            problems.append({"kind": "custom_op" if op.custom else "missing_op", "index": op.index, "op": op.kind, "layer": op.name,
                             "message": f"op {op.index} '{op.kind}' (layer '{layer_label(op)}') is not registered in LiteRT's op resolver.",
                             "scheme": "replace the layer with builtin ops, or build LiteRT with your own kernel for it"})
    return problems


def check(graph: Graph, runtime: str, model_path: str, context: dict | None = None) -> Compat:
    return CHECKERS.get(runtime)(graph, model_path, context or {})
