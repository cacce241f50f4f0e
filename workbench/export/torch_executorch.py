"""PyTorch models to ExecuTorch programs (.pte) with the XNNPACK backend.

float: ``torch.export`` -> ``executorch.exir.to_edge_transform_and_lower`` with the XnnpackPartitioner ->
``to_executorch``. int8: PT2E static quantization with ExecuTorch's XNNPACKQuantizer (torchao's
``prepare_pt2e`` / ``convert_pt2e``, calibrated one sample at a time on the real calibration set), then
the same lowering; XNNPACK runs the quantized ops, the program keeps float inputs and outputs.
Calibrators: ``minmax`` (MinMaxObserver) and ``mse`` (HistogramObserver, the quantizer's own default).

After every export the written program runs in the ExecuTorch runtime on the parity samples: a float
program is held to the float tolerance against the PyTorch model (:mod:`workbench.export.parity`), an
int8 one is measured against it (agreement with float; ``--eval`` adds task accuracy). Ops XNNPACK does
not take run in ExecuTorch's portable CPU kernels and are listed in the manifest; an op ExecuTorch
cannot lower at all (outside the Core ATen opset, or without a kernel in the runtime) is refused by name.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np

from workbench.core.errors import ConfigError, RuntimeFailure, UnsupportedError, WorkbenchError
from workbench.core.quiet import captured_output, import_quietly
from workbench.export.engine import EXPORTERS, Exporter, ExportJob
from workbench.export.torch_common import calibrate, refuse_torchscript, traceable

DELEGATE = "executorch_call_delegate"


def import_exir():
    return import_quietly("torch", "executorch.exir", extra="executorch", purpose="Exporting PyTorch models to ExecuTorch")


def xnnpack_quantizer(per_channel: bool, calibrator: str):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    cfg = get_symmetric_quantization_config(is_per_channel=per_channel)
    if calibrator == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    return XNNPACKQuantizer().set_global(cfg)


def keepdim_means(torch, gm) -> int:
    """Rewrite ``mean.dim(x, [2, 3], keepdim=False)`` on a 4-D tensor (a global average pool written as
    ``torch.mean(x, dim=(2, 3))``) into ``mean.dim(..., keepdim=True)`` followed by a view to the same shape.

    ExecuTorch 1.5's XNNPACK partitioner takes mean.dim only with keepdim=True (``MeanDimConfig``); without
    this the pool, and in an int8 program its dequantize/quantize pair, runs in the portable kernels between
    two XNNPACK partitions. The result computes the same values. Returns the number of rewritten nodes;
    tests/test_executorch.py notices when the partitioner takes keepdim=False itself."""
    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.mean.dim or len(node.args) < 2:
            continue
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        x, val = node.args[0], node.meta.get("val")
        x_val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if keepdim or node.kwargs.get("dtype") is not None or x_val is None or val is None or x_val.dim() != 4:
            continue
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        if sorted(int(d) % 4 for d in dims) != [2, 3]:
            continue
        node.args = (x, list(dims), True)
        node.kwargs = {}
        with gm.graph.inserting_after(node):
            view = gm.graph.call_function(aten.view.default, (node, list(val.shape)))
        node.replace_all_uses_with(view, delete_user_cb=lambda user: user is not view)
        count += 1
    if count:
        gm.recompile()
    return count


def quantize(torch, model, sample, calib: np.ndarray, cfg):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(model, xnnpack_quantizer(cfg.per_channel, cfg.calibrator))
    calibrate(torch, prepared, calib)
    return convert_pt2e(prepared)


class WhyNotXnnpack(logging.Handler):
    """Collects the XNNPACK partitioner's reasons for leaving a node out (its ``WhyNoPartition`` debug
    records, node name -> reason) while attached to the ``executorch.backends.xnnpack`` logger."""

    LOGGER = "executorch.backends.xnnpack"

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record) -> None:
        node, reason = getattr(record.msg, "node", None), getattr(record.msg, "reason", None)
        if node is not None and reason:
            self.reasons.setdefault(str(getattr(node, "name", node)), str(reason))

    def __enter__(self):
        log = logging.getLogger(self.LOGGER)
        self._saved = (log.level, log.propagate)
        log.setLevel(logging.DEBUG)
        log.propagate = False
        log.addHandler(self)
        return self

    def __exit__(self, *exc):
        log = logging.getLogger(self.LOGGER)
        log.removeHandler(self)
        log.setLevel(self._saved[0])
        log.propagate = self._saved[1]


def outside_delegate(edge_program, reasons: dict[str, str]) -> list[dict]:
    """The ops the lowering left outside XNNPACK (they run in ExecuTorch's CPU kernels):
    [{op, count, reason}] with the partitioner's reason where it gave one."""
    found: dict[str, dict] = {}
    for node in edge_program.graph.nodes:
        if node.op != "call_function" or node.target.__class__.__name__ == "builtin_function_or_method":
            continue
        name = str(node.target)
        if name == DELEGATE or getattr(node.target, "__name__", "") == DELEGATE:
            continue
        short = re.sub(r"^<EdgeOpOverload: ([^>]+)>.*$", r"\1", name)
        entry = found.setdefault(short, {"op": short, "count": 0})
        entry["count"] += 1
        if node.name in reasons:
            entry.setdefault("reason", reasons[node.name])
    return [found[k] for k in sorted(found)]


def delegated_calls(edge_program) -> int:
    return sum(1 for n in edge_program.graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", str(n.target)) == DELEGATE)


NOT_CORE = re.compile(r"Operator (?:torch\._ops\.)?(\S+?) is not in Core ATen opset")
MISMATCH = re.compile(r"Operator: <EdgeOpOverload: ([^>]+)>")
MISSING_KERNEL = re.compile(r"(?:Missing operator|missing kernel|kernel not found)[^\n]*?([\w:.]+)", re.I)


def refusal(job: ExportJob, exc: Exception, step: str) -> WorkbenchError:
    """A typed error for a failed lowering: the op named when ExecuTorch says which one it cannot take."""
    text = str(exc)
    for pattern in (NOT_CORE, MISMATCH):
        m = pattern.search(text)
        if m:
            op = m.group(1).replace("torch._ops.", "")
            why = "is not in the Core ATen opset ExecuTorch lowers" if pattern is NOT_CORE else \
                "takes a tensor type ExecuTorch's edge dialect refuses (e.g. complex numbers)"
            err = UnsupportedError(f"ExecuTorch cannot take the op {op} of '{job.handle.path}': it {why} "
                                   f"(while {step}).",
                                   hint="Replace that op in the model's forward with Core ATen ops, or export to another "
                                        "format (--format onnx or --format tflite).")
            err.op = op
            return err
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:400]
    hint = "--debug shows ExecuTorch's traceback. Try --format onnx or --format tflite."
    if step.startswith("tracing"):
        hint = "The model does not trace with torch.export: make its forward free of data-dependent Python control flow. " + hint
    return RuntimeFailure(f"ExecuTorch could not export '{job.handle.path}' ({job.config.scheme}) while {step}: "
                          f"{type(exc).__name__}: {first}", hint=hint)


def lower(job: ExportJob) -> dict:
    """Trace, quantize (int8), lower to XNNPACK and write the program to ``job.out``."""
    exir = import_exir()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    torch, model, sample = traceable(job.handle)
    cfg = job.config
    step = "tracing with torch.export"
    try:
        with captured_output():
            model = torch.export.export(model, (sample,)).module()
            rewritten = keepdim_means(torch, model)
            if rewritten:  # traced again, so every node carries the metadata the quantizer and partitioner read
                model = torch.export.export(model, (sample,)).module()
            if cfg.scheme == "int8":
                # out variants of quantize/dequantize for ops XNNPACK leaves to ExecuTorch's own kernels
                import executorch.kernels.quantized  # noqa: F401

                step = "quantizing with XNNPACKQuantizer (PT2E prepare, calibration, convert)"
                model = quantize(torch, model, sample, job.calib, cfg)
                step = "tracing the quantized model with torch.export"
            exported = torch.export.export(model, (sample,))
            step = "lowering to the edge dialect and XNNPACK (to_edge_transform_and_lower)"
            with WhyNotXnnpack() as why:
                edge = exir.to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            graph = edge.exported_program()
            left, delegated = outside_delegate(graph, why.reasons), delegated_calls(graph)
            step = "writing the program (to_executorch)"
            program = edge.to_executorch()
            job.out.write_bytes(program.buffer)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise refusal(job, exc, step) from exc
    recipe = {"exporter": "executorch.exir.to_edge_transform_and_lower", "backend": "XNNPACK", "scheme": cfg.scheme,
              "xnnpack_partitions": delegated, "ops_outside_xnnpack": left, "means_given_keepdim": rewritten}
    if cfg.scheme == "int8":
        recipe.update({"quantizer": "XNNPACKQuantizer (PT2E)", "per_channel": cfg.per_channel, "calibrator": cfg.calibrator})
    return recipe


def run(job: ExportJob) -> dict:
    """The backend for ``--target`` (by the board's kind, see :data:`TARGET_BACKENDS`), XNNPACK without one."""
    board = job.options.get("target")
    if not board:
        return run_xnnpack(job)
    if isinstance(board, str):  # the api resolves a board's name to its profile (workbench.api.convert)
        raise ConfigError(f"The executorch exporter takes the target's profile, not its name '{board}'.",
                          hint="Call workbench.api.convert(..., target=NAME), or pass workbench.emulate.load_target(NAME).")
    return BACKENDS[TARGET_BACKENDS["npu" if board.npu is not None else board.kind]](job, board)


def run_xnnpack(job: ExportJob, board=None) -> dict:
    import warnings

    from workbench.export import parity

    recipe = lower(job)
    x = parity.parity_inputs(job.handle.inputs[0].shape, job.calib)
    ref = parity.run_outputs(job.handle, x)
    try:
        cand = parity.run_outputs(job.out, x)
    except WorkbenchError as exc:
        op = MISSING_KERNEL.search(exc.message)
        raise UnsupportedError(f"ExecuTorch wrote a program of '{job.handle.path}' that its runtime cannot run: "
                               f"{exc.message.split(': ', 1)[-1]}",
                               hint="The runtime lacks a kernel for an op outside XNNPACK"
                                    + (f" ({op.group(1)})" if op else "") + "; try --format onnx or --format tflite.") from None
    what = f"PyTorch -> ExecuTorch ({job.config.scheme}) of '{job.handle.path}'"
    if job.config.scheme == "float":
        recipe["parity"] = parity.check_all(ref, cand, what)
    else:
        recipe["agreement_with_float"] = parity.measure_all(ref, cand)
    if recipe["ops_outside_xnnpack"]:
        ops = "; ".join(f"{o['op']} x{o['count']}" + (f" ({o['reason']})" if o.get("reason") else "")
                        for o in recipe["ops_outside_xnnpack"])
        warnings.warn(f"XNNPACK does not take these ops of '{job.handle.path}'; they run in ExecuTorch's portable CPU "
                      f"kernels: {ops}.", stacklevel=2)
    return recipe


def int8_only(cfg, path: str, why: str) -> None:
    if cfg.scheme != "int8":
        raise UnsupportedError(f"{path} is int8 only ({why}); --scheme {cfg.scheme} was asked.",
                               hint="Pass --scheme int8 --calib DATA.")


def run_cortex_m(job: ExportJob, board) -> dict:
    """An MCU board with a Cortex-M core: ExecuTorch's Cortex-M backend (CMSIS-NN ops), int8 only; the
    program is checked through the cortex_m ops' reference code on the host (see executorch_cortex_m)."""
    from workbench.export import executorch_cortex_m as cm
    from workbench.export import parity

    cpu = cm.cortex_m_cpu(board.core)
    if not cpu:
        raise cm.unsupported_target(board, "ExecuTorch's Cortex-M backend needs a Cortex-M core.")
    cfg = job.config
    int8_only(cfg, f"The ExecuTorch Cortex-M path for '{board.name}'", "its operators are CMSIS-NN's int8 kernels")
    if not cfg.per_channel:
        raise UnsupportedError("The ExecuTorch Cortex-M path quantizes convolution weights per channel (CortexMQuantizer's "
                               "fixed configuration); --per-tensor is not available.", hint="Drop --per-tensor.")
    if cfg.calibrator != "minmax":
        raise UnsupportedError(f"The ExecuTorch Cortex-M path calibrates with CortexMQuantizer's own observers; "
                               f"--calibrator {cfg.calibrator} is not available there.", hint="Drop --calibrator.")
    import_exir()
    torch, model, sample = traceable(job.handle)
    step = "quantizing with CortexMQuantizer and lowering with CortexMPassManager"
    try:
        lowering = cm.lower(torch, model, sample, job.calib, cpu)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise refusal(job, exc, step) from exc
    what = f"PyTorch -> ExecuTorch Cortex-M int8 ({cpu}) of '{job.handle.path}'"
    x = np.asarray(job.calib, dtype=np.float32)
    ref = parity.run_outputs(job.handle, x)
    cand = parity.Outputs(ref.names, tuple(cm.run_edge(torch, lowering, x)))
    numbers = parity.measure_all(ref, cand)
    cm.check(numbers, what)
    try:
        job.out.write_bytes(cm.serialize(lowering))
    except Exception as exc:
        raise refusal(job, exc, "writing the program (to_executorch)") from exc
    ops = cm.program_ops(job.out)
    return {"exporter": "executorch.exir.to_edge + CortexMPassManager", "backend": "Cortex-M (CMSIS-NN)",
            "scheme": "int8", "target": board.name, "cpu": cpu,
            "quantizer": "CortexMQuantizer (PT2E; per-channel convolution weights, per-tensor activations)",
            "calibrator": "CortexMQuantizer's own observers (min/max)",
            "input_memory_format": "channels_last (NHWC) for 4-D inputs",
            "program_ops": ops, "cortex_m_ops": [o for o in ops if o["op"].startswith("cortex_m::")],
            "runtime_needed": "ExecuTorch runtime built with the cortex_m kernels (CMSIS-NN)",
            "checked_on": cm.RUNTIME_NOTE,
            "agreement_with_float": cm.agreement_record(numbers, "cortex_m reference ops")}


def run_ethos_u(job: ExportJob, board) -> dict:
    """A board with an Ethos-U NPU: ExecuTorch's Arm backend (TOSA -> Vela command stream in the EthosUBackend
    delegate), int8 only; checked through the TOSA reference model before anything is written (see
    executorch_ethos_u)."""
    from workbench.export import executorch_cortex_m as cm
    from workbench.export import executorch_ethos_u as eu
    from workbench.export import parity

    npu, cfg = board.npu, job.config
    if npu.family != "ethos-u":
        raise cm.unsupported_target(board, f"ExecuTorch's Arm backend compiles for Ethos-U NPUs, not '{npu.family}'.")
    int8_only(cfg, f"The ExecuTorch Ethos-U path for '{board.name}'", "the NPU runs integer operators")
    import_exir()
    torch, model, sample = traceable(job.handle)
    step = f"quantizing with EthosUQuantizer and lowering for {npu.accelerator} (TOSA, Vela)"
    try:
        lowering = eu.lower(torch, model, sample, job.calib, npu, cfg.per_channel, cfg.calibrator)
        step = "running the TOSA-lowered program through the TOSA reference model"
        x = np.asarray(job.calib, dtype=np.float32)
        ref = parity.run_outputs(job.handle, x)
        cand = parity.Outputs(ref.names, tuple(eu.run_tosa(torch, lowering, x)))
    except WorkbenchError:
        raise
    except Exception as exc:
        raise refusal(job, exc, step) from exc
    numbers = parity.measure_all(ref, cand)
    cm.check(numbers, f"PyTorch -> ExecuTorch Ethos-U int8 ({npu.accelerator}) of '{job.handle.path}'")
    job.out.write_bytes(lowering.program)
    ops = cm.program_ops(job.out)
    delegates = [o for o in ops if o["op"].startswith("delegate:")]
    if not delegates:
        job.out.unlink()
        raise UnsupportedError(f"ExecuTorch's Ethos-U partitioner took no op of '{job.handle.path}' for {npu.accelerator}; "
                               "nothing was written.", hint="Export TFLite Micro sources instead: --format tflm "
                                                            f"--target {board.name}")
    return {"exporter": "executorch.exir.to_edge_transform_and_lower + EthosUPartitioner", "backend": "Ethos-U (Arm backend)",
            "scheme": "int8", "target": board.name, "accelerator": npu.accelerator,
            "system_config": npu.system_config, "memory_mode": npu.memory_mode, "tosa_spec": lowering.tosa_spec,
            "quantizer": "EthosUQuantizer (PT2E, Arm get_symmetric_quantization_config)", "per_channel": cfg.per_channel,
            "calibrator": cfg.calibrator, "program_ops": ops, "delegates": [o["op"].split(":", 1)[1] for o in delegates],
            "ops_outside_delegate": [o for o in ops if not o["op"].startswith("delegate:")],
            "vela": eu.vela_numbers(lowering.vela_summary, npu.clock_mhz),
            "runtime_needed": "ExecuTorch runtime with the Ethos-U delegate (EthosUBackend) and the Ethos-U NPU driver",
            "checked_on": eu.RUNTIME_NOTE,
            "agreement_with_float": cm.agreement_record(numbers, f"TOSA reference model ({lowering.tosa_spec}), not the NPU")}


# Which ExecuTorch backend a --target gets, by the board's kind ('npu' for a board with an NPU).
TARGET_BACKENDS = {"linux": "xnnpack", "mcu": "cortex-m", "npu": "ethos-u"}
BACKENDS = {"xnnpack": run_xnnpack, "cortex-m": run_cortex_m, "ethos-u": run_ethos_u}


EXPORTERS.add(("torch", "executorch"), Exporter(
    run=run, schemes=("float", "int8"), calibrators=("minmax", "mse"), per_tensor=True, keep_float=False,
    io_dtypes=("float32",), precheck=refuse_torchscript,
    note="ExecuTorch with the XNNPACK backend; int8 programs quantize inside and keep float inputs and outputs."))
