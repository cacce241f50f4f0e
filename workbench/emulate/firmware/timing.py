"""Core timing model: the executed instructions, by class, -> cycles on a Cortex-M core.

The classes and each core's cycles per class are data (``timing_tables.py``, with the
Technical Reference Manual each number comes from). Per executed instruction:

    cycles = issue cycles of its class (+ the core's pipeline refill P when it branched)
             - 1 when it is a load that pipelines behind a load (Cortex-M4 TRM 3.3.2)
             - the core's beat overlap when it is a Helium (MVE) instruction right after one of
               another pipe (Cortex-M55: 2-beat vector instructions overlap by one beat)

On a core that caches the low-overhead loop's branch back (Cortex-M55), a taken LE/LETP pays
no refill and its class's cycles (0); each loop entry (DLS/WLS) pays the first pass's refill,
and a TB that is a whole loop body also overlaps its last vector instruction with its first
on every pass that follows a taken LE.

plus, on the board, the memory: code and constant data in flash cost the flash wait states
on every fetch the flash accelerator or cache does not hide (``memory`` of the target
profile). Two numbers come out:

* ``lower``: the core at zero wait states, each taken branch at the TRM's shortest refill.
  No real board runs faster than this (the model leaves out stalls, never adds them).
* ``board``: the core with its typical refill, plus the flash stalls of the board's memory
  system (see :func:`board_cycles`).

Limits (documented, not modelled): register dependencies (load-use and address-generation
interlocks, vector result latencies), bus contention, TCM bank conflicts, on the dual-issue
Cortex-M7 the pairing of individual instructions (the M7 table uses per-class issue rates; see
``timing_tables``), on the Cortex-M55 the dual issue of 16-bit pairs and any overlap of a vector
instruction with a scalar one or across a TB boundary other than a loop's own back branch.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from workbench.emulate.firmware.timing_tables import (
    CLASS_OF,
    CORES,
    MVE_CLASS_OF,
    MVE_FLOAT_FORMS,
    MVE_FLOAT_MUL_FORMS,
    MVE_ONLY,
    CoreTiming,
)

_CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")
_IT = re.compile(r"^it[te]{0,3}$")
_REGLIST = re.compile(r"\{([^}]*)\}")
_QREG = re.compile(r"\bq[0-7]\b")
_VPT = re.compile(r"^vp(s?)t[te]{0,3}$")


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


def mve_class(mnemonic: str) -> str:
    """The Helium class of an MVE instruction ('vldrbt.u8' -> mve_load, 'vadd.f32' -> mve_fp), or 'other'."""
    low = mnemonic.lower()
    m, _, dtype = low.partition(".")
    vpt = _VPT.match(m)
    if vpt:
        return "mve_pred" if vpt.group(1) else "mve_cmp"
    if m not in MVE_CLASS_OF and m[-1:] in ("t", "e") and m[:-1] in MVE_CLASS_OF:
        m = m[:-1]  # predicated inside a VPT block
    cls = MVE_CLASS_OF.get(m, "other")
    if dtype.startswith("f") and (m in MVE_FLOAT_FORMS or m in MVE_FLOAT_MUL_FORMS):
        return "mve_fp"
    return cls


def is_mve(mnemonic: str, operands: str) -> bool:
    low = mnemonic.lower()
    return low.startswith("v") and (bool(_QREG.search(operands.lower())) or low.split(".", 1)[0] in MVE_ONLY
                                    or bool(_VPT.match(low.split(".", 1)[0])))


def classify(mnemonic: str, operands: str) -> tuple[str, int]:
    """(class, registers transferred) of one instruction; registers only for multiple transfers."""
    if is_mve(mnemonic, operands):
        return mve_class(mnemonic), 0
    if mnemonic.lower().split(".", 1)[0] == "lctp":
        return "mve_pred", 0
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


def writes_pc(cls: str, operands: str, core: CoreTiming | None = None) -> bool:
    """Whether an instruction of ``cls`` may branch (its taken executions pay the refill). A taken LE/LETP
    does not on a core that caches the loop-end branch (its first pass is charged to DLS/WLS)."""
    if cls == "loop_end":
        return not (core is not None and core.lob_cached)
    return cls in ("branch", "table_branch", "load_pc", "alu_pc", "loop_start") or (
        cls == "ldm" and "pc" in operands.lower())


@dataclass(frozen=True)
class TbCost:
    """One translation block, pre-costed for one core."""

    n: int  # instructions
    classes: tuple  # ((class, count), ...)
    lower: float  # cycles at zero wait states, not counting the refill of a branch at its end
    branch_end: bool  # its last instruction can branch (refill when it does)
    loads: int  # single and vector loads in it (the trace sees no data addresses: flash and SRAM loads alike)
    loop_entries: int = 0  # DLS/WLS in it on a core that caches LE: one refill each for the first pass
    wrap: float = 0.0  # a loop body ending in a cached LE back to its own start: beat overlap of its last
    # vector instruction with its first, saved on every taken LE (the next pass follows without a break)


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
    loads = entries = 0
    branch_end = False
    pipes = core.beat_pipes
    for k, ins in enumerate(insns):
        cls, nregs = classify(ins.mnemonic, ins.operands)
        classes[cls] += 1
        c = core.cycles.get(cls, core.cycles["other"])
        if cls in ("ldm", "stm", "fpu_ldm"):
            c = c + core.per_register * nregs
        if cls in ("load", "mve_load"):
            loads += 1
        if cls == "load" and prev_cls == "load" and _base_reg(ins.operands) != prev_dest and core.load_pipelining:
            c -= 1
        if cls in pipes and prev_cls in pipes and pipes[cls] != pipes[prev_cls]:
            c -= core.beat_overlap  # its first beat runs beside the previous vector instruction's last
        if cls == "loop_start" and core.lob_cached:
            entries += 1
        cycles += c
        prev_cls, prev_dest = cls, _dest(ins.operands)
        if k == len(insns) - 1:
            branch_end = writes_pc(cls, ins.operands, core)
    return TbCost(len(insns), tuple(sorted(classes.items())), cycles, branch_end, loads, entries,
                  _wrap(insns, core) if prev_cls == "loop_end" and core.lob_cached else 0.0)


def _wrap(insns: list, core: CoreTiming) -> float:
    """Beat overlap across the loop-back of a TB that is a whole low-overhead loop body."""
    m = re.search(r"(?:^|[\s,])([0-9a-f]+)\s*(?:<|$)", insns[-1].operands.lower())  # 'lr, 70009b54 <f+0x18>'
    first = getattr(insns[0], "addr", None)
    if len(insns) < 3 or m is None or first is None or int(m.group(1), 16) != first:
        return 0.0
    pipes = core.beat_pipes
    a = classify(insns[0].mnemonic, insns[0].operands)[0]
    b = classify(insns[-2].mnemonic, insns[-2].operands)[0]
    return core.beat_overlap if a in pipes and b in pipes and pipes[a] != pipes[b] else 0.0


@dataclass
class Cycles:
    """Cycles of one window (an op, or the whole invocation), per invocation."""

    instructions: float = 0.0
    lower: float = 0.0  # zero wait states, shortest refill
    core_typical: float = 0.0  # zero wait states, typical refill
    taken: float = 0.0  # taken branches
    loads: float = 0.0
    classes: Counter = None
    flash_reads: float = 0.0  # data reads in the code memory (the board's flash), from the QEMU plugin

    def __post_init__(self):
        if self.classes is None:
            self.classes = Counter()


def window_cycles(runs: Counter, fallthrough: Counter, tb_costs: dict, core: CoreTiming, invocations: int,
                  flash_per_tb: dict | None = None) -> Cycles:
    """``flash_per_tb``: flash reads per execution of each TB (:func:`~workbench.emulate.firmware.reads.flash_reads_per_tb`)."""
    out = Cycles()
    flash_per_tb = flash_per_tb or {}
    for tb, n in runs.items():
        c = tb_costs[tb]
        taken = (n - fallthrough.get(tb, 0)) if c.branch_end else 0
        refills = taken + n * c.loop_entries
        wrapped = (n - fallthrough.get(tb, 0)) * c.wrap
        out.instructions += n * c.n
        out.lower += n * c.lower + refills * core.refill_min - wrapped
        out.core_typical += n * c.lower + refills * core.refill_typ - wrapped
        out.taken += taken
        out.loads += n * c.loads
        out.flash_reads += n * flash_per_tb.get(tb, 0.0)
        for cls, k in c.classes:
            out.classes[cls] += n * k
    inv = max(1, invocations)
    out.instructions /= inv
    out.lower /= inv
    out.core_typical /= inv
    out.taken /= inv
    out.loads /= inv
    out.flash_reads /= inv
    out.classes = Counter({k: v / inv for k, v in out.classes.items()})
    return out


def board_cycles(c: Cycles, memory) -> float:
    """The board estimate: the core at its typical refill + flash stalls.

    A taken branch fetches from a new flash line; a data read of the code memory (the model's weights
    and constants: ``flash_reads``, counted per instruction by the QEMU plugin of
    :mod:`~workbench.emulate.firmware.reads`) waits for the flash. With ``memory.flash_wait_states`` W
    and the fraction ``memory.stall_fraction`` of those fetches the board's accelerator or cache does not
    hide, each costs W more cycles. The fraction is a board constant set from the rows marked
    ``use: fit`` in published_rows.yaml; reads of SRAM (the arena, the stack) never wait.
    """
    if memory is None:
        return c.core_typical
    return c.core_typical + memory.flash_wait_states * memory.stall_fraction * (c.taken + c.flash_reads)


def core_timing(core: str) -> CoreTiming | None:
    from workbench.emulate.firmware.machines import ALIASES, canonical_core

    return CORES.get(ALIASES.get(canonical_core(core), core))
