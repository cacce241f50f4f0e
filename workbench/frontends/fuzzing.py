"""Helpers shared by the fuzz tests and scripts/fuzz_readers.py: byte mutations and the
graph analysis every parsed model must survive."""

from __future__ import annotations

from workbench.frontends.graph import Graph


def mutate(data: bytes, ops) -> bytes:
    """Apply (kind, position, value) mutations: flip a bit, set a byte, cut the tail, insert or zero a byte."""
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= 1 << (val % 8)
        elif kind == "set":
            b[i] = val
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b.insert(i, val)
        elif kind == "zero":
            b[i : i + 4] = b"\0" * len(b[i : i + 4])
    return bytes(b)


def describe_graph(g: Graph) -> dict:
    """What inspect and emulate compute from a graph: op table, MACs, parameters, dtypes."""
    rows = []
    for op in g.ops:
        out = g.tensor(op.outputs[0]) if op.outputs else None
        rows.append((op.kind, g.macs(op), g.op_dtype(op), out.shape if out is not None else None, g.out_elements(op)))
    return {"ops": rows, "macs": g.total_macs(), "params": g.parameters, "weights": g.weight_bytes, "kinds": g.op_kinds()}
