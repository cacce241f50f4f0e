"""ONNX Runtime's quantizer and .ort conversion, for .onnx models from any source.

int8: ``quantize_static`` in QDQ format (ONNX Runtime's recommended format for CPU),
signed int8 weights and activations, per-channel by default. Calibrators:
``minmax``, ``percentile`` (99.999th), and ``entropy`` with a real histogram search
(2048 bins, 128 quantized bins): ``quantize_static`` does not pass bin settings to its
entropy calibrator, which then degenerates to the full range (identical to min/max), so
the ranges are computed with ``create_calibrator`` and handed over through ONNX Runtime's
calibration cache. int16x8: QDQ with int16 activations and int8 weights. dynamic:
``quantize_dynamic`` (int8 weights). fp16: float16 weights and activations with float32
inputs and outputs (ONNX Runtime's float16 converter).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from workbench.core.errors import RuntimeFailure, WorkbenchError
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.core.quiet import captured_output

PERCENTILE = 99.999
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}

ONNX_EXPORTER_SETTINGS = dict(
    schemes=("float", "fp16", "dynamic", "int8", "int16x8"),
    calibrators=("minmax", "percentile", "entropy"),
    per_tensor=True,
    keep_float=False,
    io_dtypes=("float32",),
    note="ONNX QDQ models keep float32 inputs and outputs, the ONNX Runtime convention.",
)


class _Reader:
    """CalibrationDataReader over fitted samples, one sample per call (the model's batch is 1)."""

    def __init__(self, name: str, x: np.ndarray, batch: int):
        self.name, self.x, self.batch, self.i = name, x, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        xb = self.x[self.i : self.i + self.batch]
        self.i += self.batch
        return {self.name: np.ascontiguousarray(xb, dtype=np.float32)}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return (len(self.x) + self.batch - 1) // self.batch

    def set_range(self, start_index, end_index):  # used by ORT's strided calibration
        self.x = self.x[start_index:end_index]


def _input(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    return i.name, (i.shape[0] if isinstance(i.shape[0], int) else 1)


def quantize_onnx(src: Path, out: Path, cfg, calib: np.ndarray | None, tmp: Path, *, input_shape: tuple | None = None,
                  source: str | None = None) -> dict:
    """Quantize ``src`` into ``out``, then load and run ``out`` once in ONNX Runtime (see
    :mod:`workbench.export.onnx_checks`): a file ONNX Runtime refuses is never left behind."""
    from dataclasses import replace

    from onnxruntime import quantization as q

    from workbench.export import onnx_checks

    what = f"'{source or src.name}'"
    recipe = {"quantizer": "onnxruntime.quantization", "scheme": cfg.scheme, "per_channel": cfg.per_channel}
    if cfg.scheme in ("int8", "int16x8"):  # QDQ: per-channel DequantizeLinear needs opset 13
        prep = onnx_checks.prepare_opset(src, tmp, cfg.per_channel, what)
        src = prep.path
        recipe.update(prep.recipe or {})
        if prep.notes:
            recipe["notes"] = list(prep.notes)
        if prep.per_channel != cfg.per_channel:
            cfg = replace(cfg, per_channel=prep.per_channel)
    try:
        with captured_output():
            pre = tmp / "pre.onnx"
            q.shape_inference.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            copies = onnx_checks.split_shared_biases(pre) if cfg.scheme in ("int8", "int16x8") else 0
            if copies:
                recipe["shared_biases_copied"] = copies
            if cfg.scheme == "dynamic":
                warnings.warn("Dynamic-range ONNX models run Conv through ConvInteger, which is slow or missing in some "
                              "ONNX Runtime CPU builds (onnxruntime#12558); prefer --scheme int8.", stacklevel=2)
                q.quantize_dynamic(str(pre), str(out), per_channel=cfg.per_channel, weight_type=q.QuantType.QInt8)
            elif cfg.scheme == "fp16":
                _to_fp16(pre, out)
            else:
                name, batch = _input(pre)
                act = q.QuantType.QInt16 if cfg.scheme == "int16x8" else q.QuantType.QInt8
                kwargs = dict(quant_format=q.QuantFormat.QDQ, per_channel=cfg.per_channel, activation_type=act,
                              weight_type=q.QuantType.QInt8,
                              extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
                if cfg.calibrator == "entropy":
                    cache = tmp / "entropy_ranges.json"
                    _entropy_ranges(pre, _Reader(name, calib, batch), cache, tmp)
                    kwargs["calibration_cache_path"] = str(cache)
                    kwargs["calibrate_method"] = q.CalibrationMethod.Entropy
                    recipe["entropy"] = ENTROPY_BINS
                elif cfg.calibrator == "percentile":
                    kwargs["calibrate_method"] = q.CalibrationMethod.Percentile
                    kwargs["extra_options"]["CalibPercentile"] = PERCENTILE
                    recipe["percentile"] = PERCENTILE
                else:
                    kwargs["calibrate_method"] = q.CalibrationMethod.MinMax
                if cfg.scheme == "int16x8":
                    kwargs["extra_options"]["UseQDQContribOps"] = True
                q.quantize_static(str(pre), str(out), _Reader(name, calib, batch), **kwargs)
                recipe.update({"format": "QDQ", "calibrator": cfg.calibrator,
                               "activations": "int16" if cfg.scheme == "int16x8" else "int8", "weights": "int8"})
    except WorkbenchError:
        raise
    except Exception as exc:
        raise onnx_checks.quantizer_failure(exc, cfg.scheme) from exc
    recipe["per_channel"] = cfg.per_channel
    recipe["check"] = onnx_checks.check_runs(out, calib, f"The {cfg.scheme} model ONNX Runtime's quantizer wrote from {what}",
                                             input_shape)
    return recipe


def _entropy_ranges(model: Path, reader: _Reader, cache: Path, tmp: Path) -> None:
    from onnxruntime.quantization import calibrate as c

    cal = c.create_calibrator(str(model), augmented_model_path=str(tmp / "augmented.onnx"),
                              calibrate_method=c.CalibrationMethod.Entropy, extra_options=dict(ENTROPY_BINS))
    cal.collect_data(reader)
    c.save_tensors_data(cal.compute_data(), cache)


def _to_fp16(src: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(out))


def to_ort_format(src: Path, out: Path) -> dict:
    """Save the model in ONNX Runtime's .ort flatbuffer format (for minimal and mobile builds)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.save_model_format", "ORT")
    with tempfile.TemporaryDirectory(prefix="workbench-ort-") as tmp:
        tmp_out = Path(tmp) / "model.ort"
        so.optimized_model_filepath = str(tmp_out)
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RuntimeFailure(f"ONNX Runtime could not convert the model to .ort: {str(exc).strip().splitlines()[0]}") from None
        shutil.copyfile(tmp_out, out)
    return {"ort_format": {"optimization": "basic", "runtime": ort.__version__}}


PROTOBUF_LIMIT = 2**31 - 1  # a single-file ONNX model must stay under 2 GB


def single_file(src: Path, out: Path) -> bool:
    """Write ``src`` with its external data (model.onnx + model.onnx.data, what torch.onnx.export
    writes) to ``out`` as one self-contained file. Returns False when ``src`` has no external data."""
    from workbench.core.errors import UnsupportedError
    from workbench.frontends.onnx_reader import model_files

    files = model_files(src)
    if len(files) == 1:
        return False
    total = sum(f.stat().st_size for f in files)
    if total >= PROTOBUF_LIMIT:
        raise UnsupportedError(f"'{src}' with its external data is {total / 2**30:.1f} GiB; a single ONNX file is "
                               "limited to 2 GiB, and this tool writes single files.",
                               hint="Quantize it with onnxruntime.quantization directly (use_external_data_format=True).")
    import onnx

    onnx.save(onnx.load(str(src), load_external_data=True), str(out))
    return True


def run_onnx_to_onnx(job: ExportJob) -> dict:
    shape = job.handle.inputs[0].shape if job.handle.inputs else None
    if job.config.scheme == "float":
        inlined = single_file(job.handle.path, job.out)
        if not inlined:
            shutil.copyfile(job.handle.path, job.out)
        from workbench.export.onnx_checks import check_runs

        check = check_runs(job.out, job.calib, f"'{job.handle.path.name}'", shape)
        return {"copied": True, **({"external_data_inlined": True} if inlined else {}), "check": check}
    with tempfile.TemporaryDirectory(prefix="workbench-onnx-") as tmp:
        src = Path(tmp) / "source.onnx"
        inlined = single_file(job.handle.path, src)
        recipe = quantize_onnx(src if inlined else job.handle.path, job.out, job.config, job.calib, Path(tmp),
                               input_shape=shape, source=job.handle.path.name)
        return {**recipe, **({"external_data_inlined": True} if inlined else {})}


def ort_from(run_onnx):
    """An .ort exporter from an .onnx one: write the .onnx to a temporary file (checked by the .onnx
    exporter), convert it, then load and run the .ort once too."""

    def run(job: ExportJob) -> dict:
        from dataclasses import replace

        from workbench.export.onnx_checks import check_runs

        with tempfile.TemporaryDirectory(prefix="workbench-ort-") as tmp:
            f = Path(tmp) / "model.onnx"
            recipe = run_onnx(replace(job, out=f))
            recipe.update(to_ort_format(f, job.out))
        shape = job.handle.inputs[0].shape if job.handle.inputs else None
        recipe["ort_check"] = check_runs(job.out, job.calib, f"The .ort file converted from '{job.handle.path.name}'", shape)
        return recipe

    return run


def refuse_ort_source(handle) -> None:
    """An .ort file is ONNX Runtime's final, optimized form: nothing converts or quantizes it further."""
    if handle.format == "ort":
        from workbench.core.errors import UnsupportedError

        raise UnsupportedError(f"'{handle.path}' is an ONNX Runtime .ort file, the end of the ONNX path: it is not "
                               "converted or quantized further.",
                               hint="Export or quantize the .onnx file it was made from (--format onnx or ort).")


EXPORTERS.add(("onnx", "onnx"), Exporter(run=run_onnx_to_onnx, precheck=refuse_ort_source, **ONNX_EXPORTER_SETTINGS))
EXPORTERS.add(("onnx", "ort"), Exporter(run=ort_from(run_onnx_to_onnx), precheck=refuse_ort_source, **ONNX_EXPORTER_SETTINGS))
