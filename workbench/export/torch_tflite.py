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
from workbench.export.torchscript_onnx import precheck_via_onnx, via_onnx
from workbench.export.torch_tflite_post import POST_SCHEMES, run_float_then_quantize
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


class Stages:
    """Which step of the PyTorch -> TFLite path is running, so a failure names it (and what passed)."""

    def __init__(self):
        self.current = "preparing the model"
        self.passed: list[str] = []

    def enter(self, name: str) -> None:
        if self.current and self.current != name:
            self.passed.append(self.current)
        self.current = name


TRACE = "tracing with torch.export"


def run(job: ExportJob) -> dict:
    if job.handle.format == "torchscript":  # torch.export cannot trace it: TorchScript -> ONNX -> TFLite
        return via_onnx(job, "tflite")
    if job.config.scheme in POST_SCHEMES:  # the float .tflite, then ai-edge-quantizer
        return run_float_then_quantize(job, run)
    litert_torch = import_litert_torch()
    torch, model, sample = traceable(job.handle)
    cfg = job.config
    if cfg.scheme == "int8" and cfg.io_dtype not in (None, "int8"):
        raise UnsupportedError(f"PyTorch int8 models from litert-torch have int8 inputs and outputs; --io-dtype {cfg.io_dtype} "
                               "is not available.", hint="Leave --io-dtype unset; workbench quantizes float inputs with the model's scale.")
    model, sample, nhwc = channel_last(litert_torch, model, sample, job.handle.inputs[0].layout)
    recipe = {"converter": "litert_torch.convert", "scheme": cfg.scheme, "nhwc_inputs": nhwc}
    stages = Stages()
    try:
        with captured_output():
            if cfg.scheme == "float":
                stages.enter("litert_torch.convert (tracing and lowering to TFLite)")
                edge = litert_torch.convert(model, (sample,))
            else:
                edge = quantize_pt2e(torch, litert_torch, model, sample, job.calib, cfg, nhwc, stages)
                recipe.update({"quantizer": "PT2E", "per_channel": cfg.per_channel,
                               "calibrator": cfg.calibrator if cfg.scheme == "int8" else None})
            stages.enter("writing the .tflite")
            edge.export(str(job.out))
    except RuntimeFailure:
        raise
    except Exception as exc:
        raise conversion_failure(job, exc, stages) from exc
    return recipe


def conversion_failure(job: ExportJob, exc: Exception, stages: Stages) -> RuntimeFailure:
    msg = str(exc).strip().splitlines()
    first = (msg[0] if msg else type(exc).__name__)[:400]
    layers = module_types(job.handle)
    hint = []
    if stages.current == TRACE:
        hint.append("The model does not trace with torch.export: make its forward free of data-dependent Python "
                    "control flow, or export it to ONNX.")
    elif TRACE in stages.passed:
        hint.append(f"The model traces with torch.export (checked); the failure is in litert-torch's "
                    f"{stages.current}, an upstream limitation for this model's layers.")
    if job.config.scheme != "float":
        hint.append("Try --scheme float (no PT2E quantization), or --format onnx --scheme int8 (ONNX Runtime's quantizer).")
    else:
        hint.append("Try --format onnx.")
    hint.append("--debug shows litert-torch's traceback.")
    return RuntimeFailure(f"litert-torch could not convert '{job.handle.path}' ({job.config.scheme}) while "
                          f"{stages.current}: {type(exc).__name__}: {first}"
                          + (f" (layer types: {', '.join(layers)})" if layers else ""), hint=" ".join(hint))


def module_types(handle) -> list[str]:
    """The leaf module classes of the model (for an ExportedProgram, from its nodes' module stacks)."""
    seen: list[str] = []
    ep = handle.meta.get("exported_program")
    if ep is not None:
        for node in ep.graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            path, typ = list(stack.values())[-1] if stack else ("", "")
            if path:  # not the root module
                cls = str(typ).rsplit(".", 1)[-1].strip("'>")
                if cls not in seen:
                    seen.append(cls)
        return seen[:12]
    model = handle.obj
    try:
        for _, m in model.named_modules():
            name = type(m).__name__
            if not list(m.children()) and name not in seen and name not in ("GraphModule", "InterpreterModule"):
                seen.append(name)
    except (AttributeError, TypeError):
        return []
    return seen[:12]


RECURRENT = ("GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNCell")


def at_risk(handle, cfg) -> bool:
    """Recurrent modules go through litert-torch's least-tested lowering: convert them in a child process."""
    return any(k in RECURRENT for k in module_types(handle))


def explain_crash(job: ExportJob, err):
    layers = module_types(job.handle)
    return type(err)(f"litert-torch crashed ({err.signal_name}) converting '{job.handle.path}' ({job.config.scheme})"
                     + (f"; the model's layer types: {', '.join(layers)}" if layers else "")
                     + (f"; last Python frame: {err.stack.splitlines()[-1]}" if err.stack else "") + ".",
                     hint="Try --scheme float, or --format onnx (ONNX Runtime's converter and quantizer).",
                     phase=err.phase, signal_name=err.signal_name, stack=err.stack, log=err.log)


def quantize_pt2e(torch, litert_torch, model, sample, calib, cfg, nhwc: bool, stages: Stages | None = None):
    from litert_torch.quantize.quant_config import QuantConfig as LtQuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    stages = stages or Stages()
    quantizer = pt2e_quantizer(cfg.per_channel, cfg.calibrator, is_dynamic=cfg.scheme == "dynamic")
    stages.enter(TRACE)
    exported = torch.export.export(model, (sample,)).module()
    stages.enter("PT2E prepare (inserting observers)")
    prepared = prepare_pt2e(exported, quantizer)
    stages.enter("PT2E calibration")
    with torch.no_grad():
        if cfg.scheme == "int8":
            xs = np.transpose(calib, (0, 2, 3, 1)) if nhwc else calib
            for i in range(len(xs)):  # the exported graph is specialised to the sample's batch of 1
                prepared(torch.from_numpy(np.ascontiguousarray(xs[i : i + 1], dtype=np.float32)))
        else:
            prepared(sample)
    stages.enter("PT2E convert (folding observers into quantize/dequantize pairs)")
    converted = convert_pt2e(prepared, fold_quantize=False)
    stages.enter("litert_torch.convert of the quantized graph (lowering to TFLite)")
    return litert_torch.convert(converted, (sample,), quant_config=LtQuantConfig(pt2e_quantizer=quantizer))


EXPORTERS.add(("torch", "tflite"), Exporter(run=run, schemes=("float", "dynamic", "int8", *POST_SCHEMES), calibrators=("minmax", "mse"),
                                            per_tensor=True, keep_float=False, io_dtypes=("float32", "int8", "int16"),
                                            isolate=at_risk, on_crash=explain_crash, precheck=precheck_via_onnx("tflite"),
                                            note="litert-torch's static int8 models have int8 inputs and outputs; fp16, int16x8 and weight-only schemes "
                                                 "quantize litert-torch's float .tflite with ai-edge-quantizer (min/max calibration)."))
