"""PyTorch models to ONNX with ``torch.onnx.export`` (the dynamo exporter), batch 1 as on the edge."""

from __future__ import annotations

import tempfile
from pathlib import Path

from workbench.core.errors import RuntimeFailure
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.onnx_checks import check_runs
from workbench.export.onnx_quant import ONNX_EXPORTER_SETTINGS, ort_from, quantize_onnx
from workbench.export.torch_common import traceable
from workbench.export.torchscript_onnx import export_torchscript_onnx, precheck_onnx
from workbench.core.quiet import captured_output

OPSET = 18


def export_float_onnx(job: ExportJob, out: Path) -> dict:
    if job.handle.format == "torchscript":  # torch.export cannot trace it: the TorchScript exporter, parity-checked
        return export_torchscript_onnx(job, out)
    torch, model, sample = traceable(job.handle)
    try:
        with captured_output():
            torch.onnx.export(model, (sample,), str(out), dynamo=True, opset_version=OPSET,
                              input_names=["input"], output_names=["output"], external_data=False)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise RuntimeFailure(f"torch.onnx.export failed for '{job.handle.path}': {(msg[0] if msg else type(exc).__name__)[:400]}",
                             hint="Check that the model traces with torch.export.") from None
    return {"exporter": "torch.onnx.export (dynamo)", "opset": OPSET}


def run_onnx(job: ExportJob) -> dict:
    shape = job.handle.inputs[0].shape if job.handle.inputs else None
    if job.config.scheme == "float":
        recipe = export_float_onnx(job, job.out)
        recipe["check"] = check_runs(job.out, job.calib, f"The ONNX export of '{job.handle.path.name}'", shape)
        return recipe
    with tempfile.TemporaryDirectory(prefix="workbench-onnx-") as tmp:
        f = Path(tmp) / "float.onnx"
        recipe = export_float_onnx(job, f)
        recipe.update(quantize_onnx(f, job.out, job.config, job.calib, Path(tmp), input_shape=shape,
                                    source=job.handle.path.name))
    return recipe


EXPORTERS.add(("torch", "onnx"), Exporter(run=run_onnx, precheck=precheck_onnx, **ONNX_EXPORTER_SETTINGS))
EXPORTERS.add(("torch", "ort"), Exporter(run=ort_from(run_onnx), precheck=precheck_onnx, **ONNX_EXPORTER_SETTINGS))
