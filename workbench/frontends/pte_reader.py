"""Read an ExecuTorch program (.pte) without ExecuTorch or torch: its methods' inputs and outputs,
operators, backend delegates and instructions, from the flatbuffer itself.

A .pte is a flatbuffer with the file identifier "ET12" (``executorch/schema/program.fbs``) followed by
an extended header ("eh00": program size, segment offset, segment bytes) and data segments (constant
tensors, delegate blobs). Only the fields used here are read, every offset bounds-checked: a truncated
or corrupt file is a ModelFormatError, never an IndexError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import ModelFormatError

# ExecuTorch's ScalarType (schema/scalar_type.fbs) -> numpy dtype names; others keep the schema's name.
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
                11: "bool", 15: "bfloat16", 27: "uint16", 28: "uint32", 29: "uint64"}
TENSOR = 5  # KernelTypes union member
KERNEL_CALL, DELEGATE_CALL = 1, 2  # InstructionArguments union members


@dataclass(frozen=True)
class PteTensor:
    shape: tuple[int, ...]
    dtype: str
    const: bool = False  # data in the program (a constant buffer), not planned memory


@dataclass(frozen=True)
class PteMethod:
    name: str
    inputs: tuple[PteTensor | None, ...]  # None: a non-tensor input
    outputs: tuple[PteTensor | None, ...]
    operators: tuple[str, ...]  # "aten::convolution.out"
    delegates: tuple[str, ...]  # backend ids, e.g. "XnnpackBackend"
    instructions: tuple[str, ...]  # what each instruction runs: an operator or "delegate:<backend id>"


@dataclass(frozen=True)
class PteProgram:
    version: int
    methods: tuple[PteMethod, ...]
    program_bytes: int | None  # the flatbuffer part; None without an extended header
    segment_bytes: int | None  # constant data and delegate blobs

    def method(self, name: str = "forward") -> PteMethod | None:
        return next((m for m in self.methods if m.name == name), None)


class _Buf:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path = data, path

    def bad(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"'{self.path}' is not a readable ExecuTorch program: {what}.",
                                hint="The file is probably truncated or corrupted; export it again.")

    def unpack(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise self.bad(f"an offset ({pos}) points outside the file ({len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def field(self, table: int, index: int) -> int:
        """Position of a table's field, or 0 when absent."""
        vtable = table - self.unpack("<i", table)
        size = self.unpack("<H", vtable)
        slot = 4 + 2 * index
        off = self.unpack("<H", vtable + slot) if slot + 2 <= size else 0
        return table + off if off else 0

    def ref(self, pos: int) -> int:
        return pos + self.unpack("<I", pos)

    def table(self, table: int, index: int) -> int:
        pos = self.field(table, index)
        return self.ref(pos) if pos else 0

    def scalar(self, table: int, index: int, fmt: str, default=0):
        pos = self.field(table, index)
        return self.unpack(fmt, pos) if pos else default

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(start, count) of a vector field ((0, 0) when absent)."""
        pos = self.table(table, index)
        if not pos:
            return 0, 0
        n = self.unpack("<I", pos)
        if n > len(self.data):
            raise self.bad(f"a vector claims {n} elements")
        return pos + 4, n

    def tables(self, table: int, index: int) -> list[int]:
        start, n = self.vector(table, index)
        return [self.ref(start + 4 * i) for i in range(n)]

    def ints(self, table: int, index: int, fmt: str = "<i") -> list[int]:
        start, n = self.vector(table, index)
        size = struct.calcsize(fmt)
        return [self.unpack(fmt, start + size * i) for i in range(n)]

    def string(self, table: int, index: int) -> str:
        start, n = self.vector(table, index)
        if start + n > len(self.data):
            raise self.bad("a string runs past the end of the file")
        return self.data[start:start + n].decode("utf-8", "replace")


def _tensor(buf: _Buf, values: list[int], index: int) -> PteTensor | None:
    if not 0 <= index < len(values):
        raise buf.bad(f"a method names value {index} of {len(values)}")
    value = values[index]
    if buf.scalar(value, 0, "<B") != TENSOR:
        return None
    t = buf.table(value, 1)
    code = buf.scalar(t, 0, "<b")
    return PteTensor(shape=tuple(buf.ints(t, 2)), dtype=SCALAR_TYPES.get(code, f"scalar_type_{code}"),
                     const=buf.scalar(t, 5, "<I") != 0 and not buf.table(t, 6))


def _method(buf: _Buf, plan: int) -> PteMethod:
    values = buf.tables(plan, 2)
    operators = []
    for op in buf.tables(plan, 6):
        name, overload = buf.string(op, 0), buf.string(op, 1)
        operators.append(f"{name}.{overload}" if overload else name)
    delegates = [buf.string(d, 0) for d in buf.tables(plan, 7)]
    instructions = []
    for chain in buf.tables(plan, 5):
        for ins in buf.tables(chain, 2):
            kind, args = buf.scalar(ins, 0, "<B"), buf.table(ins, 1)
            if kind == KERNEL_CALL:
                k = buf.scalar(args, 0, "<i")
                instructions.append(operators[k] if 0 <= k < len(operators) else f"operator {k}")
            elif kind == DELEGATE_CALL:
                k = buf.scalar(args, 0, "<i")
                instructions.append("delegate:" + (delegates[k] if 0 <= k < len(delegates) else str(k)))
    return PteMethod(name=buf.string(plan, 0), inputs=tuple(_tensor(buf, values, i) for i in buf.ints(plan, 3)),
                     outputs=tuple(_tensor(buf, values, i) for i in buf.ints(plan, 4)), operators=tuple(operators),
                     delegates=tuple(delegates), instructions=tuple(instructions))


def read_pte(path: str | Path) -> PteProgram:
    path = Path(path)
    buf = _Buf(path.read_bytes(), path)
    if len(buf.data) < 8 or buf.data[4:6] != b"ET" or not buf.data[6:8].isdigit():
        raise buf.bad(f"no ExecuTorch file identifier at byte 4 (found {buf.data[4:8]!r})")
    program_bytes = segment_bytes = None
    if buf.data[8:12] == b"eh00" and buf.unpack("<I", 12) >= 32:
        program_bytes, segment_bytes = buf.unpack("<Q", 16), buf.unpack("<Q", 32)
    root = buf.ref(0)
    return PteProgram(version=buf.scalar(root, 0, "<I"), methods=tuple(_method(buf, p) for p in buf.tables(root, 1)),
                      program_bytes=program_bytes, segment_bytes=segment_bytes)


# --- the calls of a method, with the delegates' payloads (for backends whose payload this package reads) ---

INLINE, SEGMENT = 0, 1  # DataLocation of a delegate's payload


@dataclass(frozen=True)
class PteCall:
    kind: str  # "kernel" (an ExecuTorch operator) or "delegate" (a backend's blob)
    name: str  # the operator ("aten::mean.out") or the backend id ("XnnpackBackend")
    args: tuple[int, ...]  # indices into PteCalls.values
    payload: bytes | None = None  # a delegate's processed blob


@dataclass(frozen=True)
class PteCalls:
    method: str
    values: tuple[PteTensor | None, ...]  # every value of the method; None: not a tensor
    calls: tuple[PteCall, ...]  # in execution order
    inputs: tuple[int, ...] = ()  # the method's inputs and outputs (indices into values)
    outputs: tuple[int, ...] = ()


def _all_tensors(buf: _Buf, values: list[int]) -> tuple[PteTensor | None, ...]:
    return tuple(_tensor(buf, values, i) for i in range(len(values)))


def _payload(buf: _Buf, root: int, delegate: int) -> bytes:
    """A delegate's processed blob: inline in the program, or one of the data segments after it."""
    ref = buf.table(delegate, 1)
    location, index = buf.scalar(ref, 0, "<b"), buf.scalar(ref, 1, "<I")
    if location == INLINE:
        blobs = buf.tables(root, 3)
        if not index < len(blobs):
            raise buf.bad(f"a delegate names inline data {index} of {len(blobs)}")
        start, n = buf.vector(blobs[index], 0)
    elif location == SEGMENT:
        segments = buf.tables(root, 4)
        if not index < len(segments) or buf.data[8:12] != b"eh00":
            raise buf.bad(f"a delegate names data segment {index} of {len(segments)}")
        start = buf.unpack("<Q", 24) + buf.scalar(segments[index], 0, "<Q")
        n = buf.scalar(segments[index], 1, "<Q")
    else:
        raise buf.bad(f"a delegate's data has an unknown location ({location})")
    if start + n > len(buf.data):
        raise buf.bad(f"a delegate's data ({n} bytes at {start}) runs past the end of the file ({len(buf.data)} bytes)")
    return bytes(buf.data[start:start + n])


def read_calls(path: str | Path, method: str = "forward") -> PteCalls:
    """What ``method`` runs, in order: ExecuTorch operators with their argument values, and delegate calls
    with the backend's payload bytes."""
    path = Path(path)
    buf = _Buf(path.read_bytes(), path)
    read_pte(path)  # the identifier and header checks
    root = buf.ref(0)
    plan = next((p for p in buf.tables(root, 1) if buf.string(p, 0) == method), None)
    if plan is None:
        raise ModelFormatError(f"The ExecuTorch program '{path}' has no '{method}' method.")
    values = buf.tables(plan, 2)
    operators = [buf.string(op, 0) + ("." + buf.string(op, 1) if buf.string(op, 1) else "") for op in buf.tables(plan, 6)]
    delegates = buf.tables(plan, 7)
    calls = []
    for chain in buf.tables(plan, 5):
        for ins in buf.tables(chain, 2):
            kind, args = buf.scalar(ins, 0, "<B"), buf.table(ins, 1)
            if kind not in (KERNEL_CALL, DELEGATE_CALL):
                continue  # moves, jumps, frees: no work to cost
            k, arg_values = buf.scalar(args, 0, "<i"), tuple(buf.ints(args, 1))
            table = operators if kind == KERNEL_CALL else delegates
            if not 0 <= k < len(table):
                raise buf.bad(f"an instruction names {'operator' if kind == KERNEL_CALL else 'delegate'} {k} of {len(table)}")
            if kind == KERNEL_CALL:
                calls.append(PteCall("kernel", operators[k], arg_values))
            else:
                calls.append(PteCall("delegate", buf.string(delegates[k], 0), arg_values, _payload(buf, root, delegates[k])))
    return PteCalls(method=method, values=_all_tensors(buf, values), calls=tuple(calls),
                    inputs=tuple(buf.ints(plan, 3)), outputs=tuple(buf.ints(plan, 4)))
