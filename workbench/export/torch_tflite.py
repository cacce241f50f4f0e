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
from workbench.export.torch_common import calibrate, import_litert_torch, traceable
from workbench.export.torchscript_onnx import precheck_via_onnx, via_onnx
from workbench.export.torch_tflite_post import POST_SCHEMES, run_float_then_quantize
from workbench.core.quiet import captured_output


def pt2e_quantizer(per_channel: bool, calibrator: str = "mse", is_dynamic: bool = False, is_qat: bool = False):
    """litert-torch's PT2EQuantizer with residual ADDs, MULs and averaging/pooling ops annotated too (static and QAT)."""
    from litert_torch.quantize.pt2e_quantizer import MinMaxObserver, PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

    cfg = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=is_dynamic, is_qat=is_qat)
    if calibrator == "minmax" and not is_dynamic and not is_qat:
        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)

    class ResidualAwareQuantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            if self.global_config is not None and self.global_config.input_activation is not None:
                annotate_by_target(model, self.global_config)
                propagate_annotation(model)  # views and flattens after the newly annotated ops
            return model

    return ResidualAwareQuantizer().set_global(cfg)


def annotate_by_target(gm, cfg) -> None:
    """Annotate ADD and MUL (a ReLU right after them folded in) and MEAN / average / max pooling by their ATen targets.

    litert-torch 0.10 finds these ops through the ``source_fn_stack`` node metadata (``get_source_partitions``),
    which torch 2.13's ``torch.export`` no longer records: every residual ADD and the global-average MEAN
    then stayed float between DEQUANTIZE/QUANTIZE pairs in an "int8" model. Nodes litert-torch did annotate
    are left as they are. tests/test_tflite_trust.py fails when a residual net has a float ADD or MEAN again.
    """
    import torch
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    aten = torch.ops.aten
    adds = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor}  # same failure, same int8 kernels
    relus = {aten.relu.default, aten.relu_.default}
    shared = {aten.mean.dim, aten.mean.default, aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default,
              aten.avg_pool2d.default, aten.max_pool2d.default}
    in_q, out_q = get_input_act_qspec(cfg), get_output_act_qspec(cfg)

    def annotated(n) -> bool:
        a = n.meta.get("quantization_annotation")
        return a is not None and a._annotated

    def has_output_qspec(n) -> bool:
        a = n.meta.get("quantization_annotation")
        return a is not None and a._annotated and a.output_qspec is not None

    def float_tensor(n) -> bool:
        v = n.meta.get("val")
        return isinstance(v, torch.Tensor) and v.dtype.is_floating_point

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or annotated(node):
            continue
        if node.target in adds:
            args = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
            if not args or not float_tensor(node) or not all(float_tensor(a) for a in args):
                continue
            users = list(node.users)
            relu = users[0] if len(users) == 1 and users[0].op == "call_function" and users[0].target in relus \
                and not annotated(users[0]) else None
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={a: in_q for a in args}, output_qspec=None if relu is not None else out_q, _annotated=True)
            if relu is not None:
                relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=out_q, _annotated=True)
        elif node.target in shared:
            x = node.args[0] if node.args else None
            if not isinstance(x, torch.fx.Node) or not float_tensor(x):
                continue
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={x: SharedQuantizationSpec(x) if has_output_qspec(x) else in_q},
                output_qspec=SharedQuantizationSpec((x, node)), _annotated=True)


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
    if cfg.scheme != "float":
        recipe.update(check_quantized(job, nhwc))
    return recipe


def check_quantized(job: ExportJob, nhwc: bool) -> dict:
    """Run the written model in LiteRT on calibration samples (it must load and run), measure it against the
    PyTorch model, and list the ops it left in float: a warning for an int8 model, where each one is a
    DEQUANTIZE/QUANTIZE round trip and an op TFLite Micro runs in float."""
    import warnings

    from workbench.core.errors import WorkbenchError
    from workbench.export import parity
    from workbench.frontends.tflite_reader import describe_float_ops, graph_float_ops, read_tflite

    x = parity.parity_inputs(job.handle.inputs[0].shape, job.calib)
    try:
        cand = parity.run_model(job.out, np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))) if nhwc else x)
    except WorkbenchError as exc:
        raise RuntimeFailure(f"litert-torch wrote a {job.config.scheme} model of '{job.handle.path}' that LiteRT cannot run: "
                             f"{exc.message.split(': ', 1)[-1]}",
                             hint="Try --format onnx --scheme int8 (ONNX Runtime's quantizer).") from None
    out = {"agreement_with_float": parity.measure(parity.run_model(job.handle, x), cand)}
    floats = graph_float_ops(read_tflite(job.out))
    out["float_ops"] = floats
    if floats and job.config.scheme == "int8":
        warnings.warn(f"{sum(f['count'] for f in floats)} op(s) of the int8 model of '{job.handle.path}' stay in float "
                      f"({describe_float_ops(floats)}): "
                      "the quantizer does not annotate them.", stacklevel=2)
    return out


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
            calibrate(torch, prepared, np.transpose(calib, (0, 2, 3, 1)) if nhwc else calib)
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
