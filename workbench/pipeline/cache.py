"""The run cache: what a job's key is made of, and proof that a cached entry is what was stored.

- Content, not names: a job's key holds a digest of its model file and of every data file or
  folder it reads. Digests are remembered per path with the file's size and modification time
  (``<cache>/digests.json``): a file whose size and mtime are unchanged is not read again; any
  change means it is hashed anew.
- Every entry is sealed (:mod:`workbench.core.digests`): the SHA-256 of each file it holds. An
  entry whose files differ (edited, truncated, flipped bytes, added or missing) is never served:
  it is removed and the job runs again, with a note.
- One run per output folder at a time (``<out>/.lock``); a second one is refused at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from workbench.core.errors import ConfigError
from workbench.core.digests import CacheCorrupt, verify_digests, write_digests
from workbench.core.files import sha256_file, write_json_atomic

DIGEST_CACHE = "digests.json"  # in <out>/.cache: the per-path memo of FileDigests


class FileDigests:
    """SHA-256 of files and folders, re-read only when a file's size or mtime changed."""

    def __init__(self, store: Path):
        self.store = store
        try:
            self.known = json.loads(store.read_text(encoding="utf-8")) if store.is_file() else {}
        except (OSError, ValueError):
            self.known = {}  # a damaged memo only costs re-hashing
        self.changed = False

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        seen = self.known.get(key)
        if seen and seen.get("size") == st.st_size and seen.get("mtime_ns") == st.st_mtime_ns:
            return seen["sha256"]
        digest = sha256_file(path)
        self.known[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.changed = True
        return digest

    def path(self, path: Path) -> str:
        return sha256_file(path, file_digest=self.file) if path.is_dir() else self.file(path)

    def spec(self, spec) -> str | None:
        """The content digest of a data spec that names a file or folder; of a ``module:function``
        spec, its module's source file; ``None`` for built-in sets (fixed content)."""
        if not isinstance(spec, str):
            return None
        base = spec.partition("#")[0]
        p = Path(base)
        if base and p.exists():
            return self.path(p)
        mod, sep, _fn = base.partition(":")
        origin = _module_file(mod) if sep and mod else None
        return self.file(origin) if origin is not None else None

    def save(self) -> None:
        if self.changed:
            write_json_atomic(self.store, self.known)
            self.changed = False


def _module_file(mod: str) -> Path | None:
    import importlib.util

    try:
        found = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None


def seal(folder: Path) -> None:
    """Record the digest of every file of a finished entry (see :mod:`workbench.core.digests`)."""
    write_digests(folder)


def check_entry(folder: Path) -> str | None:
    """``None`` when the entry holds exactly the files it was sealed with, ``result.json`` among them;
    else what differs."""
    try:
        verify_digests(folder, ("result.json",), exact=True)
    except CacheCorrupt as exc:
        return exc.reason
    return None


def drop(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the whole run; a second run on the same folder is refused, naming the first."""
    lock = out / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"Output folder '{out}' is in use by another `workbench run` (pid {holder}).",
                              hint="Wait for it to finish, or choose another -o folder.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a waiting run)
