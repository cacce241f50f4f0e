"""A minimal, bounds-checked protobuf wire-format reader.

Enough to walk an ONNX ModelProto without the ``onnx`` package, so that inspecting and
emulating .onnx models needs only the core install. Malformed input raises ValueError;
nothing here allocates more than the input's size.
"""

from __future__ import annotations

import struct
from typing import Iterator

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, object]]:
    """Yield (field_number, wire_type, value); LEN values are memoryviews into ``buf``."""
    mv = memoryview(buf)
    pos = 0
    n = len(mv)
    while pos < n:
        key, pos = read_varint(mv, pos)
        fnum, wtype = key >> 3, key & 7
        if fnum == 0:
            raise ValueError("field number 0")
        if wtype == VARINT:
            val, pos = read_varint(mv, pos)
        elif wtype == I64:
            if pos + 8 > n:
                raise ValueError("truncated fixed64")
            val = bytes(mv[pos : pos + 8])
            pos += 8
        elif wtype == LEN:
            ln, pos = read_varint(mv, pos)
            if pos + ln > n:
                raise ValueError("truncated length-delimited field")
            val = mv[pos : pos + ln]
            pos += ln
        elif wtype == I32:
            if pos + 4 > n:
                raise ValueError("truncated fixed32")
            val = bytes(mv[pos : pos + 4])
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wtype}")
        yield fnum, wtype, val


def to_signed64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def packed_varints(val, wtype: int) -> list[int]:
    if wtype == VARINT:
        return [to_signed64(val)]
    out = []
    mv = memoryview(val)
    pos = 0
    while pos < len(mv):
        v, pos = read_varint(mv, pos)
        out.append(to_signed64(v))
    return out


def fixed32_float(val: bytes) -> float:
    return struct.unpack("<f", val)[0]


def packed_floats(val, wtype: int) -> list[float]:
    if wtype == I32:
        return [fixed32_float(val)]
    b = bytes(val)
    if len(b) % 4:
        raise ValueError("packed float length not a multiple of 4")
    return list(struct.unpack(f"<{len(b) // 4}f", b))


def text(val) -> str:
    return bytes(val).decode("utf-8", "replace")
