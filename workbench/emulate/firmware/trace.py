"""What the firmware executes, by instruction: QEMU's execution log joined with objdump of the ELF.

Route: QEMU 7.2 as packaged here ships no TCG plugin header or plugins, so the per-instruction
view comes from QEMU's own logs, which need no compile step:

    qemu-system-arm ... -d in_asm,exec,nochain -D /dev/stdout

``in_asm`` prints each translation block (TB) once, when QEMU translates it, as the guest
addresses of its instructions; ``exec`` prints one ``Trace`` line per TB execution (``nochain``
makes every execution pass through the logger instead of jumping TB to TB). The log is
stream-parsed: counts per TB and per window, nothing stored. The instructions themselves
(mnemonic and operands) come from ``arm-none-eabi-objdump -d`` of the ELF, joined by address,
so the classification does not depend on how QEMU's disassembler was built. Measured on the
MLPerf Tiny keyword-spotting firmware (7.7 M instructions, one inference): 0.2 s under
``-icount``, 3.2 s with the TB log (71 MB of log, parsed as it streams); one log line per
instruction (``-singlestep``) took 50 s and 820 MB, so TBs it is.

Windows: TB executions are attributed to the invocation (from the entry of
``MicroInterpreter::Invoke`` until control is back in ``wb_main``) and, inside it, to the op
whose profiler event is open (from the entry of the harness's ``TickProfiler::BeginEvent``
to the entry of its ``EndEvent``; nested events go to the innermost op). Taken branches are
told from not-taken ones by the next TB: a TB whose successor starts at its fall-through
address did not branch.

The trace runs without ``-icount`` (instruction counting is not needed: the trace counts
instructions itself); ``check_total`` compares its total with the timer-based count.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.errors import ToolFailure

_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\t([^\t]+)(?:\t([^\t@;<]*))?")
_INASM_ADDR = re.compile(r"^0x([0-9a-f]+):")

BEGIN_EVENT = "_ZN12_GLOBAL__N_112TickProfiler10BeginEventEPKc"
END_EVENT = "_ZN12_GLOBAL__N_112TickProfiler8EndEventEm"
INVOKE = "_ZN6tflite16MicroInterpreter6InvokeEv"
MAIN = "wb_main"
INTERPRETER = -1  # window of the interpreter's own work between ops


@dataclass(frozen=True)
class Insn:
    addr: int
    size: int
    mnemonic: str
    operands: str


def disassemble(elf: str | os.PathLike, objdump: str = "arm-none-eabi-objdump", arch: str = "") -> dict[int, Insn]:
    """Address -> instruction of every instruction in the ELF's code (``objdump -d``; ``arch``: its ``-m``)."""
    try:
        out = subprocess.run([objdump, "-d", "--no-show-raw-insn", *(["-m", arch] if arch else []), str(elf)],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolFailure(f"{objdump} could not disassemble {elf}: {exc}") from exc
    rows = []
    for line in out.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if m and not m.group(2).startswith("."):  # .word / .short literals are data
            rows.append((int(m.group(1), 16), m.group(2).strip(), (m.group(3) or "").strip()))
    insns: dict[int, Insn] = {}
    for i, (addr, mnem, ops) in enumerate(rows):
        nxt = rows[i + 1][0] if i + 1 < len(rows) else addr + 4
        size = 4 if mnem.endswith(".w") or (nxt - addr) >= 4 else 2
        insns[addr] = Insn(addr, size, mnem, ops)
    return insns


def symbols(elf: str | os.PathLike, nm: str = "arm-none-eabi-nm") -> dict[str, tuple[int, int]]:
    """Mangled symbol -> (address without the Thumb bit, size)."""
    try:
        out = subprocess.run([nm, "-S", str(elf)], check=True, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolFailure(f"{nm} could not read the symbols of {elf}: {exc}") from exc
    syms = {}
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            syms[parts[3]] = (int(parts[0], 16) & ~1, int(parts[1], 16))
        elif len(parts) == 3 and parts[1] in "tTwW":  # no size (hand-written assembly without .size)
            syms.setdefault(parts[2], (int(parts[0], 16) & ~1, 0))
    return syms


@dataclass
class Trace:
    """TB executions of the traced run, per window, summed over the invocations."""

    tbs: dict = field(default_factory=dict)  # TB id -> tuple of instruction addresses
    runs: dict = field(default_factory=dict)  # window -> Counter(TB id -> executions)
    fallthrough: dict = field(default_factory=dict)  # window -> Counter(TB id -> executions that fell through)
    invocations: int = 0
    lines: int = 0
    depth: dict = field(default_factory=dict)  # op window -> nesting depth
    parent: dict = field(default_factory=dict)  # op window -> enclosing op window (nested events)
    reads: dict | None = None  # instruction address -> (runs, flash reads, other reads), from the plugin (reads.py)

    def instructions(self, window=None) -> int:
        wins = self.runs if window is None else {window: self.runs.get(window, Counter())}
        return sum(n * len(self.tbs[tb]) for c in wins.values() for tb, n in c.items())


def trace_command(qemu: str, qemu_machine: str, elf: str | os.PathLike) -> list[str]:
    return [str(qemu), "-M", qemu_machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-kernel", str(elf),
            "-d", "in_asm,exec,nochain", "-D", "/dev/stdout"]


@dataclass(frozen=True)
class Markers:
    """The symbols that open and close the windows: the invocation (entry of ``invoke`` until the
    first TB inside ``main``) and the ops (entry of ``begin`` / ``end``; optional)."""

    invoke: str = INVOKE
    main: str = MAIN
    begin: str | None = BEGIN_EVENT
    end: str | None = END_EVENT


HARNESS = Markers()


def whole_instructions(addrs: list[int], sizes: dict) -> tuple[int, ...]:
    """The instruction addresses of a TB as objdump sizes them. QEMU 7.2's in_asm disassembler does
    not know MVE (Helium) and prints a 32-bit MVE instruction (``vadd.i32 q3, q3, r6``, ``letp``) as
    two 16-bit lines; the second half is no instruction and is dropped here."""
    out: list[int] = []
    end = -1
    for a in addrs:
        if a < end:
            continue
        out.append(a)
        end = a + sizes.get(a, 2)
    return tuple(out)


def parse_log(lines, syms: dict[str, tuple[int, int]], markers: Markers = HARNESS, sizes: dict | None = None) -> Trace:
    """Stream-parse QEMU's ``in_asm,exec,nochain`` log (an iterable of text lines). ``sizes``:
    instruction address -> bytes (where a TB falls through to; 2 when unknown)."""
    sizes = sizes or {}
    for name in (markers.begin, markers.end, markers.invoke, markers.main):
        if name is not None and name not in syms:
            raise ToolFailure(f"The firmware has no symbol {name}; the trace cannot find the invocation and its ops.",
                              hint="The harness or TFLM changed; update workbench/emulate/firmware/trace.py.")
    begin = syms[markers.begin][0] if markers.begin else -1
    end = syms[markers.end][0] if markers.end else -1
    invoke = syms[markers.invoke][0]
    main_lo, main_size = syms[markers.main]
    main_hi = main_lo + main_size
    tr = Trace()
    pending: list[int] | None = None
    in_invoke = False
    stack: list[int] = []
    handle = 0
    prev_fall_c = None
    prev_tb = None
    prev_fall = -1
    tbs = tr.tbs
    for line in lines:
        c0 = line[:1]
        if c0 == "0":
            m = _INASM_ADDR.match(line)
            if m and pending is not None:
                pending.append(int(m.group(1), 16))
            continue
        if c0 == "I":  # "IN: symbol": a new translation block follows
            pending = []
            continue
        if c0 != "T":
            continue
        tr.lines += 1
        # Trace 0: 0x7f4f44000100 [00800408/00000f78/00000110/ff000200] Reset_Handler
        sp = line.split(" ", 4)
        tb = sp[2]
        pc = int(sp[3][10:18], 16)
        if pending is not None:
            if not pending:
                raise ToolFailure("QEMU's in_asm log lists no instruction addresses (built without a disassembler?); "
                                  "the instruction trace needs them.")
            tbs[tb] = whole_instructions(pending, sizes)
            pending = None
        elif tb not in tbs:
            tbs[tb] = (pc,)  # executed without being logged (should not happen): count one instruction
        if prev_tb is not None and pc == prev_fall:
            prev_fall_c[prev_tb] += 1
        if pc == invoke and not in_invoke:  # (a branch back to the entry inside the call is no new call)
            in_invoke, stack, handle = True, [], 0
            tr.invocations += 1
        elif in_invoke and main_lo <= pc < main_hi:
            in_invoke = False
        if not in_invoke:
            prev_tb = None
            continue
        if pc == begin:
            tr.depth.setdefault(handle, len(stack))
            if stack:
                tr.parent.setdefault(handle, stack[-1])
            stack.append(handle)
            handle += 1
        elif pc == end and stack:
            stack.pop()
        win = stack[-1] if stack else INTERPRETER
        counts = tr.runs.get(win)
        if counts is None:
            counts = tr.runs[win] = Counter()
            tr.fallthrough[win] = Counter()
        counts[tb] += 1
        prev_fall_c, prev_tb = tr.fallthrough[win], tb
        addrs = tbs[tb]
        prev_fall = addrs[-1] + sizes.get(addrs[-1], 2)
    return tr


def run_trace(qemu: str, qemu_machine: str, elf: str | os.PathLike, input_bytes: bytes, insns: dict[int, Insn],
              syms: dict, *, timeout: float = 900.0, markers: Markers = HARNESS, harness: bool = True,
              reads_plugin: tuple | None = None) -> Trace:
    """Run ``elf`` on ``input_bytes`` with the TB log and parse it as it streams (``harness``: the
    firmware writes report.txt through semihosting and must say ``status ok``). ``reads_plugin``:
    (plugin path, code base, code size): the same run also counts each instruction's flash reads
    (:mod:`~workbench.emulate.firmware.reads`) into ``Trace.reads``."""
    import tempfile

    from workbench.emulate.firmware import reads as rd

    with tempfile.TemporaryDirectory(prefix="wb-fw-trace-") as d:
        (Path(d) / "input.bin").write_bytes(input_bytes)
        cmd = trace_command(qemu, qemu_machine, elf)
        if reads_plugin is not None:
            cmd += rd.plugin_args(*reads_plugin, Path(d) / rd.COUNTS)
        proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1 << 20)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            tr = parse_log(proc.stdout, syms, markers, {a: i.size for a, i in insns.items()})
            err = proc.stderr.read()
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        report = (Path(d) / "report.txt").read_text(errors="replace") if (Path(d) / "report.txt").exists() else ""
        if reads_plugin is not None and rc == 0:
            tr.reads = rd.read_counts(Path(d) / rd.COUNTS)
    if rc != 0 or (harness and "status ok" not in report):
        raise ToolFailure(f"The traced run of {Path(elf).name} on QEMU {qemu_machine} did not finish "
                          f"(exit {rc}{', timed out' if rc < 0 else ''}): {err.strip()[-300:]}",
                          hint="Pass a longer timeout for large models.")
    if tr.invocations == 0:
        raise ToolFailure(f"The trace of {Path(elf).name} saw no call of MicroInterpreter::Invoke.")
    return tr


def check_total(trace: Trace, low: int, high: int | None = None, tolerance: float = 0.002) -> float:
    """Relative difference between the traced instructions per invocation and the timer's count
    (``low``..``high``: the fewest and most instructions of one inference under ``-icount``);
    ToolFailure when it lies outside that range by more than ``tolerance``."""
    high = low if high is None else high
    traced = trace.instructions() / max(1, trace.invocations)
    ref = min(max(traced, low), high)
    diff = traced / max(1, ref) - 1
    if abs(diff) > tolerance:
        raise ToolFailure(f"The instruction trace counts {traced:,.0f} instructions per inference, the timer "
                          f"{low:,}..{high:,}: {diff:+.2%} apart (more than {tolerance:.1%}).",
                          hint="The TB log and the -icount run disagree; the trace cannot be trusted for this model.")
    return diff
