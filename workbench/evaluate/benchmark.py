"""``benchmark``: one model on every stack it can be deployed with, measured side by side.

For a PyTorch model: PyTorch eager, torch.export, TorchScript, ONNX Runtime (float, int8),
LiteRT (float, dynamic, int8), TFLite Micro (int8) and ExecuTorch with XNNPACK (float, int8); a .pte
runs in ExecuTorch as given. For a Keras model: Keras, LiteRT
(float, fp16, dynamic, int8) and TFLite Micro (float, int8). For an .onnx model: ONNX Runtime
on the file as given, and on its fp16, dynamic and int8 versions (ONNX Runtime's quantizer), then LiteRT
(float, int8) and TFLite Micro (int8) on the .tflite the ONNX -> TFLite route writes (onnx2tf, then this
tool's PTQ). Each stack reports file size,
load time, single-sample latency on this machine (threads stated), and with data the
accuracy and agreement with the original. Latency is the median of single-sample calls
after warm-up; TFLite Micro runs in a child process, so its figure is the batch time per
sample measured inside that process (no process start-up included).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.data.dataset import Dataset, fit_to_input
from workbench.core.errors import WorkbenchError
from workbench.frontends.handle import ModelHandle


@dataclass(frozen=True)
class Stack:
    name: str
    runtime: str
    build: Callable[[ModelHandle, Path, Dataset], Path]  # (model, folder, calibration data) -> the file this stack loads


def _convert(fmt: str, scheme: str):
    def build(h: ModelHandle, tmp: Path, calib: Dataset) -> Path:
        from workbench.export.convert import convert_model

        out = tmp / f"{scheme}.{fmt}"
        convert_model(h, fmt, out, scheme=scheme, calib=calib, write_manifest=False)
        return out

    return build


def _torch_export(h: ModelHandle, tmp: Path, calib: Dataset) -> Path:
    import torch

    p = tmp / "model.pt2"
    torch.export.save(torch.export.export(h.obj, (torch.zeros(*h.inputs[0].shape),)), p)
    return p


def _torchscript(h: ModelHandle, tmp: Path, calib: Dataset) -> Path:
    import torch

    p = tmp / "model.ts"
    torch.jit.save(torch.jit.trace(h.obj, torch.zeros(*h.inputs[0].shape)), p)
    return p


def _reload(h: ModelHandle, tmp: Path, calib: Dataset) -> Path:
    """The original file itself, so its load time is measured like every other stack's."""
    return Path(h.path)


STACKS = {
    "torch": [
        Stack("pytorch eager", "torch", _reload),
        Stack("torch.export", "torch", _torch_export),
        Stack("torchscript", "torch", _torchscript),
        Stack("onnxruntime float", "ort", _convert("onnx", "float")),
        Stack("onnxruntime int8", "ort", _convert("onnx", "int8")),
        Stack("litert float", "litert", _convert("tflite", "float")),
        Stack("litert dynamic", "litert", _convert("tflite", "dynamic")),
        Stack("litert int8", "litert", _convert("tflite", "int8")),
        Stack("tflite-micro int8", "tflm", _convert("tflite", "int8")),
        Stack("executorch float", "executorch", _convert("executorch", "float")),
        Stack("executorch int8", "executorch", _convert("executorch", "int8")),
    ],
    "executorch": [
        Stack("executorch (as given)", "executorch", _reload),
    ],
    "onnx": [
        Stack("onnxruntime (as given)", "ort", _reload),
        Stack("onnxruntime fp16", "ort", _convert("onnx", "fp16")),
        Stack("onnxruntime dynamic", "ort", _convert("onnx", "dynamic")),
        Stack("onnxruntime int8", "ort", _convert("onnx", "int8")),
        Stack("litert float", "litert", _convert("tflite", "float")),
        Stack("litert int8", "litert", _convert("tflite", "int8")),
        Stack("tflite-micro int8", "tflm", _convert("tflite", "int8")),
    ],
    "keras": [
        Stack("keras", "keras", _reload),
        Stack("litert float", "litert", _convert("tflite", "float")),
        Stack("litert fp16", "litert", _convert("tflite", "fp16")),
        Stack("litert dynamic", "litert", _convert("tflite", "dynamic")),
        Stack("litert int8", "litert", _convert("tflite", "int8")),
        Stack("tflite-micro float", "tflm", _convert("tflite", "float")),
        Stack("tflite-micro int8", "tflm", _convert("tflite", "int8")),
    ],
}


def _import_executorch() -> None:
    from workbench.frontends.executorch_models import import_runtime

    import_runtime()


# Runtimes whose library takes seconds to import (ExecuTorch's imports torch): imported before the load is
# timed, so "load ms" is the model's load, as for the runtimes the process has already imported.
LIBRARY_IMPORTS = {"executorch": _import_executorch}


def _latency(runner, x: np.ndarray, runs: int) -> float:
    if runner.name == "tflm":
        n = min(len(x), max(runs, 50))
        runner.predict(x[:n])
        per = runner.last_invoke_seconds / n if getattr(runner, "last_invoke_seconds", None) else None
        return per * 1000 if per else float("nan")
    one = x[:1]
    for _ in range(5):
        runner.predict(one)
    times = []
    for i in range(runs):
        s = x[i % len(x) : i % len(x) + 1]
        t0 = time.perf_counter()
        runner.predict(s)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def benchmark(handle: ModelHandle, data: Dataset | None, calib: Dataset, threads: int = 1, runs: int = 200,
              only: tuple[str, ...] = (), on_row: Callable[[dict], None] | None = None) -> dict:
    from workbench.evaluate.compare import agreement, predict
    from workbench.frontends import load
    from workbench.runtimes import open_runner

    stacks = STACKS.get(handle.framework)
    if stacks is None:
        raise WorkbenchError(f"benchmark compares deployment stacks of PyTorch, Keras, ONNX and ExecuTorch models; "
                             f"'{handle.path}' is {handle.format}.",
                             hint="Pass the original PyTorch or Keras model, an .onnx model or a .pte program.")
    probe = data if data is not None else calib.take(min(len(calib), 200))
    rows = []
    ref_out = None
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as tmp:
        for st in stacks:
            if only and st.name not in only:
                continue
            row = {"stack": st.name, "runtime": st.runtime, "threads": threads}
            try:
                folder = Path(tmp) / st.name.replace(" ", "_")
                folder.mkdir()
                path = st.build(handle, folder, calib)
                row["bytes"] = path.stat().st_size
                extra = {"factory": handle.meta.get("factory"), "input_shape": handle.inputs[0].shape} if st.runtime == "torch" else {}
                if st.runtime in LIBRARY_IMPORTS:
                    LIBRARY_IMPORTS[st.runtime]()
                t0 = time.perf_counter()
                target = load(path, **extra)
                runner = open_runner(target, st.runtime, **({} if st.runtime == "tflm" else {"threads": threads}))
                row["load_ms"] = (time.perf_counter() - t0) * 1000
                spec = runner.inputs[0]
                x = fit_to_input(probe.x, spec.shape, spec.layout, probe.name)
                row["latency_ms"] = _latency(runner, x, runs)
                y = predict(runner, probe, st.name)
                if ref_out is None:
                    ref_out = y
                m = agreement(ref_out, y, probe.y)
                row.update({k: m.get(k) for k in ("accuracy", "argmax_agreement", "sqnr_db")})
            except WorkbenchError as exc:
                row["error"] = exc.message
            rows.append(row)
            if on_row:
                on_row(row)
    return {"model": str(handle.path), "framework": handle.framework, "samples": len(probe), "threads": threads, "rows": rows}
