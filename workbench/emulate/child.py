"""Measure a model in a runtime inside a fresh Python process: the emulate children (:mod:`litert_child`,
:mod:`ort_child`, :mod:`pte_child`) each print one JSON line after their ``RESULT_PREFIX``; this runs one
and returns that document, or raises a RuntimeFailure naming the runtime when it timed out or crashed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import RuntimeFailure


@dataclass(frozen=True)
class ChildResult:
    result: dict
    stderr: str


def run_child(module: str, runtime: str, model: Path, args: list[str], timeout: float,
              env: dict | None = None) -> ChildResult:
    """``python -m module MODEL *args`` with this package importable; ``runtime`` names it in errors."""
    import workbench

    prefix = importlib.import_module(module).RESULT_PREFIX
    full_env = dict(os.environ)
    root = str(Path(workbench.__file__).resolve().parent.parent)
    full_env["PYTHONPATH"] = root + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
    for key, value in (env or {}).items():
        full_env.setdefault(key, value)
    argv = [sys.executable, "-m", module, str(Path(model).resolve()), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"{runtime} did not load and run '{model}' within {timeout:g} s; the process was stopped.") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(prefix):
            return ChildResult(json.loads(line[len(prefix):]), proc.stderr or "")
    tail = (proc.stderr or "").strip().splitlines()
    raise RuntimeFailure(f"{runtime} crashed or gave no result for '{model}' (exit code {proc.returncode}).",
                         hint=tail[-1] if tail else None)
