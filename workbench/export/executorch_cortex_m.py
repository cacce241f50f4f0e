"""PyTorch models to ExecuTorch programs (.pte) for Cortex-M microcontrollers: ExecuTorch's Cortex-M backend,
whose ``cortex_m::quantized_*`` operators are CMSIS-NN kernels on the device.

The flow is the backend's own (``executorch/backends/cortex_m``, ExecuTorch 1.5.1): PT2E static int8 with
``CortexMQuantizer`` (per-channel weights for convolutions, per-tensor activations), ``to_edge`` with
``cortex_m_edge_compile_config``, then ``CortexMPassManager`` for the board's core (``CortexMTargetConfig``),
which replaces the quantized patterns with ``cortex_m::`` operators in place; nothing is delegated. The
backend's default (legacy) pass list takes convolutions only on channels-last tensors, so the model and its
input are traced channels-last: the program's 4-D input is NHWC in memory.

The pip runtime has no ``cortex_m`` kernels, so the written program cannot run on this host. Parity is
therefore checked on the lowered edge program, whose ``cortex_m`` operators run their Python reference
implementations (registered by the backend through ``torch.library``), against the float PyTorch model on
the calibration samples. The manifest says so. The Arm backend's modules import ``tosa_serializer``
(the ``tosa-tools`` package), which the Cortex-M quantizer pulls in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from workbench.core.errors import CheckFailed, MissingDependencyError, UnsupportedError
from workbench.core.quiet import captured_output
from workbench.export.torch_common import calibrate, outputs_per_sample

TOSA_PIN = "tosa-tools==2026.5.0"  # the version executorch 1.5.1 names in its 'ethos-u' extra
# Parity bounds for the program run through the cortex_m reference ops, against the float model.
MIN_ARGMAX_AGREEMENT = 0.90  # classifier-like outputs (more than one value per sample)
MAX_RELATIVE_ERROR = 0.10  # other outputs: max abs error over the float output's max abs
RUNTIME_NOTE = ("needs an ExecuTorch runtime built with the cortex_m kernels (CMSIS-NN); checked on the host through "
                "the cortex_m operators' Python reference implementations, not run on the target")


@dataclass(frozen=True)
class CortexMLowering:
    """What the lowering produced: the edge program (runnable on the host through the reference ops)."""

    edge_program: object
    cpu: str


def cortex_m_cpu(core: str) -> str:
    """'Cortex-M4F' -> 'cortex-m4' (the backend's target string); '' when the core is not a Cortex-M."""
    m = re.search(r"Cortex-M(\d+)(P?)", core or "", re.I)
    return f"cortex-m{m.group(1)}{m.group(2).lower()}" if m else ""


def import_backend():
    try:
        import tosa_serializer  # noqa: F401  (imported by executorch.backends.arm, which the Cortex-M quantizer uses)
    except ImportError:
        err = MissingDependencyError("tosa_serializer", "executorch",
                                     "ExecuTorch's Cortex-M backend (through the Arm backend it imports)")
        err.hint = (f"pip install --no-deps {TOSA_PIN}  (package tosa-tools; its declared pins would move numpy, "
                    "the module needs none of them)")
        raise err from None
    from executorch.backends.cortex_m.edge_compile_config import cortex_m_edge_compile_config
    from executorch.backends.cortex_m.passes.cortex_m_pass_manager import CortexMPassManager
    from executorch.backends.cortex_m.quantizer.quantizer import CortexMQuantizer
    from executorch.backends.cortex_m.target_config import CortexMTargetConfig

    return CortexMQuantizer, CortexMPassManager, cortex_m_edge_compile_config, CortexMTargetConfig


def channels_last(torch, t):
    return t.to(memory_format=torch.channels_last) if t.dim() == 4 else t


def lower(torch, model, sample, calib: np.ndarray, cpu: str) -> CortexMLowering:
    """Quantize with CortexMQuantizer on ``calib`` and lower for ``cpu`` (e.g. 'cortex-m4')."""
    from executorch.exir import to_edge
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer, passes, edge_config, target_config = import_backend()
    config = target_config.from_target_string(cpu)
    model, sample = model.to(memory_format=torch.channels_last), channels_last(torch, sample)
    with captured_output():
        graph = torch.export.export(model, (sample,), strict=True).module(check_guards=False)
        prepared = prepare_pt2e(graph, quantizer())
        calibrate(torch, prepared, calib, lambda t: channels_last(torch, t))
        quantized = convert_pt2e(prepared)
        exported = torch.export.export(quantized, (sample,), strict=True)
        edge = to_edge(exported, compile_config=edge_config())
        program = passes(edge.exported_program(), target_config=config).transform()
    return CortexMLowering(edge_program=program, cpu=cpu)


def serialize(lowering: CortexMLowering) -> bytes:
    """The program's bytes (to_executorch turns the edge program's ops into out variants: run_edge it first)."""
    from executorch.exir import EdgeProgramManager

    _, _, edge_config, _ = import_backend()
    with captured_output():
        return bytes(EdgeProgramManager(lowering.edge_program, compile_config=edge_config()).to_executorch().buffer)


def run_edge(torch, lowering: CortexMLowering, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of the lowered program on ``x`` (one sample at a time), cortex_m ops through their reference code."""
    return outputs_per_sample(torch, lowering.edge_program.module(), x, lambda t: channels_last(torch, t))


def check(numbers: dict, what: str) -> None:
    """Refuse a program whose reference-op outputs are too far from the float model's."""
    agree, err, ref = numbers.get("argmax_agreement"), numbers["max_abs_error"], numbers["reference_max_abs"]
    if agree is not None and agree < MIN_ARGMAX_AGREEMENT:
        raise CheckFailed(f"{what}: the program's top-1 agrees with the float model on only {agree:.1%} of "
                          f"{numbers['samples']} samples (bound {MIN_ARGMAX_AGREEMENT:.0%}); nothing was written.",
                          hint="Calibrate on more representative data (--calib, --calib-samples), or use --scheme float "
                               "with --format tflite/tflm.")
    if agree is None and err > MAX_RELATIVE_ERROR * max(ref, 1e-12):
        raise CheckFailed(f"{what}: max abs error {err:.4g} is above {MAX_RELATIVE_ERROR:.0%} of the float output's "
                          f"range ({ref:.4g}) on {numbers['samples']} samples; nothing was written.",
                          hint="Calibrate on more representative data (--calib, --calib-samples).")


def agreement_record(numbers: dict, checked_through: str) -> dict:
    """The manifest's record of a parity measured on the calibration samples, with the bounds :func:`check` applied."""
    return {**numbers, "on": "calibration samples", "checked_through": checked_through,
            "bounds": {"min_argmax_agreement": MIN_ARGMAX_AGREEMENT, "max_relative_error": MAX_RELATIVE_ERROR}}


def program_ops(path) -> list[dict]:
    """The operators of the written program, read back from the file (no torch): [{op, count}] by instruction."""
    from workbench.frontends.pte_reader import read_pte

    method = read_pte(path).method("forward")
    counts: dict[str, int] = {}
    for name in method.instructions if method else ():
        counts[name] = counts.get(name, 0) + 1
    return [{"op": k, "count": counts[k]} for k in sorted(counts)]


def unsupported_target(target, why: str) -> UnsupportedError:
    return UnsupportedError(f"--format executorch has no path for the target '{target.name}' ({target.core}): {why}",
                            hint="Export TFLite Micro sources for it instead: --format tflm --target " + target.name)
