"""``emulate`` on the real firmware: the model's TFLite Micro + CMSIS-NN image for the target's
core, run on QEMU (see :mod:`workbench.emulate.firmware`).

What it changes in the report (``method: "firmware"``):

* flash = text + data of the linked image (model, kernels, runtime, startup), as
  ``arm-none-eabi-size`` gives it;
* RAM = data + bss with the arena sized to what the 32-bit build uses (``arena_used_bytes()``
  plus TFLM's margin) + the stack high-water mark;
* latency = instructions counted under ``-icount shift=0`` x the core's fitted CPI / clock;
* ``--eval`` runs the samples through the firmware (one QEMU run for all of them): accuracy on
  the board's kernels, agreement with LiteRT's reference-exact kernels and the largest LSB
  difference of the outputs.
"""

from __future__ import annotations

import numpy as np

from workbench.emulate.memory import Memory
from workbench.emulate.targets import Target
from workbench.runtimes.base import Runner


class FirmwareRunner(Runner):
    """Runs a .tflite in its firmware on QEMU: every sample of a call in one QEMU run."""

    name = "firmware"
    batch_size = None

    def __init__(self, handle, target: Target, tflm_dir=None, opt_level: str | None = None):
        self.handle = handle
        self.target = target
        self.tflm_dir = tflm_dir
        self.opt_level = opt_level
        self.inputs = handle.inputs
        self.outputs = handle.outputs
        self.report = None
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        from workbench.emulate.firmware import run_firmware

        self.report = run_firmware(self.handle.path, self.target, inputs=x, tflm_dir=self.tflm_dir,
                                   opt_level=self.opt_level)
        out = self.report.outputs
        out = out[0] if isinstance(out, tuple) else out
        self.last = (np.asarray(x), np.asarray(out))  # the quantized inputs and raw outputs, for lsb_agreement
        return out

    def info(self) -> dict:
        r = self.report
        d = {"runtime": "tflm-firmware", "kernels": "cmsis-nn", "target": self.target.name}
        if r is not None:
            d.update({"machine": r.machine, "cpu": r.cpu, "kernels": r.kernels})
        return d


def firmware_memory(fw, target: Target) -> Memory:
    """Flash and RAM of the linked image."""
    return Memory(
        flash_bytes=fw.flash_bytes, flash_budget=target.flash_bytes, ram_bytes=fw.ram_bytes, ram_budget=target.ram_bytes,
        arena_bytes=fw.arena_bytes, source="firmware",  # the arena RAM counts: arena_used_bytes() + TFLM's margin
        breakdown={"text_bytes": fw.text_bytes, "data_bytes": fw.data_bytes, "bss_bytes": fw.bss_bytes,
                   "ram_static_bytes": fw.ram_static_bytes, "arena_used_bytes": fw.arena_used_bytes,
                   "arena_with_margin_bytes": fw.arena_bytes, "stack_bytes": fw.stack_bytes,
                   "method": "flash = text + data of the linked image (arm-none-eabi-size); RAM = data + bss with the "
                             "arena sized to arena_used_bytes() of the 32-bit build plus TFLM's margin, + the painted "
                             "stack's high-water mark"})


def lsb_agreement(handle, xq: np.ndarray, fw_raw: np.ndarray) -> dict:
    """The firmware's raw outputs against LiteRT's builtin kernels on the same (model-dtype) inputs."""
    from workbench.runtimes.litert import LiteRTRunner

    lite = LiteRTRunner(handle, threads=1, kernels="builtin")
    try:
        ref = np.concatenate([np.asarray(lite._run(xq[i:i + 1])) for i in range(len(xq))])
    finally:
        lite.close()
    a = ref.reshape(len(ref), -1)
    b = np.asarray(fw_raw).reshape(len(ref), -1)
    out = {"litert_kernels": "builtin (BUILTIN_WITHOUT_DEFAULT_DELEGATES)", "samples": int(len(a))}
    if np.issubdtype(a.dtype, np.integer):
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        out.update({"max_lsb_difference": int(diff.max()) if diff.size else 0,
                    "samples_differing": int((diff.max(axis=1) > 0).sum()) if diff.size else 0})
    else:
        out["max_abs_difference"] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
    if a.shape[1] > 1:
        out["argmax_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return out
