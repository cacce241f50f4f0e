"""Run a step that can crash the interpreter (a segfault or abort inside TensorFlow's or
litert-torch's C++ code) in a child process, and turn a signal death into a typed error.

    result = run_isolated("workbench.export.keras_tflite:run_spec", spec, phase="TFLite conversion",
                          on_crash=explain)

The child is a fresh interpreter (``python -m workbench.core.isolate``), not a fork: TensorFlow's
and PyTorch's thread pools do not survive ``fork`` (a forked TensorFlow child waits forever on
its intra-op pool, measured). The function is named by ``module:function`` and receives
``payload``, which must pickle (a path, options and numpy arrays, not a framework object), so
the child loads the model itself. The child sends back the function's result, or the
exception it raised with its formatted traceback (chained as the cause, so ``--debug`` shows
it). When the child dies from a signal, :class:`ChildCrashed` (a RuntimeFailure) says which
phase, which signal and the Python stack at the crash (``faulthandler``), and ``on_crash``
turns it into advice. A fresh interpreter costs seconds (TensorFlow's import and the model's load: +6.6 s
on the digits Keras model, whose conversion takes 0.4 s), so callers isolate the steps known to be at risk
(:func:`should_isolate`); ``WORKBENCH_ISOLATION=always|never`` overrides that.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

from workbench.core.errors import RuntimeFailure, WorkbenchError

ENV_MODE = "WORKBENCH_ISOLATION"  # "auto" (default: where the step says it is at risk), "always", "never"


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in the child; chained as the cause."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


class ChildCrashed(RuntimeFailure):
    """The child died from a signal (or exited without a result) during ``phase``."""

    def __init__(self, message: str, *, hint: str | None = None, phase: str = "", signal_name: str = "",
                 stack: str = "", log: str = ""):
        super().__init__(message, hint=hint)
        self.phase = phase
        self.signal_name = signal_name
        self.stack = stack  # Python frames at the crash, innermost last ("" when unknown)
        self.log = log  # the last lines the child wrote to stderr


def isolation_mode() -> str:
    mode = os.environ.get(ENV_MODE, "auto").strip().lower()
    return mode if mode in ("auto", "always", "never") else "auto"


def should_isolate(at_risk: bool) -> bool:
    """Whether to pay for a child process (about 6 s with TensorFlow: a fresh interpreter imports it and loads
    the model again): when the step is known to be at risk, or always/never as WORKBENCH_ISOLATION says."""
    mode = isolation_mode()
    return mode == "always" or (mode == "auto" and at_risk)


def resolve(ref: str) -> Callable:
    import importlib

    mod, _, name = ref.partition(":")
    return getattr(importlib.import_module(mod), name)


def run_isolated(ref: str, payload, *, phase: str, on_crash: Callable[[ChildCrashed], WorkbenchError | None] | None = None):
    """``resolve(ref)(payload)`` in a child interpreter; returns its (picklable) result."""
    if isolation_mode() == "never":
        return resolve(ref)(payload)
    with tempfile.TemporaryDirectory(prefix="workbench-child-") as tmp:
        t = Path(tmp)
        (t / "in.pkl").write_bytes(pickle.dumps((ref, payload, list(sys.path))))
        env = dict(os.environ)
        with open(t / "stderr", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "workbench.core.isolate", str(t)], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, env=env)
            try:
                code = proc.wait()
            except BaseException:  # interrupted: take the child with us
                proc.kill()
                proc.wait()
                raise
        out = t / "out.pkl"
        log = (t / "stderr").read_text("utf-8", "replace")
        if (t / "crash").exists():
            log += "\n" + (t / "crash").read_text("utf-8", "replace")
        if out.exists() and code == 0:
            try:
                kind, value, tb_text = pickle.loads(out.read_bytes())
            except Exception as exc:  # an exception type that cannot be rebuilt here
                raise RuntimeFailure(f"{phase} failed in a child process and its result could not be read back "
                                     f"({type(exc).__name__}: {exc}).") from None
            if kind == "ok":
                return value
            raise value from RemoteTraceback(tb_text)
    raise _crash(phase, code, log, on_crash)


def signal_name(code: int) -> str:
    if code < 0:
        import signal

        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def python_frames(log: str) -> list[str]:
    """'File "x.py", line 3 in f' lines of the faulthandler dump in ``log``, innermost last."""
    start = max(log.rfind("Fatal Python error"), 0)
    frames = [ln.strip() for ln in log[start:].splitlines() if ln.strip().startswith("File ")]
    return list(reversed(frames))  # faulthandler prints the innermost frame first


def _crash(phase: str, code: int, log: str, on_crash) -> WorkbenchError:
    name = signal_name(code)
    frames = python_frames(log)
    where = f" (last Python frame: {frames[-1]})" if frames else ""
    tail = "\n".join(ln for ln in log.strip().splitlines()[-15:])
    err = ChildCrashed(f"{phase} crashed its process ({name}){where}.", phase=phase, signal_name=name,
                       stack="\n".join(frames), log=tail)
    if on_crash is not None:
        better = on_crash(err)
        if better is not None:
            return better
    return err


def _child(folder: str) -> int:
    import faulthandler

    t = Path(folder)
    crash = open(t / "crash", "w")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(file=crash)  # its own file: converters redirect fd 2 while they run
    ref, payload, path = pickle.loads((t / "in.pkl").read_bytes())
    sys.path[:] = path + [p for p in sys.path if p not in path]  # the parent's (a --factory module, tests)
    try:
        out = ("ok", resolve(ref)(payload), "")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        out = ("err", exc, traceback.format_exc())
    try:
        data = pickle.dumps(out)
    except Exception:
        exc = out[1] if out[0] == "err" else None
        text = f"{type(exc).__name__}: {exc}" if exc is not None else "the result could not be pickled"
        data = pickle.dumps(("err", RuntimeFailure(text), out[2] or traceback.format_exc()))
    (t / "out.pkl").write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
