"""Bytes as the body of a C array initializer, and back.

``format_bytes`` writes a fixed number of bytes per line as ``0x..`` literals;
``parse_c_array`` reads the bytes of one named array back from a C or C++ source, so a
test (or a user) can check that the generated source holds exactly the model file.
"""

from __future__ import annotations

import re

from workbench.core.errors import InputFileError

BYTES_PER_LINE = 12


def format_bytes(data: bytes, per_line: int = BYTES_PER_LINE, indent: str = "    ") -> str:
    """Lines of ``0xNN,`` literals, ``per_line`` per line; the last byte has no trailing comma."""
    if per_line < 1:
        raise ValueError("per_line must be at least 1")
    lines = []
    for start in range(0, len(data), per_line):
        chunk = data[start:start + per_line]
        lines.append(indent + ", ".join(f"0x{b:02x}" for b in chunk))
    return ",\n".join(lines)


def parse_c_array(source: str, name: str, where: str = "<source>") -> bytes:
    """The bytes of the array ``name`` defined in ``source`` (hex or decimal literals)."""
    m = re.search(rf"\b{re.escape(name)}\s*\[\s*\w*\s*\][^=;]*=\s*\{{([^}}]*)\}}", source)
    if m is None:
        raise InputFileError(f"'{where}' defines no array named '{name}'.",
                             hint="Give the name of the model data array, e.g. g_<name>_model_data.")
    body = re.sub(r"/\*.*?\*/|//[^\n]*", " ", m.group(1), flags=re.S)
    values = [int(tok[2:], 16) if tok[:2] in ("0x", "0X") else int(tok, 10)
              for tok in re.findall(r"0[xX][0-9a-fA-F]+|\d+", body)]
    bad = [v for v in values if not 0 <= v <= 255]
    if bad:
        raise InputFileError(f"'{where}': array '{name}' holds values outside 0..255 (first: {bad[0]}).")
    return bytes(values)
