"""Progress lines for long steps (a framework conversion, a firmware library build), on stderr.

Library code never prints: it calls :func:`say` or wraps a step in :func:`stage`, which go to the
``workbench.progress`` logger. The CLI attaches one handler that writes them to stderr (never to
stdout, so ``--json`` output stays one document); a program using the API sees them only if it
configures logging. A step says nothing when it ends within ``after`` seconds; a longer one says
that it started, how long it has run every ``every`` seconds, and when it ended.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Iterator

LOG = logging.getLogger("workbench.progress")


def say(line: str) -> None:
    LOG.info(line.rstrip("\n"))


@contextlib.contextmanager
def stage(what: str, after: float = 2.0, every: float = 30.0) -> Iterator[None]:
    t0 = time.monotonic()
    started = threading.Event()
    done = threading.Event()

    def beat():
        if done.wait(after):
            return
        started.set()
        say(f"{what} ...")
        while not done.wait(every):
            say(f"{what}: {time.monotonic() - t0:.0f} s so far")

    t = threading.Thread(target=beat, name="workbench-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        if started.is_set():
            say(f"{what}: done in {time.monotonic() - t0:.1f} s")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a line comes (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def to_stderr() -> None:
    """Send progress lines to stderr (once per process; the CLI calls this)."""
    if not any(isinstance(h, _StderrHandler) for h in LOG.handlers):
        LOG.addHandler(_StderrHandler())
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
