"""PyTorch models to ONNX with ``torch.onnx.export`` (the dynamo exporter), batch 1 as on the edge."""

from __future__ import annotations

import tempfile
from pathlib import Path

from workbench.errors import RuntimeFailure
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.onnx_quant import ONNX_EXPORTER_SETTINGS, quantize_onnx, to_ort_format
from workbench.export.torch_common import traceable
from workbench.quiet import captured_output

OPSET = 18


def export_float_onnx(job: ExportJob, out: Path) -> dict:
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
    if job.config.scheme == "float":
        return export_float_onnx(job, job.out)
    with tempfile.TemporaryDirectory(prefix="workbench-onnx-") as tmp:
        f = Path(tmp) / "float.onnx"
        recipe = export_float_onnx(job, f)
        recipe.update(quantize_onnx(f, job.out, job.config, job.calib, Path(tmp)))
    return recipe


def run_ort(job: ExportJob) -> dict:
    with tempfile.TemporaryDirectory(prefix="workbench-ort-") as tmp:
        f = Path(tmp) / "model.onnx"
        recipe = run_onnx(ExportJob(handle=job.handle, config=job.config, calib=job.calib, out=f, options=job.options))
        recipe.update(to_ort_format(f, job.out))
    return recipe


EXPORTERS.add(("torch", "onnx"), Exporter(run=run_onnx, **ONNX_EXPORTER_SETTINGS))
EXPORTERS.add(("torch", "ort"), Exporter(run=run_ort, **ONNX_EXPORTER_SETTINGS))
