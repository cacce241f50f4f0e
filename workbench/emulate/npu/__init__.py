"""Emulate a board with an NPU: the vendor compiler's own performance estimate, plus the CPU.

One emulator per NPU family (a registry keyed by the profile's ``npu.family``); today the Arm
Ethos-U family through Vela (:mod:`workbench.emulate.npu.ethos_u`). ``emulate`` dispatches here
for any profile with an ``npu:`` section, before the CPU paths.
"""

from __future__ import annotations

from workbench.core.registry import Registry

NPU_EMULATORS: Registry = Registry("NPU family")


def _builtin() -> None:
    from workbench.emulate.npu import ethos_u  # noqa: F401  (registers "ethos-u")


def emulate_on_npu(path, handle, target, *, threads: int | None = None, eval_data=None, reference=None,
                   eval_samples: int | None = 500, metric: str | None = None, timeout: float = 300.0,
                   firmware: bool | None = None, tflm_dir=None, opt_level: str | None = None):
    """The TargetReport of ``path`` (a loaded .tflite ``handle``) on ``target``'s NPU; ``firmware`` and
    ``tflm_dir`` and ``opt_level`` as for ``emulate``: the host core's firmware counts the instructions of the ops left on the CPU."""
    _builtin()
    return NPU_EMULATORS.get(target.npu.family)(path, handle, target, threads=threads, eval_data=eval_data,
                                                reference=reference, eval_samples=eval_samples, metric=metric,
                                                timeout=timeout, firmware=firmware, tflm_dir=tflm_dir,
                                                opt_level=opt_level)
