"""Which QEMU machine runs which Cortex-M core, and the facts the firmware needs about it.

One registry (``MACHINES``, keyed by core) instead of branches. Each entry gives the QEMU
machine, the compiler flags, TFLM's ``TARGET_ARCH``, the memory the linker script places
code, data, stack and the (large) arena in, and the timer the per-op profiler reads.

The emulated machines have far more memory than the boards (4 MB of code RAM, 4 MB of
data RAM and 16 MB of PSRAM on the MPS2 images, 64 MB of DDR each for code and the arena on
the MPS3 image): a model too big for the board still
runs, and the caller decides fits / does not fit from the measured sizes.

Timer clock and instructions: QEMU runs with ``-icount shift=0``, so one guest instruction
advances virtual time by exactly 1 ns; a timer clocked at F Hz then ticks once every
1e9 / F instructions (25 MHz -> 40 instructions per tick, 32 MHz -> 31.25: the factor is a
fraction, not an integer). The harness times a loop of known length at every boot and the run
fails (ToolFailure) when the measured factor is more than 1% off the table
(``run._check_timer``); the slow tests run every machine.

Timer kinds (``TIMER_KINDS``): a CMSDK APB timer (a 32-bit down-counter, MPS2 images and the
SSE-200) or the SSE-300 system counter (a 64-bit up-counter whose low word the harness reads),
chosen in the harness by a preprocessor define.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from workbench.core.errors import UnsupportedError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Region:
    base: int
    size: int

    def ld(self) -> str:
        return f"ORIGIN = 0x{self.base:08X}, LENGTH = 0x{self.size:X}"


# Timer kind -> the harness's preprocessor defines (wb_harness.cc reads the timer at WB_TIMER_BASE).
TIMER_KINDS: dict[str, tuple[str, ...]] = {
    # CMSDK APB timer: CTRL 0x0, VALUE 0x4, RELOAD 0x8; a 32-bit down-counter.
    "cmsdk-apb-timer": (),
    # Arm SSE-300 system counter, control frame: CNTCR 0x0 (bit 0 enables it), CNTCV_LO 0x8; a 64-bit up-counter
    # (QEMU hw/timer/sse-counter.c; Arm SSE-123 Example Subsystem TRM, developer.arm.com/documentation/101370).
    "sse-counter": ("-DWB_TIMER_SSE_COUNTER=1",),
}


@dataclass(frozen=True)
class Machine:
    core: str  # canonical core name, e.g. "Cortex-M4F"
    qemu_machine: str  # -M
    cflags: tuple[str, ...]  # -mcpu/-mfpu/-mfloat-abi/-mthumb for our files and the link
    tflm_arch: str  # TFLM Makefile TARGET_ARCH
    code: Region  # .text, .rodata (the model), .data load image ("flash"); the vector table too unless ``vectors``
    ram: Region  # .data, .bss, the stack
    big: Region  # the tensor arena and the harness's own buffers (not counted as board RAM)
    timer_base: int  # the timer the harness reads (see ``timer_kind``)
    timer_hz: int  # its clock; instructions per tick = 1e9 / timer_hz under -icount shift=0
    vector_base: int  # where the CPU fetches the initial SP and reset vector
    source: str  # where the memory map and timer facts come from
    supported: bool = True
    note: str = ""
    timer_kind: str = "cmsdk-apb-timer"  # a key of TIMER_KINDS
    tflm_make_vars: tuple[str, ...] = ()  # extra NAME=value arguments of TFLM's Makefile for this core (part of the library key)
    vectors: Region | None = None  # a region of its own for the vector table (at vector_base), when code is elsewhere
    disasm_arch: str = ""  # objdump -m for the instruction trace, when the ELF's attributes do not select it

    def __post_init__(self):
        if self.timer_kind not in TIMER_KINDS:
            raise ValueError(f"timer_kind {self.timer_kind!r} is not one of {', '.join(TIMER_KINDS)}")
        boot = self.vectors or self.code
        if self.supported and not boot.base <= self.vector_base < boot.base + boot.size:
            raise ValueError(f"{self.core}: the vector table at 0x{self.vector_base:08X} is outside its region")

    @property
    def tick_ratio(self) -> Fraction:
        """Instructions per timer tick, exactly (1e9 / timer_hz under -icount shift=0)."""
        return Fraction(10**9, self.timer_hz)

    @property
    def instructions_per_tick(self) -> float:
        """Instructions per timer tick: 40.0 at 25 MHz, 31.25 at 32 MHz (not always an integer)."""
        return float(self.tick_ratio)

    def ticks_to_instructions(self, ticks: float) -> int:
        """Timer ticks (a count, or a mean over samples) -> instructions, rounded to the nearest integer."""
        return int(round(ticks * self.instructions_per_tick))

    @property
    def timer_defines(self) -> tuple[str, ...]:
        return TIMER_KINDS[self.timer_kind]

    def to_dict(self) -> dict:
        """What the firmware image depends on (part of its cache key): flags, timer and memory map."""
        return {"core": self.core, "qemu_machine": self.qemu_machine, "cflags": list(self.cflags),
                "tflm_arch": self.tflm_arch, "tflm_make_vars": list(self.tflm_make_vars), "timer_kind": self.timer_kind, "timer_base": self.timer_base,
                "timer_hz": self.timer_hz, "instructions_per_tick": self.instructions_per_tick,
                "vectors": None if self.vectors is None else [self.vectors.base, self.vectors.size],
                "code": [self.code.base, self.code.size], "ram": [self.ram.base, self.ram.size],
                "big": [self.big.base, self.big.size]}


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
    # Arm AN547: Cortex-M55 (SSE-300, Helium/MVE) on MPS3; QEMU mps2-tz.c. QEMU 7.2's `info mtree -f` (secure
    # CPU view): ITCM 512 KB at 0x10000000 (secure alias of 0x00000000; the CPU boots there), DTCM 512 KB at
    # 0x30000000, SRAM 2 MB + 2 MB at 0x31000000 / 0x31200000 behind MPCs, QSPI 8 MB (ROM) at 0x38000000, DDR
    # 0x60000000-0xDFFFFFFF behind an MPC; the IDAU makes every 256 MB block with address bit 28 set secure, so
    # 0x70000000 is secure DDR. The vector table stays in the ITCM; code, the model and the .data image go to
    # DDR (the 512 KB ITCM is no limit on the model); .data, .bss and the stack to the 4 MB SRAM; the arena to
    # DDR. Timer: the SSE-300 system counter (control frame 0x58100000, secure) on the 32 MHz sysclk
    # (mps2-tz.c: AN547 sysclk_frq 32 MHz): 31.25 instructions per tick, checked at every boot.
    "Cortex-M55": Machine(
        core="Cortex-M55", qemu_machine="mps3-an547",
        cflags=("-mthumb", "-mcpu=cortex-m55", "-mfloat-abi=hard"),
        tflm_arch="cortex-m55",
        # GNU as 2.40 (Debian 12) with MVE enabled cannot parse a conditional VFP conversion in an IT block
        # ("Error: syntax error -- `vcvtne.f32.s32 s15,s17'", TFLM's resize_nearest_neighbor.cc at -O2): it reads
        # VCVTN (MVE) + a predicate. GCC's if-conversion makes those; without it the code branches instead (same
        # results). TFLM's cortex_m_generic makefile puts $(FPU) into `-mfpu=$(FPU)` of CXXFLAGS and CCFLAGS, its one
        # command-line hook for compile flags; "auto" is its default.
        tflm_make_vars=("FPU=auto -fno-if-conversion -fno-if-conversion2",),
        vectors=Region(0x10000000, 512 * KiB),
        code=Region(0x70000000, 64 * MiB), ram=Region(0x31000000, 4 * MiB), big=Region(0x78000000, 64 * MiB),
        timer_kind="sse-counter", timer_base=0x58100000, timer_hz=32_000_000, vector_base=0x10000000,
        # GNU objdump 2.40 decodes MVE only when told the architecture (else VLDRB shows as LDC, VMLAV as CDP).
        disasm_arch="armv8.1-m.main",
        source="QEMU 7.2 `info mtree -f` on mps3-an547 and hw/arm/mps2-tz.c (AN547: sysclk 32 MHz, ITCM 512 KB at "
               "0x10000000 secure, SRAM 4 MB at 0x31000000 secure, DDR at 0x70000000 secure; SSE-300 system "
               "counter control frame at 0x58100000); Arm AN547"),
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
