"""PyTorch -> .tflite schemes that litert-torch's PT2E path lacks (fp16, int16x8, weight-only int8/int4):
the float .tflite from litert-torch, then ai-edge-quantizer on that file (:mod:`tflite_quant`).

Post-processing the float file rather than passing TFLite converter flags to litert-torch
(``_litert_converter_flags``, a private argument in 0.10) keeps to public APIs and gives the
same recipes as quantizing any other float .tflite. fp16 is held to a parity tolerance against
the PyTorch model itself (float16 weights keep about three significant digits); the
calibrated and weight-only schemes are lossy by design and are measured (and judged by --eval).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from workbench.core.config import QuantConfig
from workbench.export import parity

POST_SCHEMES = ("fp16", "int16x8", "weight-int8", "weight-int4")


def run_float_then_quantize(job, run_float) -> dict:
    from workbench.export.tflite_quant import quantize_tflite
    from workbench.frontends import load

    cfg = job.config
    if cfg.needs_calibration and cfg.calibrator != "minmax":
        from workbench.core.errors import UnsupportedError

        raise UnsupportedError(f"--calibrator {cfg.calibrator} is not available for PyTorch -> {cfg.scheme} TFLite "
                               "(ai-edge-quantizer calibrates with min/max).", hint="Use --calibrator minmax, or --scheme int8.")
    with tempfile.TemporaryDirectory(prefix="workbench-torch-post-") as tmp:
        f = Path(tmp) / "float.tflite"
        recipe = run_float(dataclasses.replace(job, config=QuantConfig(per_channel=cfg.per_channel), out=f))
        float_handle = load(f)
        nhwc = bool(recipe.get("nhwc_inputs"))
        calib = job.calib
        if calib is not None and nhwc:
            calib = np.ascontiguousarray(np.transpose(calib, (0, 2, 3, 1)))
        post = quantize_tflite(float_handle, job.out, cfg, calib, where=f"the float .tflite of '{job.handle.path}'",
                               check_fp16=False)
    recipe.update({"scheme": cfg.scheme, "post_quantizer": post})
    x = parity.parity_inputs(job.handle.inputs[0].shape, job.calib)
    ref = parity.run_model(job.handle, x)
    cand = parity.run_model(job.out, np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))) if nhwc else x)
    what = f"PyTorch -> {cfg.scheme} TFLite of '{job.handle.path}'"
    recipe["parity" if cfg.scheme == "fp16" else "agreement_with_float"] = (
        parity.check(ref, cand, what, parity.FP16) if cfg.scheme == "fp16" else parity.measure(ref, cand))
    return recipe
