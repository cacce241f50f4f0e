"""PyTorch models to ExecuTorch programs (.pte) for boards with an Arm Ethos-U NPU: ExecuTorch's Arm backend.

The flow is the backend's own (``executorch/backends/arm``, ExecuTorch 1.5.1): PT2E static int8 with
``EthosUQuantizer`` (the Arm ``get_symmetric_quantization_config``), ``to_edge_transform_and_lower`` with the
``EthosUPartitioner`` for the board's NPU (``EthosUCompileSpec``: accelerator, Vela system config and memory
mode from the profile's ``npu:`` block), then ``to_executorch``. The partitioned graph is lowered to TOSA and
compiled by Vela into a command stream that the delegate ("EthosUBackend") hands to the NPU driver.

No runtime here runs an Ethos-U program. The same quantized graph is therefore also lowered for the TOSA
specification the NPU path uses (``TOSAPartitioner``) and its delegate runs in the TOSA reference model
(``tosa_reference_model``, from tosa-tools), the ops outside the delegate in PyTorch; those outputs are
compared with the float model on the calibration samples, with the bounds of the Cortex-M path. Vela's
own performance summary (cycles, memory) is read from the files it writes.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.core.errors import MissingDependencyError
from workbench.core.quiet import captured_output
from workbench.export.torch_common import calibrate, outputs_per_sample

RUNTIME_NOTE = ("needs an ExecuTorch runtime built with the Ethos-U delegate (EthosUBackend) and the Ethos-U NPU driver; "
                "checked on the host through the TOSA reference model of the same quantized graph, not run on the NPU")


@dataclass(frozen=True)
class EthosULowering:
    program: bytes  # the .pte with the Vela command stream inside the delegate
    tosa_edge: object  # the same quantized graph lowered for TOSA, runnable through the reference model
    tosa_spec: str
    vela_summary: dict  # Vela's summary CSV row (numbers as floats); {} when Vela wrote none


def import_backend():
    purpose = "ExecuTorch's Ethos-U path (the Arm backend's TOSA lowering, Vela and the TOSA reference model)"
    for module, package, extra in (("tosa_serializer", "tosa-tools", None), ("tosa_reference_model", "tosa-tools", None),
                                   ("ethosu.vela", "ethos-u-vela", "npu")):
        try:
            __import__(module)
        except ImportError:
            err = MissingDependencyError(package, extra or "executorch", purpose)
            if extra is None:  # installed without its declared pins, which would move numpy
                err.hint = "pip install --no-deps -r requirements-tosa.txt  (tosa-tools==2026.5.0)"
            raise err from None
    from executorch.backends.arm.ethosu import EthosUCompileSpec, EthosUPartitioner

    return EthosUCompileSpec, EthosUPartitioner


def quantizer(spec, per_channel: bool, calibrator: str):
    from executorch.backends.arm.quantizer.arm_quantizer import EthosUQuantizer, get_symmetric_quantization_config

    cfg = get_symmetric_quantization_config(is_per_channel=per_channel)  # activations: HistogramObserver
    if calibrator == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-16))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    return EthosUQuantizer(spec).set_global(cfg)


def lower(torch, model, sample, calib: np.ndarray, npu, per_channel: bool, calibrator: str) -> EthosULowering:
    """Quantize on ``calib`` and lower for the profile's NPU (``npu``: accelerator, system_config, memory_mode)."""
    from executorch.backends.arm.tosa.compile_spec import TosaCompileSpec
    from executorch.backends.arm.tosa.partitioner import TOSAPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    compile_spec, partitioner = import_backend()
    spec = compile_spec(npu.accelerator, system_config=npu.system_config, memory_mode=npu.memory_mode)
    with captured_output(), tempfile.TemporaryDirectory(prefix="workbench-ethos-u-") as tmp:
        prepared = prepare_pt2e(torch.export.export(model, (sample,)).module(), quantizer(spec, per_channel, calibrator))
        calibrate(torch, prepared, calib)
        exported = torch.export.export(convert_pt2e(prepared), (sample,))
        tosa_edge = to_edge_transform_and_lower(exported, partitioner=[TOSAPartitioner(TosaCompileSpec(spec.tosa_spec))])
        spec.dump_intermediate_artifacts_to(tmp)  # Vela writes its summary CSV there
        program = to_edge_transform_and_lower(exported, partitioner=[partitioner(spec)]).to_executorch().buffer
        summary = read_summary(Path(tmp))
    return EthosULowering(program=bytes(program), tosa_edge=tosa_edge.exported_program(), tosa_spec=str(spec.tosa_spec),
                          vela_summary=summary)


def read_summary(folder: Path) -> dict:
    """The summary CSV Vela wrote into the backend's intermediate folder (read as the TFLM path reads it); {} when
    it wrote none."""
    from workbench.core.errors import RuntimeFailure
    from workbench.export.vela import read_summary as read_csv

    found = sorted(folder.rglob("*_summary_*.csv"))
    try:
        return read_csv(found[0]) if found else {}
    except RuntimeFailure:  # an empty summary: Vela's numbers are left out, as when it wrote none
        return {}


def vela_numbers(summary: dict, board_clock_mhz: float | None) -> dict:
    """Vela's own estimate (its README: not an accurate representation of real performance)."""
    if not summary:
        return {}
    num = {k: summary.get(k) for k in ("cycles_npu", "cycles_total", "core_clock", "inference_time", "sram_memory_used",
                                       "off_chip_flash_memory_used", "nn_macs") if isinstance(summary.get(k), float)}
    out = {"npu_cycles": int(num.get("cycles_npu", 0)), "total_cycles": int(num.get("cycles_total", 0)),
           "system_config_clock_hz": num.get("core_clock"),
           "inference_time_ms_at_system_config_clock": round(num.get("inference_time", 0.0) * 1e3, 6),
           "sram_bytes": int(round(num.get("sram_memory_used", 0.0) * 1024)),
           "off_chip_flash_bytes": int(round(num.get("off_chip_flash_memory_used", 0.0) * 1024)),
           "macs": int(num.get("nn_macs", 0)), "source": "Vela's summary CSV (an estimate, not a measurement)"}
    if board_clock_mhz and out["total_cycles"]:
        out["inference_time_ms_at_board_clock"] = round(out["total_cycles"] / (board_clock_mhz * 1e6) * 1e3, 6)
    return out


def run_tosa(torch, lowering: EthosULowering, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of the TOSA-lowered program on ``x`` (one sample at a time): each delegate call runs in the
    TOSA reference model, the rest of the graph (quantize/dequantize at the edges) in PyTorch."""
    import tosa_reference_model as reference
    from torch.overrides import TorchFunctionMode

    delegate = torch._higher_order_ops.executorch_call_delegate
    calls = []

    class ThroughReferenceModel(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is not delegate:
                return func(*args, **(kwargs or {}))
            lowered, *inputs = args
            calls.append(lowered)
            arrays = [t.detach().contiguous().numpy() for t in inputs]
            outs, status = reference.run(lowered.processed_bytes, arrays, verbosity="LOW",
                                         initialize_variable_tensor_from_numpy=True)
            if status != reference.GraphStatus.TOSA_VALID:
                raise RuntimeError(f"the TOSA reference model refused the lowered graph ({status})")
            metas = [n.meta.get("val") for n in lowered.original_module.graph.output_node().args[0]]
            return tuple(as_tensor(torch, o, m) for o, m in zip(outs, metas))

    module = lowering.tosa_edge.module()

    def run(t):
        with ThroughReferenceModel():
            return module(t)

    with captured_output():
        outs = outputs_per_sample(torch, run, x)
    if not calls:
        raise RuntimeError("the TOSA partitioner took no op of the graph, so the reference model ran nothing")
    return outs


def as_tensor(torch, array: np.ndarray, meta):
    """A reference-model output as the tensor the graph expects (TOSA writes 4-D channels-last data as NHWC)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if meta is None:
        return t
    shape = tuple(meta.shape)
    if len(shape) == 4 and tuple(meta.dim_order()) == (0, 2, 3, 1):
        return t.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()
    return t.reshape(shape)
