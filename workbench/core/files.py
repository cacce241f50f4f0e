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


def sha256_file(path: str | os.PathLike, file_digest=None) -> str:
    """SHA-256 of a file, or of a folder (each file's relative name and digest, in order);
    ``file_digest(path)`` gives a folder's file digests where the caller remembers them."""
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update((file_digest or sha256_file)(f).encode())
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


def check_output(path: str | os.PathLike, overwrite: bool, folder: bool = False) -> Path:
    """Refuse an output path that cannot be written before any work starts: it exists (without
    ``overwrite``), it is a folder where a file goes (or the reverse), or its parent is missing,
    is a file or is read-only."""
    p = Path(path)
    want, other = ("folder", "file") if folder else ("file", "folder")
    if p.exists() and p.is_dir() != folder:
        raise OutputExistsError(f"Output '{p}' is a {other}; this command writes a {want} there.",
                                hint=f"Choose a {want} path for -o.")
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"Output '{p}' already exists.", hint="Pass --overwrite to replace it, or choose another -o path."
        )
    parent = p.parent if str(p.parent) else Path(".")
    for up in (parent, *parent.parents):
        if up.exists() and not up.is_dir():
            raise InputFileError(f"Output path '{p}' goes through '{up}', which is a file, not a folder.",
                                 hint="Choose another -o path.")
        if up.exists():
            break
    if not parent.exists():
        raise InputFileError(f"Output folder '{parent}' does not exist.", hint="Create it first or choose another -o path.")
    if not os.access(parent, os.W_OK):
        raise InputFileError(f"Output folder '{parent}' is not writable.", hint="Choose another -o path.")
    return p


TMP_MARK = ".tmp"


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders an earlier, killed writer of ``dest`` left beside it
    (``.<name>.<pid>.*.tmp*`` whose process is gone). Returns what was removed."""
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    removed = []
    if not parent.is_dir():
        return removed
    head = f".{dest.name}."
    for q in parent.iterdir():
        rest = q.name[len(head):] if q.name.startswith(head) else ""
        pid = rest.split(".", 1)[0]
        if TMP_MARK not in rest or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(q, ignore_errors=True) if q.is_dir() and not q.is_symlink() else q.unlink(missing_ok=True)
        removed.append(q)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE). False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a group of renames runs, so an interrupt never lands between them."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def replace_dir(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest``, replacing what is there: an atomic swap where the system
    has one, so ``dest`` always exists once it existed; the old content is then removed."""
    if not dest.exists() and not dest.is_symlink():
        os.replace(new, dest)
        return
    if dest.is_dir() and not dest.is_symlink() and _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old content
        return
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old{TMP_MARK}")
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)


def commit_files(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each written ``(tmp, dest)`` into place as one unit, with interrupts held: the companions
    (every pair after the first, e.g. a manifest) are removed first, so a crash part-way leaves the
    first file without companions, never a new file beside an old manifest."""
    with signals_deferred():
        for _tmp, dest in pairs[1:]:
            Path(dest).unlink(missing_ok=True)
        for tmp, dest in pairs:
            os.replace(tmp, dest)


@contextlib.contextmanager
def staging_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside ``dest`` to write a group of files in (an artifact and its manifest);
    removed on the way out, whatever is left in it. Stale ones of killed writers are cleaned first."""
    dest = Path(dest)
    clean_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), suffix=f"{TMP_MARK}.d", dir=dest.parent if str(dest.parent) else "."))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``, else delete it.

    Works for files and for folders (a folder replaces the old one as a whole, see :func:`replace_dir`).
    Temporary paths carry the writer's pid, so the leftovers of a killed writer are removed next time.
    """
    dest = Path(dest)
    suffix = suffix if suffix is not None else dest.suffix
    clean_stale_temps(dest)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(dest), suffix=f"{TMP_MARK}{suffix}", dir=dest.parent or ".")
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise InputFileError(f"Internal error: nothing was written for '{dest}'.")
        with signals_deferred():
            if tmp_path.is_dir():
                replace_dir(tmp_path, dest)
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
