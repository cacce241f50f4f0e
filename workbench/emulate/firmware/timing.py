"""Core timing model: the executed instructions, by class, -> cycles on a Cortex-M core.

The classes and each core's cycles per class are data (``timing_tables.py``, with the
Technical Reference Manual each number comes from). Per executed instruction:

    cycles = issue cycles of its class (+ the core's pipeline refill P when it branched)
             - 1 when it is a load that pipelines behind a load (Cortex-M4 TRM 3.3.2)

plus, on the board, the memory: code and constant data in flash cost the flash wait states
on every fetch the flash accelerator or cache does not hide (``memory`` of the target
profile). Two numbers come out:

* ``lower``: the core at zero wait states, each taken branch at the TRM's shortest refill.
  No real board runs faster than this (the model leaves out stalls, never adds them).
* ``board``: the core with its typical refill, plus the flash stalls of the board's memory
  system (see :func:`board_cycles`).

Limits (documented, not modelled): register dependencies (load-use and address-generation
interlocks), bus contention, and on the dual-issue Cortex-M7 the pairing of individual
instructions (the M7 table uses per-class issue rates; see ``timing_tables``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from workbench.emulate.firmware.timing_tables import CLASS_OF, CORES, CoreTiming

_CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")
_IT = re.compile(r"^it[te]{0,3}$")
_REGLIST = re.compile(r"\{([^}]*)\}")


def base_mnemonic(mnemonic: str) -> str:
    """'ldr.w' -> 'ldr', 'movge' -> 'mov', 'orrsne.w' -> 'orr', 'vmla.f32' -> 'vmla', 'bls.n' -> 'b'."""
    m = mnemonic.lower().split(".", 1)[0]
    if m in CLASS_OF or _IT.match(m):
        return m
    for cand in (m[:-1] if m.endswith("s") else None,
                 m[:-2] if m[-2:] in _CONDS else None):
        if cand and cand in CLASS_OF:
            return cand
    if m[-2:] in _CONDS:
        c = m[:-2]
        if c.endswith("s") and c[:-1] in CLASS_OF:
            return c[:-1]
    return m


def classify(mnemonic: str, operands: str) -> tuple[str, int]:
    """(class, registers transferred) of one instruction; registers only for multiple transfers."""
    b = base_mnemonic(mnemonic)
    if _IT.match(b):
        return "it", 0
    cls = CLASS_OF.get(b, "other")
    ops = operands.lower()
    if cls in ("ldm", "stm", "fpu_ldm"):
        m = _REGLIST.search(ops)
        return cls, _count_regs(m.group(1)) if m else 1
    if cls in ("alu", "load") and re.match(r"^pc\b", ops):  # mov pc / ldr pc: a branch
        return ("load_pc" if cls == "load" else "alu_pc"), 0
    return cls, 0


def _count_regs(text: str) -> int:
    n = 0
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            ia, ib = int(re.sub(r"\D", "", a) or 0), int(re.sub(r"\D", "", b) or 0)
            n += abs(ib - ia) + 1
        elif part:
            n += 1
    return n


def writes_pc(cls: str, operands: str) -> bool:
    return cls in ("branch", "table_branch", "load_pc", "alu_pc") or (
        cls == "ldm" and "pc" in operands.lower())


@dataclass(frozen=True)
class TbCost:
    """One translation block, pre-costed for one core."""

    n: int  # instructions
    classes: tuple  # ((class, count), ...)
    lower: float  # cycles at zero wait states, not counting the refill of a branch at its end
    branch_end: bool  # its last instruction can branch (refill when it does)
    loads: int  # single loads in it (the trace sees no data addresses: flash and SRAM loads alike)


def _dest(operands: str) -> str:
    return operands.split(",", 1)[0].strip().lower()


def _base_reg(operands: str) -> str:
    m = re.search(r"\[(\w+)", operands.lower())
    return m.group(1) if m else ""


def cost_tb(insns: list, core: CoreTiming) -> TbCost:
    """Cycles of one TB on ``core`` (``insns``: objects with .mnemonic and .operands)."""
    cycles = 0.0
    classes: Counter = Counter()
    prev_cls, prev_dest = None, ""
    loads = 0
    branch_end = False
    for k, ins in enumerate(insns):
        cls, nregs = classify(ins.mnemonic, ins.operands)
        classes[cls] += 1
        c = core.cycles.get(cls, core.cycles["other"])
        if cls in ("ldm", "stm", "fpu_ldm"):
            c = c + core.per_register * nregs
        if cls == "load":
            loads += 1
            if prev_cls == "load" and _base_reg(ins.operands) != prev_dest and core.load_pipelining:
                c -= 1
        cycles += c
        prev_cls, prev_dest = cls, _dest(ins.operands)
        if k == len(insns) - 1:
            branch_end = writes_pc(cls, ins.operands)
    return TbCost(len(insns), tuple(sorted(classes.items())), cycles, branch_end, loads)


@dataclass
class Cycles:
    """Cycles of one window (an op, or the whole invocation), per invocation."""

    instructions: float = 0.0
    lower: float = 0.0  # zero wait states, shortest refill
    core_typical: float = 0.0  # zero wait states, typical refill
    taken: float = 0.0  # taken branches
    loads: float = 0.0
    classes: Counter = None

    def __post_init__(self):
        if self.classes is None:
            self.classes = Counter()


def window_cycles(runs: Counter, fallthrough: Counter, tb_costs: dict, core: CoreTiming, invocations: int) -> Cycles:
    out = Cycles()
    for tb, n in runs.items():
        c = tb_costs[tb]
        taken = (n - fallthrough.get(tb, 0)) if c.branch_end else 0
        out.instructions += n * c.n
        out.lower += n * c.lower + taken * core.refill_min
        out.core_typical += n * c.lower + taken * core.refill_typ
        out.taken += taken
        out.loads += n * c.loads
        for cls, k in c.classes:
            out.classes[cls] += n * k
    inv = max(1, invocations)
    out.instructions /= inv
    out.lower /= inv
    out.core_typical /= inv
    out.taken /= inv
    out.loads /= inv
    out.classes = Counter({k: v / inv for k, v in out.classes.items()})
    return out


def board_cycles(c: Cycles, memory) -> float:
    """The board estimate: the core at its typical refill + flash stalls.

    A taken branch fetches from a new flash line; a load may read weights or constants from
    flash. The trace sees no data addresses, so every single load counts and the fraction
    also absorbs the share of loads that hit SRAM. With ``memory.flash_wait_states`` W and the fraction ``memory.stall_fraction``
    of those fetches the accelerator or cache does not hide, each costs W more cycles. The
    fraction is a board constant set from the rows marked ``use: fit`` in published_rows.yaml.
    """
    if memory is None:
        return c.core_typical
    return c.core_typical + memory.flash_wait_states * memory.stall_fraction * (c.taken + c.loads)


def core_timing(core: str) -> CoreTiming | None:
    from workbench.emulate.firmware.machines import ALIASES, canonical_core

    return CORES.get(ALIASES.get(canonical_core(core), core))
