"""The firmware caches' one mechanism: build once under a lock, serve only what checks out.

Every cached folder (a TFLM library, a firmware image) is sealed (:mod:`workbench.core.digests`):
``digests.json`` holds the sha256 of each file the folder serves, written last, before the folder
is renamed into place. A folder is served only when every listed file is there with its digest;
anything else (a flipped bit in an ELF or a ``.a``, an edited ``meta.json``, a missing or
unreadable manifest) is reported (:class:`CacheCorrupt`), the folder is removed and built again,
and the caller's ``say`` and the returned notes tell the user it happened.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from workbench.core.digests import DIGESTS, CacheCorrupt, verify_digests, write_digests  # noqa: F401  (the firmware caches' names)
from workbench.core.files import sha256_file as file_sha256  # noqa: F401
from workbench.core.progress import say as progress_say

Say = Callable[[str], None]


@contextmanager
def lock(path: Path, on_wait: Callable[[], None] | None = None):
    """An exclusive lock on ``path``; ``on_wait()`` is called first when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale(base: Path, key: str) -> None:
    """Temporary folders of a killed build of ``key`` (only called under the key's lock)."""
    for old in base.glob(f".{key}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)


def build_once(base: Path, key: str, load, build, *, what: str = "build", say: Say | None = None):
    """``(found, made, notes)``: what ``load()`` finds in the cache, else what ``build(tmp)`` returned
    after building into a temporary folder renamed onto ``base/key``.

    ``load()`` returns None when nothing is cached and raises :class:`CacheCorrupt` for a folder
    that fails its check: that folder is never served but removed and built again, with a note
    (said through ``say`` and returned in ``notes``). Under the key's lock, so two processes never
    build the same thing, and an interrupted build leaves nothing half-made.
    """
    say = progress_say if say is None else say
    notes: list[str] = []

    def checked():
        try:
            return load()
        except CacheCorrupt as exc:
            note = (f"The cached {what} at {exc.folder} failed its integrity check ({exc.reason}); "
                    "it was not used and is being rebuilt.")
            if note not in notes:
                notes.append(note)
                say(note)
            return None

    found = checked()
    if found is not None:
        return found, None, notes
    base.mkdir(parents=True, exist_ok=True)
    def waiting():
        say(f"Waiting for another process that is building the same {what} (into {base})...")

    with lock(base / f".{key}.lock", on_wait=waiting):
        found = checked()  # another process may have built (or repaired) it meanwhile
        if found is not None:
            return found, None, notes
        remove_stale(base, key)
        final = base / key
        if final.exists():  # a corrupt or incomplete folder: never served, removed before the rebuild
            shutil.rmtree(final)
        tmp = base / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            made = build(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return None, made, notes
