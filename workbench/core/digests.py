"""Sealed folders: the one way a cache proves that what it serves is what it stored.

A sealed folder holds ``digests.json``, the SHA-256 of each file it serves, written last. Before
anything is served, :func:`verify_digests` checks every listed file (and, with ``exact``, that no
file was added); anything else raises :class:`CacheCorrupt` with what differs, and the caller
removes the folder and builds it again, saying so. The run cache (``pipeline/cache.py``) and the
firmware caches (``emulate/firmware/cache.py``) both use it.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.core.files import sha256_file

DIGESTS = "digests.json"


class CacheCorrupt(Exception):
    """A cached folder whose files do not match their recorded digests (or have none)."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"{folder}: {reason}")
        self.folder = folder
        self.reason = reason


def folder_files(folder: Path) -> list[str]:
    """Every file below ``folder`` (relative names), except its digests."""
    return [str(f.relative_to(folder)) for f in sorted(folder.rglob("*")) if f.is_file() and f != folder / DIGESTS]


def write_digests(folder: Path, names: tuple[str, ...] | list[str] | None = None) -> dict:
    """Record the SHA-256 of ``names`` (files in ``folder``; all of them when None) in ``folder/digests.json``."""
    names = folder_files(folder) if names is None else names
    files = {name: sha256_file(folder / name) for name in names}
    (folder / DIGESTS).write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True))
    return files


def verify_digests(folder: Path, required: tuple[str, ...] | list[str] = (), exact: bool = False) -> dict:
    """The recorded digests of ``folder`` when every required file is listed and every listed file matches
    (with ``exact``, and no file was added since); else :class:`CacheCorrupt` saying what differs."""
    try:
        files = json.loads((folder / DIGESTS).read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except FileNotFoundError:
        raise CacheCorrupt(folder, f"it has no {DIGESTS}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheCorrupt(folder, f"its {DIGESTS} is unreadable ({type(exc).__name__})") from None
    for name in required:
        if name not in files:
            raise CacheCorrupt(folder, f"{DIGESTS} does not list {name}")
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise CacheCorrupt(folder, f"{name} is missing")
        got = sha256_file(path)
        if got != want:
            raise CacheCorrupt(folder, f"{name} changed since it was stored (sha256 {got[:16]}..., recorded {str(want)[:16]}...)")
    if exact:
        added = [n for n in folder_files(folder) if n not in files]
        if added:
            raise CacheCorrupt(folder, f"{added[0]} was added after the folder was stored")
    return files
