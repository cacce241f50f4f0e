"""Firmware emulation: the model's real TFLite Micro firmware, built for the target's Cortex-M
core with the CMSIS-NN kernels and run on QEMU with deterministic instruction counting.

    from workbench.emulate.firmware import firmware_support, run_firmware
    if firmware_support("stm32l4r5") is None:
        rep = run_firmware("model.tflite", "stm32l4r5", inputs=x_int8)
        rep.flash_bytes, rep.ram_bytes, rep.latency_ms, rep.outputs

Pieces: :mod:`.tree` (finding / cloning the TFLM tree, its key), :mod:`.toolchain` (arm-none-eabi
GCC + newlib, qemu-system-arm), :mod:`.machines` (core -> QEMU machine, flags, memory map,
timer), :mod:`.library` (the cached per-core TFLM library), :mod:`.build` (exported project
+ harness -> ELF), :mod:`.cache` (build once under a lock, serve only what matches its digests),
:mod:`.qemu` (running it), :mod:`.cpi` (instructions -> latency) and the C/C++ harness in
``harness/`` (package data).
"""

from workbench.emulate.firmware.build import (
    FirmwareImage,
    ImageOverflow,
    build_image,
    firmware_support,
)
from workbench.emulate.firmware.cache import CacheCorrupt
from workbench.emulate.firmware.library import Library, get_library
from workbench.emulate.firmware.machines import (
    MACHINES,
    Machine,
    machine_for_core,
    machine_problem,
)
from workbench.emulate.firmware.run import FirmwareReport, run_firmware
from workbench.emulate.firmware.toolchain import (
    INSTALL_LINE,
    Toolchain,
    ToolMissingError,
    find_toolchain,
)
from workbench.emulate.firmware.tree import (
    PINNED_COMMIT,
    SetupResult,
    TflmTree,
    find_tree,
    link,
    setup,
    validate_tree,
)

__all__ = [
    "INSTALL_LINE",
    "MACHINES",
    "PINNED_COMMIT",
    "FirmwareImage",
    "FirmwareReport",
    "CacheCorrupt",
    "ImageOverflow",
    "Library",
    "Machine",
    "SetupResult",
    "TflmTree",
    "ToolMissingError",
    "Toolchain",
    "build_image",
    "find_toolchain",
    "find_tree",
    "firmware_support",
    "get_library",
    "machine_for_core",
    "machine_problem",
    "run_firmware",
    "link",
    "setup",
    "validate_tree",
]
