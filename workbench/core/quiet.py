"""Keep third-party noise off the user's stdout.

TensorFlow's converter prints "Saved artifact at ..." with Python's print, and C++ code
logs to file descriptors 1 and 2 directly. ``captured_output`` redirects both the Python
streams and the OS-level descriptors into a temporary file and returns what was said.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output(fds: tuple[int, ...] = (1, 2), python_streams: bool = True) -> Iterator[Captured]:
    """Capture what is written to ``fds`` (C/C++ output) and, with ``python_streams``, to
    sys.stdout/sys.stderr. Use ``python_streams=False`` around imports: loggers created
    during an import keep the stream they saw."""
    result = Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    tmp = tempfile.TemporaryFile(mode="w+b")
    saved = {}
    try:
        for fd in fds:
            try:
                saved[fd] = os.dup(fd)
                os.dup2(tmp.fileno(), fd)
            except OSError:
                pass
        if python_streams:
            with contextlib.redirect_stdout(_Sink(tmp)), contextlib.redirect_stderr(_Sink(tmp)):
                yield result
        else:
            yield result
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)
        tmp.seek(0)
        result.text = tmp.read().decode("utf-8", "replace")
        tmp.close()


class _Sink:
    """A text stream that writes into a binary temp file (so Python prints land there too)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, s: str) -> int:
        if not self._fh.closed:
            self._fh.write(s.encode("utf-8", "replace"))
        return len(s)

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fh.fileno()


def quiet_frameworks() -> None:
    """Environment settings that silence framework start-up logs (set before importing them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "workbench", "torchinductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache


def import_quietly(*modules: str, extra: str, purpose: str):
    """Import heavy framework modules in order, with their start-up chatter (C++ logs, loader
    warnings) kept off the user's terminal; a missing one raises MissingDependencyError naming
    ``extra``. Returns the last module."""
    from workbench.core.errors import require

    quiet_frameworks()
    mod = None
    with captured_output(python_streams=False):
        for name in modules:
            mod = require(name, extra, purpose)
    return mod
