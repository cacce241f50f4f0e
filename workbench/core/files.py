"""File helpers: atomic writes, hashing, output-path checks.

Every artifact is written to a temporary file beside its destination and renamed into
place, so an interrupted command leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from workbench.core.errors import InputFileError, OutputExistsError


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_input_file(path: str | os.PathLike, what: str = "model") -> Path:
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what.capitalize()} file '{p}' does not exist.", hint="Check the path.")
    if p.is_file() and p.stat().st_size == 0:
        raise InputFileError(f"{what.capitalize()} file '{p}' is empty (0 bytes).", hint="Re-create or re-download it.")
    return p


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"Output '{p}' already exists.", hint="Pass --overwrite to replace it, or choose another -o path."
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputFileError(f"Output folder '{parent}' does not exist.", hint="Create it first or choose another -o path.")
    if not os.access(parent, os.W_OK):
        raise InputFileError(f"Output folder '{parent}' is not writable.", hint="Choose another -o path.")
    return p


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``, else delete it.

    Works for files and for folders (a folder replaces the old one as a whole).
    """
    dest = Path(dest)
    suffix = suffix if suffix is not None else dest.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent or ".")
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise InputFileError(f"Internal error: nothing was written for '{dest}'.")
        if tmp_path.is_dir():
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old")
                if old.exists():
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old) if dest.is_dir() else os.replace(dest, old)
                os.replace(tmp_path, dest)
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
            else:
                os.replace(tmp_path, dest)
        else:
            os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | os.PathLike, obj) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_jsonable(obj):
    return json.loads(json.dumps(obj, default=_json_default))
