"""Core timing model: instruction classes, per-core cycle tables, the TB-log trace and its windows.

The loop test builds a few instructions of known mix with the Arm toolchain, traces them on
QEMU and checks the histogram and the cycles against numbers worked out by hand from the
Cortex-M4 TRM table (not from the code under test).
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
    bl main
    .thumb_func
    .global main
main:
    ldr r0, =0x20000000
    ldr r1, =0x20000100
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
kernel:
    movs r5, #0
1:
    ldr r3, [r0], #4
    ldr r4, [r1], #4
    smlad r5, r3, r4, r5
    subs r2, r2, #1
    bne 1b
    bx lr
"""


def test_hand_written_loop_gives_the_table_cycles(tmp_path):
    _tools()
    (tmp_path / "loop.S").write_text(_LOOP)
    elf = tmp_path / "loop.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-nostartfiles",
                    "-Wl,-Ttext=0x40", "-Wl,--section-start=.vectors=0", "-Wl,-e,0x40", "-o", str(elf),
                    str(tmp_path / "loop.S")], check=True, capture_output=True)
    insns, syms = tr.disassemble(elf), tr.symbols(elf)
    t = tr.run_trace("qemu-system-arm", "mps2-an386", elf, b"", insns, syms, timeout=60,
                     markers=tr.Markers(invoke="kernel", main="main", begin=None, end=None), harness=False)
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
