"""``run_firmware``: a model's real firmware, built for the target's core and run on QEMU."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.core.errors import ToolFailure, UnsupportedError
from workbench.emulate.firmware import cpi as cpi_mod
from workbench.emulate.firmware.build import (
    FirmwareImage,
    _load_target,
    build_image,
    deterministic_inputs,
    pack_inputs,
    unpack_outputs,
)
from workbench.emulate.firmware.library import DEFAULT_BUILD_TYPE, get_library
from workbench.emulate.firmware.machines import machine_for_core
from workbench.emulate.firmware.qemu import run_elf
from workbench.emulate.firmware.toolchain import find_toolchain
from workbench.emulate.firmware.tree import find_tree

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class FirmwareReport:
    """What the firmware measured. Sizes in bytes; ``instructions`` per inference (mean over the samples)."""

    elf: str
    target: str
    core: str
    machine: str  # QEMU machine
    cpu: str  # -mcpu
    kernels: str
    build_type: str
    flash_bytes: int  # text + data of the linked image (`arm-none-eabi-size`)
    ram_bytes: int  # .data + .bss + arena_used_bytes + TFLM margin + stack high-water mark
    text_bytes: int
    data_bytes: int
    bss_bytes: int
    ram_static_bytes: int  # the .data and .bss sections (board RAM besides the arena and the stack)
    arena_used_bytes: int  # interpreter.arena_used_bytes() after AllocateTensors, on the 32-bit build
    arena_bytes: int  # arena_used_bytes + the TFLM-style margin (what ram_bytes counts)
    export_arena_bytes: int  # what the exported settings header reserves (host-measured + margin)
    stack_bytes: int  # stack high-water mark (painted stack)
    instructions: int  # per inference, mean over the samples (rounded)
    instructions_min: int
    instructions_max: int
    instructions_per_tick: float  # the timer resolution (31.25 on the SSE-300 counter: not always an integer)
    per_op: tuple  # ({"index", "op", "instructions"}, ...) per inference (mean over the samples)
    cpi: dict | None  # cross-check: cycles per instruction by op class, fitted to 2020 software (cpi_source says which)
    cpi_source: str
    latency_ms: float | None  # board estimate of the core timing model (timing); the fitted CPI when there is no timing
    clock_mhz: float
    samples: int
    outputs: np.ndarray | tuple = field(repr=False, compare=False)  # output 0 (or a tuple for several), model dtype
    build_seconds: float
    run_seconds: float
    library_key: str
    library_built: bool
    library_seconds: float
    firmware_key: str
    firmware_cached: bool
    tflm: str  # the TFLM tree's content key
    toolchain: str
    ops: tuple = ()
    notes: tuple = ()  # e.g. a cached library or image that failed its integrity check and was rebuilt
    latency_lower_ms: float | None = None  # core timing model at zero wait states: no board runs faster
    latency_method: str = ""  # "core timing model" or "fitted CPI (...)"
    cpi_latency_ms: float | None = None  # cross-check: instructions x the CPI fitted to cpi_source's software
    timing: dict | None = None  # histogram, cycles (lower / board) per invocation and per op: workbench.emulate.firmware.timed
    opt_level: str | None = None  # one -O level for every TFLM / CMSIS-NN source; None: TFLM's own (-Os core, -O2 kernels)

    def to_dict(self) -> dict:
        """JSON-safe values (the outputs array is left out)."""
        d = {}
        for k, v in self.__dict__.items():
            if k == "outputs":
                continue
            if isinstance(v, tuple):
                v = [dict(x) if isinstance(x, dict) else x for x in v]
            d[k] = v
        d["source"] = "firmware"
        return d


def _check_timer(values: dict, machine) -> None:
    """The harness times a loop of known length at boot: the machine's ticks -> instructions factor must hold."""
    n, ticks = values.get("calib_instructions"), values.get("calib_ticks")
    if not isinstance(n, int) or not isinstance(ticks, int) or ticks <= 0:
        raise ToolFailure(f"The firmware on {machine.qemu_machine} reported no timer calibration; its timer at "
                          f"0x{machine.timer_base:08X} may not be running.")
    measured = n / ticks
    if abs(measured / machine.instructions_per_tick - 1) > 0.01:
        raise ToolFailure(
            f"The timer of QEMU {machine.qemu_machine} ticks every {measured:.2f} instructions under -icount shift=0; "
            f"the machine table says {machine.instructions_per_tick:g} ({machine.timer_hz} Hz). Instruction counts "
            "would be wrong.", hint="Fix timer_hz for this core in workbench/emulate/firmware/machines.py.")


def _arena_plan(used: int) -> int:
    from workbench.export.tflm_facts import ARENA_MARGIN

    return ARENA_MARGIN.plan(used, "arena_used_bytes() of the firmware").size


def run_firmware(model_path, target, *, inputs=None, tflm_dir=None, kernels: str = "cmsis-nn",
                 build_type: str = DEFAULT_BUILD_TYPE, timeout: float = DEFAULT_TIMEOUT, layout: str = "plain",
                 lang: str = "cpp", jobs: int | None = None, cache: bool = True, say=None,
                 timing: bool = True, opt_level: str | None = None) -> FirmwareReport:
    """Build ``model_path``'s firmware for ``target``'s core and run it on QEMU.

    ``inputs``: an array (N, *input shape) in the model's input dtype (float values for a
    quantized input are quantized with its scale and zero point), or one array per input
    for a multi-input model; None runs one inference on a deterministic input. All samples
    run in one QEMU process. Raises UnsupportedError when the target's core has no emulated
    machine or the model has an op the TFLM tree lacks, ToolMissingError (exit 3) for a
    missing toolchain or QEMU, ConfigError (exit 2) for a missing or bad TFLM tree,
    RuntimeFailure naming the phase and op when the firmware crashes or TFLM fails in it,
    ImageOverflow when the image does not fit the emulated machine, and ToolFailure (exit 4)
    when a tool fails (a build that fails or times out, a link error, QEMU timing out or
    stopping without a report): never a verdict on the model. ``say`` receives progress lines
    and notes (default: stderr); a cached library or image that fails its integrity check is
    rebuilt, and the report's ``notes`` say so. ``opt_level`` (``-Os``, ``-O2``, ``-O3``, ...) compiles every
    TFLM and CMSIS-NN source at that level, as mbed-os, the Arduino Mbed core and Zephyr (-Os) do; None
    keeps TFLM's Makefile levels (-Os framework, -O2 kernels). Each level is its own cached library.
    """
    t = _load_target(target)
    if getattr(t, "kind", "mcu") != "mcu":
        raise UnsupportedError(f"Target '{t.name}' is a {t.kind} target; firmware emulation is for MCU targets.")
    machine = machine_for_core(t.core)
    toolchain = find_toolchain()
    tree = find_tree(tflm_dir)
    lib = get_library(tree, machine, toolchain, kernels=kernels, build_type=build_type, jobs=jobs, say=say,
                      opt_level=opt_level)
    t0 = time.perf_counter()
    img: FirmwareImage = build_image(model_path, machine, tree, toolchain, lib, layout=layout, lang=lang, cache=cache,
                                     say=say)
    build_seconds = time.perf_counter() - t0
    arrays = deterministic_inputs(img.inputs, 1) if inputs is None else inputs
    buf, n = pack_inputs(arrays, img.inputs)
    res = run_elf(toolchain.qemu, machine, img.elf, buf, timeout=timeout, what=f"The firmware of '{Path(model_path).name}'")
    v = res.values
    ipt = machine.instructions_per_tick
    _check_timer(v, machine)
    samples = int(v.get("samples", n))
    outs = unpack_outputs(res.output, img.outputs, samples)
    instructions = machine.ticks_to_instructions(v["invoke_ticks_sum"] / max(1, samples))
    per_op = tuple({"index": o["index"], "op": o["op"], "depth": o["depth"],
                    "instructions": machine.ticks_to_instructions(o["ticks"] / max(1, samples))} for o in res.ops)
    lat, cpi, how = cpi_mod.latency_ms(instructions, list(per_op), machine.core, float(t.clock_mhz))
    timed, notes = None, tuple(img.notes)
    if timing:
        from workbench.emulate.firmware.timed import firmware_cycles

        try:
            timed = firmware_cycles(toolchain.qemu, machine, img.elf, buf[:len(buf) // max(1, n)], t,
                                    timer_instructions=(int(int(v["invoke_ticks_min"]) * ipt - ipt),
                                                        int(int(v["invoke_ticks_max"]) * ipt + ipt) + 1),
                                    timeout=timeout,
                                    op_names={o["index"]: o["op"] for o in per_op})
        except ToolFailure as exc:  # the measured run stands; only the timing model's input is missing
            notes += (f"the instruction trace for the core timing model failed ({exc.message}); the latency is the "
                      "fitted-CPI one",)
    if timed is not None:
        latency, lower, method = timed["latency_ms"], timed["latency_lower_ms"], "core timing model"
    else:
        latency, lower, method = lat, None, f"fitted CPI ({how})" if lat is not None else how
    arena_used = int(v["arena_used_bytes"])
    arena = _arena_plan(arena_used)
    stack = int(v.get("stack_used_bytes", 0))
    ram = img.ram_static_bytes + arena + stack
    cpu = next((f.split("=", 1)[1] for f in machine.cflags if f.startswith("-mcpu=")), "")
    return FirmwareReport(
        elf=str(img.elf), target=t.name, core=machine.core, machine=machine.qemu_machine, cpu=cpu, kernels=kernels,
        build_type=build_type, flash_bytes=img.flash_bytes, ram_bytes=ram, text_bytes=img.text_bytes,
        data_bytes=img.data_bytes, bss_bytes=img.bss_bytes, ram_static_bytes=img.ram_static_bytes,
        arena_used_bytes=arena_used, arena_bytes=arena,
        export_arena_bytes=img.export_arena_bytes, stack_bytes=stack, instructions=instructions,
        instructions_min=machine.ticks_to_instructions(int(v["invoke_ticks_min"])),
        instructions_max=machine.ticks_to_instructions(int(v["invoke_ticks_max"])),
        instructions_per_tick=ipt, per_op=per_op, cpi=cpi, cpi_source=how,
        latency_ms=None if latency is None else round(latency, 4), clock_mhz=float(t.clock_mhz), samples=samples,
        outputs=outs[0] if len(outs) == 1 else tuple(outs), build_seconds=round(build_seconds, 3),
        run_seconds=round(res.seconds, 3), library_key=lib.key, library_built=lib.built_now,
        library_seconds=round(lib.seconds, 1), firmware_key=img.key, firmware_cached=img.cached,
        tflm=tree.content_key, toolchain=toolchain.gcc_version, ops=img.ops, notes=notes,
        latency_lower_ms=lower, latency_method=method, cpi_latency_ms=None if lat is None else round(lat, 4),
        timing=timed, opt_level=opt_level)
