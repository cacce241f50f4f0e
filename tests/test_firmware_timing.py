"""Core timing model: instruction classes, per-core cycle tables, the TB-log trace and its windows.

The loop test builds a few instructions of known mix with the Arm toolchain, traces them on
QEMU and checks the histogram and the cycles against numbers worked out by hand from the
Cortex-M4 TRM table (not from the code under test); the Cortex-M55 loop does the same with
Helium (MVE) instructions in a tail-predicated low-overhead loop.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pytest

from workbench.emulate.firmware import timing as tm
from workbench.emulate.firmware import trace as tr
from workbench.emulate.firmware.timing_tables import CORES
from workbench.emulate.targets import MemorySpec

M4 = CORES["Cortex-M4F"]
M55 = CORES["Cortex-M55"]


@pytest.mark.parametrize("mnemonic,operands,expected", [
    ("ldr.w", "r3, [r0], #4", ("load", 0)),
    ("ldrsb.w", "r1, [r2, #1]", ("load", 0)),
    ("movge", "r0, r1", ("alu", 0)),
    ("orrsne.w", "r1, r2, r3", ("alu", 0)),
    ("bls.n", "1f4 <x>", ("branch", 0)),
    ("bl", "1f4 <x>", ("branch", 0)),
    ("smlad", "r5, r3, r4, r5", ("dsp_mac", 0)),
    ("sxtab16", "r1, r2, r3", ("simd", 0)),
    ("mla", "r0, r1, r2, r3", ("mac", 0)),
    ("vfma.f32", "s0, s1, s2", ("fpu_mac", 0)),
    ("ittet", "ge", ("it", 0)),
    ("push", "{r4, r5, r6, r7, lr}", ("stm", 5)),
    ("ldmia.w", "sp!, {r4-r11, pc}", ("ldm", 9)),
    ("ldr", "pc, [sp], #4", ("load_pc", 0)),
    ("teq", "r0, r1", ("alu", 0)),
    # Helium (MVE) as GNU objdump -m armv8.1-m.main spells it; a trailing t/e: predicated in a VPT block
    ("vldrb.u8", "q0, [r3], #16", ("mve_load", 0)),
    ("vldrbt.s16", "q1, [r2]", ("mve_load", 0)),
    ("vstrw.32", "q3, [r9, q5]", ("mve_store", 0)),
    ("vmlava.s8", "r8, q0, q1", ("mve_mac", 0)),
    ("vmlavat.s16", "r8, q0, q1", ("mve_mac", 0)),
    ("vaddva.s8", "r6, q0", ("mve_mac", 0)),
    ("vqrdmulh.s32", "q3, q3, r2", ("mve_mul", 0)),
    ("vrshlt.s32", "q3, q3, q2", ("mve_alu", 0)),  # predicated VRSHL, not VRSH + condition LT
    ("vadd.i32", "q3, q3, r6", ("mve_alu", 0)),
    ("vadd.f32", "q0, q1, q2", ("mve_fp", 0)),
    ("vadd.f32", "s0, s1, s2", ("fpu_alu", 0)),  # the scalar FPU's VADD: S registers
    ("vdup.32", "q1, r1", ("mve_alu", 0)),
    ("vpstt", "", ("mve_pred", 0)),
    ("vctp.8", "r2", ("mve_pred", 0)),
    ("vpt.s32", "ge, q0, q1", ("mve_cmp", 0)),
    ("dlstp.8", "lr, r2", ("loop_start", 0)),
    ("wlstp.32", "lr, r2, 70005d10 <f+0x30>", ("loop_start", 0)),
    ("letp", "lr, 70009b54 <f+0x18>", ("loop_end", 0)),
    ("le", "lr, 70009b54 <f+0x18>", ("loop_end", 0)),
    ("asrl", "r0, r1, #3", ("alu", 0)),
    ("csneg", "r0, r1, r2, lt", ("alu", 0)),
])
def test_classify(mnemonic, operands, expected):
    assert tm.classify(mnemonic, operands) == expected


class _I:
    def __init__(self, mnemonic, operands):
        self.mnemonic, self.operands = mnemonic, operands


def test_cost_of_a_block_follows_the_m4_table():
    # LDR 2, a second LDR whose address does not use the first's result pipelines (1), SMLAD 1,
    # SUBS 1, BNE 1 (+P when taken, added per execution by window_cycles), POP {r4, r5, pc} 1+N.
    body = [_I("ldr.w", "r3, [r0], #4"), _I("ldr.w", "r4, [r1], #4"), _I("smlad", "r5, r3, r4, r5"),
            _I("subs", "r2, #1"), _I("bne.n", "62 <k+0x2>")]
    c = tm.cost_tb(body, M4)
    assert (c.n, c.lower, c.branch_end, c.loads) == (5, 6, True, 2)
    dependent = [_I("ldr", "r3, [r0]"), _I("ldr", "r4, [r3]")]  # the address uses the loaded value: no pipelining
    assert tm.cost_tb(dependent, M4).lower == 4
    assert tm.cost_tb([_I("pop", "{r4, r5, pc}")], M4).lower == 4


def test_m55_vector_instructions_overlap_a_beat_on_different_pipes():
    # LLVM's Cortex-M55 model (timing_tables.M55_LLVM): VLDR;VADD;VMUL;VSTR in 5 cycles (each after the first
    # overlaps a beat with the previous, another pipe), VLDR;VLDRB;VADD;VSTR in 6 (two loads share the pipe).
    q = "q0, [r0]"
    seq = [_I("vldrw.u32", q), _I("vadd.i32", "q1, q0, q0"), _I("vmul.i32", "q2, q1, q1"), _I("vstrw.32", "q2, [r1]")]
    assert tm.cost_tb(seq, M55).lower == 5
    seq = [_I("vldrw.u32", q), _I("vldrb.u32", "q3, [r2]"), _I("vadd.i32", "q1, q0, q3"), _I("vstrw.32", "q1, [r1]")]
    assert tm.cost_tb(seq, M55).lower == 6
    # a scalar instruction between two vector ones breaks the overlap; VPST is one cycle on the control pipe
    assert tm.cost_tb([_I("vldrw.u32", q), _I("adds", "r0, #1"), _I("vadd.i32", "q1, q0, q0")], M55).lower == 5
    assert tm.cost_tb([_I("vpst", ""), _I("vldrbt.u8", q)], M55).lower == 3
    # the Cortex-M4 table has no beat overlap (and never sees MVE): nothing is subtracted there
    assert M4.beat_pipes == {} and not M4.lob_cached


def test_window_cycles_counts_taken_branches_from_fallthrough():
    costs = {"a": tm.cost_tb([_I("subs", "r2, #1"), _I("bne.n", "x")], M4)}
    c = tm.window_cycles(Counter(a=10), Counter(a=3), costs, M4, invocations=2)
    # per invocation: 5 executions x 2 cycles + 3.5 taken branches x P
    assert c.instructions == 10 and c.taken == 3.5
    assert c.lower == 10 + 3.5 * M4.refill_min and c.core_typical == 10 + 3.5 * M4.refill_typ
    mem = MemorySpec(flash_wait_states=4, accelerator="x", stall_fraction=0.5, source="x")
    assert tm.board_cycles(c, mem) == c.core_typical + 4 * 0.5 * (3.5 + 0)
    assert tm.board_cycles(c, None) == c.core_typical


_LOG = """----------------
IN: main
0x00000010:  2000  movs r0, #0
0x00000012:  f000 f800  bl #0x20

Trace 0: 0x7f0000000100 [00000000/00000010/00000110/ff000200] main
----------------
IN: kernel
0x00000020:  3a01  subs r2, #1
0x00000022:  d1fd  bne #0x20

Trace 0: 0x7f0000000200 [00000000/00000020/00000110/ff000200] kernel
Trace 0: 0x7f0000000200 [00000000/00000020/00000110/ff000200] kernel
Trace 0: 0x7f0000000200 [00000000/00000020/00000110/ff000200] kernel
----------------
IN: kernel
0x00000024:  4770  bx lr

Trace 0: 0x7f0000000300 [00000000/00000024/00000110/ff000200] kernel
----------------
IN: main
0x00000016:  e7fe  b #0x16

Trace 0: 0x7f0000000400 [00000000/00000016/00000110/ff000200] main
"""


def test_parse_log_windows_and_histogram_sum():
    syms = {"main": (0x10, 0x10), "kernel": (0x20, 6)}
    t = tr.parse_log(_LOG.splitlines(True), syms, tr.Markers(invoke="kernel", main="main", begin=None, end=None))
    assert t.invocations == 1
    assert t.instructions() == 3 * 2 + 1  # the kernel window only; main's TBs are outside it
    window = t.runs[tr.INTERPRETER]
    assert window["0x7f0000000200"] == 3
    # bne fell through to 0x24 once (the third execution); the other two went back to 0x20
    assert t.fallthrough[tr.INTERPRETER]["0x7f0000000200"] == 1


def _tools():
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-objdump", "arm-none-eabi-nm", "qemu-system-arm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _main(ram: int) -> str:
    """``main`` of the hand-written programs: kernel(ram, ram + 0x100, 100), then semihosting SYS_EXIT."""
    return f"""    bl main
    .thumb_func
    .global main
main:
    ldr r0, =0x{ram:08x}
    ldr r1, =0x{ram + 0x100:08x}
    movs r2, #100
    bl kernel
    movs r0, #0x18
    ldr r1, =0x20026
    bkpt 0xab
    b .
    .ltorg
    .size main, .-main
    .thumb_func
    .global kernel
"""


_LOOP = """
    .syntax unified
    .cpu cortex-m4
    .thumb
    .section .vectors, "a"
    .word 0x20010000
    .word reset + 1
    .text
    .thumb_func
reset:
""" + _main(0x20000000) + """kernel:
    movs r5, #0
1:
    ldr r3, [r0], #4
    ldr r4, [r1], #4
    smlad r5, r3, r4, r5
    subs r2, r2, #1
    bne 1b
    bx lr
"""


def _m4_loop(tmp_path, source: str, reads_plugin=None):
    """(trace, insns, syms) of a hand-written Cortex-M4 program run on mps2-an386, its window the call of kernel."""
    (tmp_path / "loop.S").write_text(source)
    elf = tmp_path / "loop.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-nostartfiles",
                    "-Wl,-Ttext=0x40", "-Wl,--section-start=.vectors=0", "-Wl,-e,0x40", "-o", str(elf),
                    str(tmp_path / "loop.S")], check=True, capture_output=True)
    insns, syms = tr.disassemble(elf), tr.symbols(elf)
    t = tr.run_trace("qemu-system-arm", "mps2-an386", elf, b"", insns, syms, timeout=60,
                     markers=tr.Markers(invoke="kernel", main="main", begin=None, end=None), harness=False,
                     reads_plugin=reads_plugin)
    return t, insns, syms


def test_hand_written_loop_gives_the_table_cycles(tmp_path):
    _tools()
    t, insns, _syms = _m4_loop(tmp_path, _LOOP)
    costs = {tb: tm.cost_tb([insns[a] for a in addrs], M4) for tb, addrs in t.tbs.items()}
    c = tm.window_cycles(t.runs[tr.INTERPRETER], t.fallthrough[tr.INTERPRETER], costs, M4, t.invocations)
    # movs; 100 x (ldr, ldr, smlad, subs, bne); bx lr
    assert c.instructions == 1 + 100 * 5 + 1
    assert sum(c.classes.values()) == c.instructions
    assert dict(c.classes) == {"alu": 101, "load": 200, "dsp_mac": 100, "branch": 101}
    # M4 TRM: movs 1; per iteration LDR 2 + pipelined LDR 1 + SMLAD 1 + SUBS 1 + BNE 1 = 6; BNE taken
    # 99 times (+P each), BX LR 1+P: 1 + 600 + 1 + 100 P
    assert c.taken == 100
    assert c.lower == 1 + 600 + 1 + 100 * 1
    assert c.core_typical == 1 + 600 + 1 + 100 * 2


_M55_LOOP = """
    .syntax unified
    .arch armv8.1-m.main
    .arch_extension mve
    .fpu fpv5-sp-d16
    .thumb
    .section .vectors, "a"
    .word 0x30010000
    .word reset + 1
    .text
    .thumb_func
reset:
    ldr r0, =0xE000ED88  @ CPACR: CP10/CP11 on, or Helium and LETP fault
    ldr r1, [r0]
    orr r1, r1, #0xF00000
    str r1, [r0]
    dsb
    isb
""" + _main(0x30000000) + """    .p2align 2
kernel:
    mov r12, lr
    movs r4, #0
    dlstp.8 lr, r2
1:
    vldrb.u8 q0, [r0], #16
    vldrb.u8 q1, [r1], #16
    vmlava.s8 r4, q0, q1
    letp lr, 1b
    bx r12
"""


def test_hand_written_m55_helium_loop_gives_the_table_cycles(tmp_path):
    """A tail-predicated dot product of 100 int8 pairs (7 passes of 16 lanes) on QEMU mps3-an547."""
    _tools()
    (tmp_path / "loop.S").write_text(_M55_LOOP)
    elf = tmp_path / "loop.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-nostdlib",
                    "-nostartfiles", "-Wl,-Ttext=0x10000040", "-Wl,--section-start=.vectors=0x10000000",
                    "-Wl,-e,0x10000040", "-o", str(elf), str(tmp_path / "loop.S")], check=True, capture_output=True)
    from workbench.emulate.firmware.machines import MACHINES

    insns, syms = tr.disassemble(elf, arch=MACHINES["Cortex-M55"].disasm_arch), tr.symbols(elf)
    assert insns[syms["kernel"][0] + 8].mnemonic == "vldrb.u8"  # decoded as MVE, not as coprocessor LDC
    t = tr.run_trace("qemu-system-arm", "mps3-an547", elf, b"", insns, syms, timeout=60,
                     markers=tr.Markers(invoke="kernel", main="main", begin=None, end=None), harness=False)
    costs = {tb: tm.cost_tb([insns[a] for a in addrs], M55) for tb, addrs in t.tbs.items()}
    c = tm.window_cycles(t.runs[tr.INTERPRETER], t.fallthrough[tr.INTERPRETER], costs, M55, t.invocations)
    # mov, movs, dlstp; 7 x (vldrb, vldrb, vmlava, letp); bx: QEMU logs the 32-bit MVE ones as two halves,
    # the trace counts them once
    assert c.instructions == 3 + 7 * 4 + 1
    assert sum(c.classes.values()) == c.instructions
    assert dict(c.classes) == {"alu": 2, "loop_start": 1, "mve_load": 14, "mve_mac": 7, "loop_end": 7, "branch": 1}
    # M55 table: mov 1, movs 1, DLSTP 2 (itself + the first pass's LETP) + one refill P for that first pass.
    # A pass: VLDRB 2, VLDRB 2 (same load/store pipe: no overlap), VMLAVA 1 (overlaps the load's last beat),
    # LETP 0 (loop-end branch cached): 5; the 6 passes that follow a taken LETP start with VLDRB overlapping
    # the previous VMLAVA (-1 each). BX 1 + P. Lower (P = 1): 4 + 35 - 6 + 1 + 2 = 36; typical (P = 3): 40.
    assert c.taken == 1  # only BX: a cached LETP pays no refill
    assert c.lower == 4 + 35 - 6 + 1 + 2 * M55.refill_min == 36
    assert c.core_typical == 4 + 35 - 6 + 1 + 2 * M55.refill_typ == 40


@pytest.fixture(scope="module")
def tflm_tree():
    """The TFLM tree and toolchain the firmware tests use, or a skip naming what is missing."""
    import os
    from pathlib import Path

    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware import ToolMissingError, find_toolchain, validate_tree

    try:
        find_toolchain()
    except ToolMissingError as exc:
        pytest.skip(f"firmware emulation needs {exc.program}")
    tree = Path(os.environ.get("WORKBENCH_TFLM_DIR") or Path(__file__).resolve().parents[2] / "shared" / "third_party"
                / "tflite-micro")
    try:
        validate_tree(tree)
    except ConfigError as exc:
        pytest.skip(f"no usable TFLM tree at {tree}: {exc.message}")
    return tree


def test_digits_firmware_timing_is_consistent(digits_tflite_int8, tflm_tree):
    """The real firmware: the traced histogram sums to the instructions the timer counted, the ops' cycles
    add up to (at most) the invocation's, and the lower bound never exceeds the board estimate."""
    from workbench.emulate.firmware import run_firmware

    tree = tflm_tree
    rep = run_firmware(digits_tflite_int8, "stm32l4r5", tflm_dir=tree, jobs=2)
    t = rep.timing
    assert t is not None and rep.latency_method == "core timing model"
    assert sum(t["histogram"].values()) == t["instructions"]
    assert abs(t["instructions"] - rep.instructions) <= rep.instructions_per_tick
    ops = [o for o in t["per_op"] if o["depth"] == 0]
    assert [o["op"] for o in ops] == [o["op"] for o in rep.per_op if o["depth"] == 0]
    for o in ops:
        assert sum(o["histogram"].values()) == o["instructions"]
        assert 0 < o["cycles_lower"] <= o["cycles_board"]
    assert sum(o["cycles_board"] for o in ops) <= t["cycles_board"]
    assert t["cycles_lower"] < t["cycles_core"] < t["cycles_board"]  # stm32l4r5 has flash wait states
    assert rep.latency_ms == pytest.approx(t["cycles_board"] / (rep.clock_mhz * 1e3), rel=1e-3)
    assert rep.latency_lower_ms < rep.latency_ms and rep.cpi_latency_ms is not None


def test_a_failed_trace_keeps_the_measured_run_with_the_cpi_latency(digits_tflite_int8, tflm_tree, monkeypatch):
    from workbench.core.errors import ToolFailure
    from workbench.emulate.firmware import run_firmware, timed

    def fail(*a, **k):
        raise ToolFailure("QEMU timed out")

    monkeypatch.setattr(timed, "firmware_cycles", fail)
    rep = run_firmware(digits_tflite_int8, "stm32l4r5", tflm_dir=tflm_tree, jobs=2)
    assert rep.timing is None and rep.latency_lower_ms is None
    assert rep.latency_ms == rep.cpi_latency_ms and rep.latency_method.startswith("fitted CPI")
    assert any("instruction trace" in n and "QEMU timed out" in n for n in rep.notes)


def test_m55_digits_firmware_gets_cycles_from_the_m55_table(digits_tflite_int8, tflm_tree):
    """The Cortex-M55 (Helium) firmware: every executed instruction has a class ('other' 0), the histogram sums to
    the instructions the timer counted, per-op cycles are given, and the report says no published row checks it."""
    from workbench.emulate.firmware import run_firmware

    rep = run_firmware(digits_tflite_int8, "corstone-300", tflm_dir=tflm_tree, jobs=2)
    t = rep.timing
    assert t is not None and rep.latency_method == "core timing model" and t["core_model"] == "Cortex-M55"
    assert t["histogram"].get("other", 0) == 0 and t["unknown_addresses"] == 0
    assert sum(t["histogram"].values()) == t["instructions"]
    assert abs(t["instructions"] - rep.instructions) <= rep.instructions_per_tick
    assert t["histogram"]["mve_load"] > 0 and t["histogram"]["mve_mac"] > 0 and t["histogram"]["loop_end"] > 0
    ops = [o for o in t["per_op"] if o["depth"] == 0]
    assert [o["op"] for o in ops] == ["CONV_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    for o in ops:
        assert sum(o["histogram"].values()) == o["instructions"] and 0 < o["cycles_lower"] <= o["cycles_board"]
    assert 0 < rep.latency_lower_ms <= rep.latency_ms
    assert rep.latency_ms == pytest.approx(t["cycles_board"] / (rep.clock_mhz * 1e3), rel=1e-3)
    assert t["validation"].startswith("no published row checked") and rep.cpi_latency_ms is None


# the same loop reading its first operand from a table in the code memory (flash), with a store to RAM added
_FLASH_LOOP = (_LOOP.replace("ldr r0, =0x20000000", "ldr r0, =table")
               .replace("    smlad r5, r3, r4, r5\n", "    str r5, [r1, #-4]\n    smlad r5, r3, r4, r5\n")
               + "    .p2align 2\ntable:\n    .fill 100, 4, 0x01010101\n")


def test_plugin_counts_flash_reads_apart_from_sram_reads(tmp_path):
    """A loop that reads 100 words of a table in the code memory (flash) and 100 words of RAM, and stores to
    RAM: the plugin gives the first load 100 flash reads, the second 100 other reads, the store none, and
    the kernel's window 100 flash reads per invocation."""
    from workbench.emulate.firmware import reads as rd
    from workbench.emulate.firmware.machines import MACHINES

    _tools()
    so = rd.plugin()
    if so is None:
        pytest.skip("no host C compiler (cc) to build the QEMU plugin")
    m = MACHINES["Cortex-M4F"]
    t, insns, syms = _m4_loop(tmp_path, _FLASH_LOOP, reads_plugin=(so, m.code.base, m.code.size))
    kernel = syms["kernel"][0]
    loads = sorted(a for a, i in insns.items() if i.mnemonic.startswith("ldr") and a > kernel)[:2]
    store = next(a for a, i in insns.items() if i.mnemonic.startswith("str") and a > kernel)
    assert t.reads[loads[0]] == (100, 100, 0) and t.reads[loads[1]] == (100, 0, 100)
    assert t.reads[store][1:] == (0, 0)
    flash = rd.flash_reads_per_tb(t.tbs, t.reads)
    costs = {tb: tm.cost_tb([insns[a] for a in addrs], M4) for tb, addrs in t.tbs.items()}
    c = tm.window_cycles(t.runs[tr.INTERPRETER], t.fallthrough[tr.INTERPRETER], costs, M4, t.invocations, flash)
    assert c.flash_reads == pytest.approx(100) and c.loads == 200


def test_no_host_compiler_keeps_the_measured_run_with_the_cpi_latency(digits_tflite_int8, tflm_tree, monkeypatch):
    from workbench.emulate.firmware import reads, run_firmware

    monkeypatch.setattr(reads, "host_compiler", lambda: None)
    rep = run_firmware(digits_tflite_int8, "stm32l4r5", tflm_dir=tflm_tree, jobs=2)
    assert rep.timing is None and rep.latency_method.startswith("fitted CPI")
    assert any("host C compiler" in n for n in rep.notes)


def test_stored_heldout_prediction_is_todays_timing_model(tflm_tree):
    """The Cortex-M4 check row (TFLM's person_detect model on the Nucleo-F413ZH, built with mbed-os at -Os) predicted
    again with today's code, the firmware built at the row's level, gives what heldout.json stores and the reports
    show (after a change to the timing model, regenerate it with python scripts/bench_firmware.py --heldout --write)."""
    import hashlib
    import json
    from pathlib import Path

    import yaml

    from workbench.emulate.firmware import run_firmware
    from workbench.emulate.firmware.timed import on_board
    from workbench.emulate.targets import MemorySpec

    here = Path(tm.__file__).parent
    d = yaml.safe_load((here / "published_rows.yaml").read_text())
    spec, board = d["models"]["person-detect"], d["boards"]["nucleo-f413zh"]
    row = next(r for r in d["rows"] if (r["board"], r["model"]) == ("nucleo-f413zh", "person-detect"))
    assert row["opt_level"] == "-Os"
    model = Path(tflm_tree) / spec["tflm_path"]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == spec["sha256"]
    # a Cortex-M4F profile: the same firmware
    rep = run_firmware(model, "stm32l4r5", tflm_dir=tflm_tree, jobs=2, opt_level=row["opt_level"])
    pred = on_board(rep.timing, MemorySpec(**board["memory"]), float(board["clock_mhz"]))
    stored = next(r for r in json.loads((here / "heldout.json").read_text())["rows"]
                  if (r["board"], r["model"]) == ("nucleo-f413zh", "person-detect"))
    assert pred["latency_ms"] == pytest.approx(stored["predicted_ms"], rel=0.005)
    assert rep.timing["heldout"]["rows"] == [{"row": "nucleo-f413zh person-detect", "published_ms": stored["ms"],
                                             "predicted_ms": stored["predicted_ms"], "error": stored["error"]}]
    assert "median |error|" in rep.timing["validation"]
