"""Which QEMU machine runs which Cortex-M core, and the facts the firmware needs about it.

One registry (``MACHINES``, keyed by core) instead of branches. Each entry gives the QEMU
machine, the compiler flags, TFLM's ``TARGET_ARCH``, the memory the linker script places
code, data, stack and the (large) arena in, and the timer the per-op profiler reads.

The emulated machines have far more memory than the boards (4 MB of code RAM, 4 MB of
data RAM and 16 MB of PSRAM on the MPS2 images): a model too big for the board still
runs, and the caller decides fits / does not fit from the measured sizes.

Timer clock and instructions: QEMU runs with ``-icount shift=0``, so one guest instruction
advances virtual time by exactly 1 ns; a timer clocked at F Hz then ticks once every
1e9 / F instructions (25 MHz -> 40 instructions per tick). ``scripts/bench_firmware.py
--check-timers`` and the slow tests verify the factor on each machine with a loop of
known length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.core.errors import UnsupportedError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Region:
    base: int
    size: int

    def ld(self) -> str:
        return f"ORIGIN = 0x{self.base:08X}, LENGTH = 0x{self.size:X}"


@dataclass(frozen=True)
class Machine:
    core: str  # canonical core name, e.g. "Cortex-M4F"
    qemu_machine: str  # -M
    cflags: tuple[str, ...]  # -mcpu/-mfpu/-mfloat-abi/-mthumb for our files and the link
    tflm_arch: str  # TFLM Makefile TARGET_ARCH
    code: Region  # vector table, .text, .rodata (the model), .data load image ("flash")
    ram: Region  # .data, .bss, the stack
    big: Region  # the tensor arena and the harness's own buffers (not counted as board RAM)
    timer_base: int  # a CMSDK APB timer (down-counter: CTRL 0x0, VALUE 0x4, RELOAD 0x8)
    timer_hz: int  # its clock; instructions per tick = 1e9 / timer_hz under -icount shift=0
    vector_base: int  # where the CPU fetches the initial SP and reset vector
    source: str  # where the memory map and timer facts come from
    supported: bool = True
    note: str = ""

    @property
    def instructions_per_tick(self) -> int:
        return int(round(1e9 / self.timer_hz))

    def to_dict(self) -> dict:
        return {"core": self.core, "qemu_machine": self.qemu_machine, "cflags": list(self.cflags),
                "tflm_arch": self.tflm_arch, "timer_hz": self.timer_hz,
                "instructions_per_tick": self.instructions_per_tick}


# The four MPS2 / MPS3 images QEMU models. Memory maps: QEMU hw/arm/mps2.c (AN385/AN386/AN500/
# AN511) and hw/arm/mps2-tz.c (AN505/AN521/AN524/AN547), checked here with QEMU 7.2's
# `info mtree -f`; Arm application notes AN386 (Cortex-M4), AN500 (Cortex-M7), AN505
# (Cortex-M33, SSE-200 subsystem) and AN547 (Cortex-M55, SSE-300 subsystem) describe the
# same FPGA images (developer.arm.com, "Cortex-M Prototyping System", application notes).
_MPS2_SRC = ("QEMU hw/arm/mps2.c (SYSCLK_FRQ 25 MHz; ZBT SSRAM1 4 MB at 0x00000000, ZBT SSRAM2&3 4 MB at "
             "0x20000000, CMSDK APB timer0 at 0x40000000 on SYSCLK); Arm AN386 / AN500")

MACHINES: dict[str, Machine] = {
    # Arm AN386: Cortex-M4 with FPU on MPS2+. QEMU: 16 MB PSRAM at 0x21000000 (mps2.c,
    # "AN385/AN386/AN511: 0x21000000 .. 0x21ffffff : PSRAM").
    "Cortex-M4F": Machine(
        core="Cortex-M4F", qemu_machine="mps2-an386",
        cflags=("-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
        tflm_arch="cortex-m4+fp",
        code=Region(0x00000000, 4 * MiB), ram=Region(0x20000000, 4 * MiB), big=Region(0x21000000, 16 * MiB),
        timer_base=0x40000000, timer_hz=25_000_000, vector_base=0x00000000, source=_MPS2_SRC),
    # Arm AN500: Cortex-M7 (FPv5, double precision in QEMU's model) on MPS2+. QEMU puts its
    # 16 MB PSRAM at 0x60000000 (mps2.c, "AN500: 0x60000000 .. 0x60ffffff : PSRAM").
    # TFLM's TARGET_ARCH=cortex-m7+fp builds with -mcpu=cortex-m7 -mfpu=auto (FPv5-D16).
    "Cortex-M7": Machine(
        core="Cortex-M7", qemu_machine="mps2-an500",
        cflags=("-mthumb", "-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
        tflm_arch="cortex-m7+fp",
        code=Region(0x00000000, 4 * MiB), ram=Region(0x20000000, 4 * MiB), big=Region(0x60000000, 16 * MiB),
        timer_base=0x40000000, timer_hz=25_000_000, vector_base=0x00000000, source=_MPS2_SRC),
    # Arm AN505: Cortex-M33 (SSE-200) on MPS2+; QEMU mps2-tz.c. The CPU boots secure with its
    # vector table at 0x10000000 (secure alias of ZBT SSRAM1, 4 MB); secure data RAM: ZBT
    # SSRAM2 at 0x38000000 (secure alias of 0x28000000, 2 MB + SSRAM3 2 MB); 16 MB PSRAM at
    # 0x80000000; SSE-200 timer0 (CMSDK APB timer) at 0x50000000 (secure alias of 0x40000000)
    # on MAINCLK, 20 MHz for AN505 in mps2-tz.c (sysclk_frq = 20 * 1000 * 1000).
    "Cortex-M33": Machine(
        core="Cortex-M33", qemu_machine="mps2-an505",
        cflags=("-mthumb", "-mcpu=cortex-m33", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"),
        tflm_arch="cortex-m33",
        code=Region(0x10000000, 4 * MiB), ram=Region(0x38000000, 4 * MiB), big=Region(0x80000000, 16 * MiB),
        timer_base=0x50000000, timer_hz=20_000_000, vector_base=0x10000000,
        source="QEMU hw/arm/mps2-tz.c (AN505: sysclk 20 MHz, ssram-0 4 MB at 0x10000000 secure, ssram-1/2 at "
               "0x38000000 secure, PSRAM 16 MB at 0x80000000; SSE-200 timer0 at 0x50000000 secure); Arm AN505"),
    # Arm AN547: Cortex-M55 (SSE-300, Helium/MVE) on MPS3; QEMU mps2-tz.c. QEMU 7.2's `info mtree`
    # shows ITCM 512 KB at 0x00000000 (secure alias 0x10000000, where it boots), DTCM 512 KB at
    # 0x20000000 (0x30000000), SRAM 2 MB, "sram 2" 4 MB at 0x21000000 (0x31000000), QSPI 8 MB and
    # DDR; its SSE-300 timers are "sse-timer" devices besides one CMSDK APB timer. Not wired up:
    # code larger than the ITCM needs a second code region and the timer's address and clock
    # (32 MHz sysclk in mps2-tz.c) are unverified. The entry is kept so the reason is reported.
    "Cortex-M55": Machine(
        core="Cortex-M55", qemu_machine="mps3-an547",
        cflags=("-mthumb", "-mcpu=cortex-m55", "-mfloat-abi=hard"),
        tflm_arch="cortex-m55",
        code=Region(0x10000000, 512 * KiB), ram=Region(0x30000000, 512 * KiB), big=Region(0x31000000, 4 * MiB),
        timer_base=0, timer_hz=32_000_000, vector_base=0x10000000,
        source="QEMU hw/arm/mps2-tz.c (AN547, SSE-300); Arm AN547",
        supported=False,
        note="the mps3-an547 memory map (code beyond the 512 KB ITCM) and its timer are not wired up yet"),
}

# Core names as target profiles write them -> registry key.
ALIASES: dict[str, str] = {
    "cortex-m4": "Cortex-M4F", "cortex-m4f": "Cortex-M4F", "cortex-m4+fp": "Cortex-M4F",
    "cortex-m7": "Cortex-M7", "cortex-m7f": "Cortex-M7", "cortex-m7+fp": "Cortex-M7",
    "cortex-m33": "Cortex-M33", "cortex-m33f": "Cortex-M33",
    "cortex-m55": "Cortex-M55",
}


def canonical_core(core: str) -> str:
    """'2x Cortex-M4F' -> 'cortex-m4f' (a count prefix and case dropped)."""
    return re.sub(r"^\s*\d+\s*x\s*", "", str(core)).strip().lower()


def machine_problem(core: str) -> str | None:
    """None when ``core`` runs on an emulated machine here, else why not."""
    key = ALIASES.get(canonical_core(core))
    if key is None:
        known = ", ".join(sorted(k for k, m in MACHINES.items() if m.supported))
        return f"QEMU has no machine for the core '{core}' here (firmware emulation covers {known})"
    m = MACHINES[key]
    if not m.supported:
        return f"{m.core} on QEMU {m.qemu_machine} is not supported yet: {m.note}"
    return None


def machine_for_core(core: str) -> Machine:
    """The machine for ``core``; UnsupportedError when there is none (e.g. Xtensa) or it is not wired up."""
    problem = machine_problem(core)
    if problem:
        raise UnsupportedError(f"{problem}.", hint="The emulation estimate (`workbench emulate --no-firmware`) "
                                                   "still applies to this target.")
    return MACHINES[ALIASES[canonical_core(core)]]
