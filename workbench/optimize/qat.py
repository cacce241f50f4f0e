"""Quantization-aware training: ``qat(model, "out.tflite", QATConfig(), train=...)`` -> :class:`QATReport`.

One handler per framework in :data:`QAT_HANDLERS` (tfmot for Keras, PT2E through litert-torch
for PyTorch) fine-tunes with fake quantization and writes an int8 .tflite. This module then
puts three numbers side by side, each measured in its real runtime on the same validation
samples: the float model (its own framework), post-training quantization (``api.convert``
int8, calibrated on the training data, run in LiteRT) and the QAT model (LiteRT). It also
lists the operators the QAT model still computes in float, read from the .tflite itself.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.core.errors import ConfigError, UnsupportedError
from workbench.core.files import atomic_path, check_output
from workbench.frontends import ModelHandle, load
from workbench.frontends.loader import LoadOptions
from workbench.optimize.common import TrainingData, open_store, prepare_data
from workbench.optimize.config import QATConfig
from workbench.optimize.train import CheckpointStore, ProgressFn
from workbench.core.registry import Registry

QAT_HANDLERS: Registry[Callable] = Registry("QAT framework")
QUANT_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class QATJob:
    handle: ModelHandle
    config: QATConfig
    data: TrainingData
    store: CheckpointStore | None
    resume: bool
    progress: ProgressFn | None


def _register_builtin() -> None:
    if QAT_HANDLERS.keys():
        return
    from workbench.optimize import qat_keras, qat_torch

    QAT_HANDLERS.add("keras", qat_keras.run)
    QAT_HANDLERS.add("torch", qat_torch.run)


@dataclass(frozen=True)
class QATReport:
    model: str
    output: str
    config: dict
    data: dict
    training: dict
    float: dict
    ptq: dict
    qat: dict
    extra: dict

    def to_dict(self) -> dict:
        return {"model": self.model, "output": self.output, "config": self.config, "data": self.data,
                "training": self.training, "float": self.float, "ptq": self.ptq, "qat": self.qat, **self.extra}


def float_ops(tflite_path: str | Path) -> list[dict]:
    """Operators of a .tflite that still compute in float32 (quantize/dequantize excluded)."""
    from workbench.frontends.tflite_reader import read_tflite

    g = read_tflite(tflite_path)
    out = []
    for op in g.ops:
        if op.kind in QUANT_OPS:
            continue
        tensors = [g.tensors[i] for i in op.inputs + op.outputs if i >= 0]
        if any(t.dtype == "float32" and not t.const for t in tensors):
            out.append({"index": op.index, "op": op.kind, "name": op.name})
    return out


def qat(model: str | Path | ModelHandle, out: str | Path, config: QATConfig, train, val=None, *,
        load_options: LoadOptions | None = None, overwrite: bool = False, resume: bool = False,
        progress: ProgressFn | None = None, compare: bool = True) -> QATReport:
    """Fine-tune ``model`` with fake quantization on ``train`` and write an int8 .tflite to ``out``.

    Without ``val``, 10% of ``train`` is held out for the accuracies. Checkpoints go to
    ``OUT.ckpt/`` after every epoch; ``resume=True`` continues an interrupted run.
    """
    from workbench.optimize.measure import accuracy_of, file_sizes, int8_tflite

    out = Path(out)
    if out.suffix.lower() != ".tflite":
        raise ConfigError(f"Output '{out}' should end in .tflite: QAT ends in an int8 TFLite model.",
                          hint=f"Use -o {out.with_suffix('.tflite').name}")
    check_output(out, overwrite)
    onnx_out = out.with_suffix(".onnx") if config.onnx else None
    if onnx_out is not None:
        check_output(onnx_out, overwrite)
    handle = model if isinstance(model, ModelHandle) else load(model, load_options)
    if handle.framework not in ("torch", "keras"):
        raise UnsupportedError(f"QAT needs the training model; '{handle.path}' is {handle.format}.",
                               hint="Give the Keras (.keras, .h5) or PyTorch (state_dict with --factory) model.")
    _register_builtin()
    handler = QAT_HANDLERS.get(handle.framework)
    data = prepare_data(handle, train, val, config.train)
    technique = {"qat": {**config.to_dict(), "train": {k: v for k, v in config.train.to_dict().items() if k != "epochs"}}}
    store = open_store(out, handle, technique, data, resume, overwrite)
    t0 = time.perf_counter()
    job = QATJob(handle=handle, config=config, data=data, store=store, resume=resume, progress=progress)
    with tempfile.TemporaryDirectory(prefix="workbench-qat-") as tmpdir:
        tmp_onnx = Path(tmpdir) / "qat.onnx" if onnx_out is not None else None
        with atomic_path(out) as tmp:
            extra = handler(job, tmp, tmp_onnx)
            fl = float_ops(tmp)
            unwrapped = extra.pop("unwrapped_layers", None) or []
            if config.on_unsupported == "error" and fl:
                raise UnsupportedError(
                    f"The QAT model of '{handle.path}' still computes {len(fl)} operator(s) in float: "
                    + ", ".join(f"{o['op']} ({o['name'][-60:]})" for o in fl[:8]) + ".",
                    hint="The quantizer does not cover them; drop --strict to accept float fallbacks.")
        training = extra.pop("training")
        onnx_info = extra.pop("onnx", None)
        if onnx_info and "path" in onnx_info:
            with atomic_path(onnx_out) as tmp:
                Path(onnx_info["path"]).replace(tmp)
            onnx_info = {"path": str(onnx_out), **file_sizes(onnx_out), "accuracy": accuracy_of(onnx_out, data.val, "ort")}
        store.clear()
        float_side = {"accuracy": accuracy_of(handle, data.val), "runtime": handle.framework}
        qat_side = {"accuracy": accuracy_of(out, data.val, "litert"), "runtime": "litert",
                    "tflite_bytes": file_sizes(out)["bytes"], "float_ops": fl, "unwrapped_layers": unwrapped}
        ptq_side = {}
        if compare:
            ptq_path = Path(tmpdir) / "ptq.tflite"
            try:
                int8_tflite(handle, data.train, ptq_path, config.calib_samples, seed=config.train.seed,
                            per_channel=config.per_channel)
                ptq_side = {"accuracy": accuracy_of(ptq_path, data.val, "litert"), "runtime": "litert",
                            "tflite_bytes": file_sizes(ptq_path)["bytes"], "calib_samples": min(config.calib_samples, len(data.train)),
                            "float_ops": float_ops(ptq_path)}
            except UnsupportedError as exc:
                ptq_side = {"error": exc.message}
    for side in (qat_side, ptq_side):
        if side.get("accuracy") is not None and float_side["accuracy"] is not None:
            side["drop_points"] = round(100 * (float_side["accuracy"] - side["accuracy"]), 3)
    extra_out = {**extra, "seconds": round(time.perf_counter() - t0, 2)}
    if onnx_info is not None:
        extra_out["onnx"] = onnx_info
    report = QATReport(model=str(handle.path), output=str(out), config=config.to_dict(), data=data.describe(),
                       training=training.to_dict(), float=float_side, ptq=ptq_side, qat=qat_side, extra=extra_out)
    _manifest(out, handle, report)
    return report


def _manifest(out: Path, handle: ModelHandle, report: QATReport) -> None:
    from workbench.export.artifact import Artifact

    d = report.to_dict()
    Artifact(path=out, format="tflite", source=Path(handle.path), config={"qat": report.config, "scheme": "int8"},
             metrics={"float": d["float"], "ptq": d["ptq"], "qat": d["qat"]},
             extra={"training": report.training, "data": report.data}).write_manifest()
    onnx = d.get("onnx") or {}
    if onnx.get("path"):
        Artifact(path=Path(onnx["path"]), format="onnx", source=Path(handle.path),
                 config={"qat": report.config, "scheme": "int8", "encoding": "QDQ"},
                 metrics={"float": d["float"], "onnx": onnx}, extra={"training": report.training, "data": report.data},
                 ).write_manifest()
