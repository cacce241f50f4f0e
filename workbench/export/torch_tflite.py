"""PyTorch models to .tflite through litert-torch.

float: ``litert_torch.convert``. int8 (static, calibrated on the real calibration set) and
dynamic: PT2E quantization (torchao's prepare_pt2e/convert_pt2e with litert-torch's
PT2EQuantizer), then ``litert_torch.convert`` with that quantizer. Image models get NHWC
inputs (``litert_torch.to_channel_last_io``), so no transposes are left in the graph.
Calibrators: ``minmax`` (MinMaxObserver) and ``mse`` (HistogramObserver, which picks the
range with the least L2 quantization error; litert-torch's own default).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from workbench.core.errors import RuntimeFailure, UnsupportedError
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.torch_common import import_litert_torch, traceable
from workbench.core.quiet import captured_output


def pt2e_quantizer(per_channel: bool, calibrator: str = "mse", is_dynamic: bool = False, is_qat: bool = False):
    from litert_torch.quantize.pt2e_quantizer import MinMaxObserver, PT2EQuantizer, get_symmetric_quantization_config

    cfg = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=is_dynamic, is_qat=is_qat)
    if calibrator == "minmax" and not is_dynamic and not is_qat:
        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    return PT2EQuantizer().set_global(cfg)


def channel_last(litert_torch, model, sample, layout: str | None):
    if layout == "NCHW" and sample.dim() == 4:
        return litert_torch.to_channel_last_io(model, args=[0]), sample.permute(0, 2, 3, 1).contiguous(), True
    return model, sample, False


def run(job: ExportJob) -> dict:
    litert_torch = import_litert_torch()
    torch, model, sample = traceable(job.handle)
    cfg = job.config
    if cfg.scheme == "int8" and cfg.io_dtype not in (None, "int8"):
        raise UnsupportedError(f"PyTorch int8 models from litert-torch have int8 inputs and outputs; --io-dtype {cfg.io_dtype} "
                               "is not available.", hint="Leave --io-dtype unset; workbench quantizes float inputs with the model's scale.")
    model, sample, nhwc = channel_last(litert_torch, model, sample, job.handle.inputs[0].layout)
    recipe = {"converter": "litert_torch.convert", "scheme": cfg.scheme, "nhwc_inputs": nhwc}
    try:
        with captured_output():
            if cfg.scheme == "float":
                edge = litert_torch.convert(model, (sample,))
            else:
                edge = quantize_pt2e(torch, litert_torch, model, sample, job.calib, cfg, nhwc)
                recipe.update({"quantizer": "PT2E", "per_channel": cfg.per_channel,
                               "calibrator": cfg.calibrator if cfg.scheme == "int8" else None})
            edge.export(str(job.out))
    except RuntimeFailure:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise RuntimeFailure(f"litert-torch could not convert '{job.handle.path}' ({cfg.scheme}): "
                             f"{(msg[0] if msg else type(exc).__name__)[:400]}",
                             hint="Check that the model traces with torch.export; try --scheme float to isolate the problem.") from None
    return recipe


def quantize_pt2e(torch, litert_torch, model, sample, calib, cfg, nhwc: bool):
    from litert_torch.quantize.quant_config import QuantConfig as LtQuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = pt2e_quantizer(cfg.per_channel, cfg.calibrator, is_dynamic=cfg.scheme == "dynamic")
    exported = torch.export.export(model, (sample,)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        if cfg.scheme == "int8":
            xs = np.transpose(calib, (0, 2, 3, 1)) if nhwc else calib
            for i in range(len(xs)):  # the exported graph is specialised to the sample's batch of 1
                prepared(torch.from_numpy(np.ascontiguousarray(xs[i : i + 1], dtype=np.float32)))
        else:
            prepared(sample)
    converted = convert_pt2e(prepared, fold_quantize=False)
    return litert_torch.convert(converted, (sample,), quant_config=LtQuantConfig(pt2e_quantizer=quantizer))


EXPORTERS.add(("torch", "tflite"), Exporter(run=run, schemes=("float", "dynamic", "int8"), calibrators=("minmax", "mse"),
                                            per_tensor=True, keep_float=False, io_dtypes=("float32", "int8"),
                                            note="litert-torch's static int8 models have int8 inputs and outputs. fp16 and int16x8 from PyTorch: export to ONNX, or use the Keras path."))
