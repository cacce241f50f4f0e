"""Cycles of a firmware image on a board: the instruction trace costed by the core timing model.

``firmware_cycles`` traces one inference (``trace``), costs every translation block once
for the core (``timing``), and returns per invocation and per op the instruction-class
histogram, the lower bound (zero wait states) and the board estimate (the target's
``memory``), in cycles and milliseconds at the target's clock.
"""

from __future__ import annotations

import time

from workbench.core.errors import ToolFailure
from workbench.emulate.firmware import reads as rd
from workbench.emulate.firmware import timing as tm
from workbench.emulate.firmware import trace as tr

ROWS_FILE = "published_rows.yaml"  # beside this module

ROUTE = ("QEMU TB log (-d in_asm,exec,nochain), joined by address with arm-none-eabi-objdump -d of the ELF; flash "
         "reads per instruction from a QEMU TCG plugin in the same run (workbench/emulate/firmware/reads.py); "
         "classes and cycles: workbench/emulate/firmware/timing_tables.py")


def firmware_cycles(qemu: str, machine, elf, one_sample: bytes, target, *, timer_instructions: tuple | None = None,
                    op_names: dict | None = None, timeout: float = 900.0) -> dict | None:
    """The timing of one inference of ``elf`` on ``target``; None when the core has no timing table.
    ``timer_instructions``: (fewest, most) instructions of one inference by the timer, checked
    against the trace."""
    core = tm.core_timing(machine.core)
    if core is None:
        return None
    t0 = time.perf_counter()
    insns = tr.disassemble(elf, arch=getattr(machine, "disasm_arch", ""))
    syms = tr.symbols(elf)
    so = rd.plugin()
    if so is None:
        raise ToolFailure("The core timing model counts flash reads with a QEMU plugin, and no host C compiler (cc) "
                          "is installed to build it.", hint="Install one: sudo apt-get install gcc")
    trace = tr.run_trace(qemu, machine.qemu_machine, elf, one_sample, insns, syms, timeout=timeout,
                         reads_plugin=(so, machine.code.base, machine.code.size))
    flash = rd.flash_reads_per_tb(trace.tbs, trace.reads or {})
    trace_seconds = time.perf_counter() - t0
    diff = tr.check_total(trace, *timer_instructions) if timer_instructions else None
    missing = _Missing()
    costs = {tb: tm.cost_tb([insns.get(a) or missing.at(a) for a in addrs], core) for tb, addrs in trace.tbs.items()}
    memory = getattr(target, "memory", None)
    clock_hz = float(target.clock_mhz) * 1e6
    per_win = {w: tm.window_cycles(runs, trace.fallthrough[w], costs, core, trace.invocations, flash)
               for w, runs in trace.runs.items()}
    total = tm.Cycles()
    for c in per_win.values():
        _add(total, c)
    ops = []
    for w in sorted(k for k in per_win if k != tr.INTERPRETER):
        c = _inclusive(w, per_win, trace.parent)
        ops.append({"index": w, "op": (op_names or {}).get(w, "?"), "depth": trace.depth.get(w, 0),
                    "instructions": round(c.instructions), "taken_branches": round(c.taken), "loads": round(c.loads),
                    "flash_reads": round(c.flash_reads),
                    "histogram": {k: round(v) for k, v in c.classes.items()}, "cycles_lower": round(c.lower),
                    "cycles_board": round(tm.board_cycles(c, memory))})
    board = tm.board_cycles(total, memory)
    held = heldout(core.core)
    return {
        "route": ROUTE,
        "core_model": core.core,
        "core_sources": list(core.sources),
        "validation": validation(core, held),
        "heldout": held,
        "memory": memory.to_dict() if memory is not None else None,
        "instructions": round(total.instructions),
        "trace_vs_timer": None if diff is None else round(diff, 5),
        "histogram": {k: round(v) for k, v in sorted(total.classes.items(), key=lambda kv: -kv[1])},
        "taken_branches": round(total.taken),
        "loads": round(total.loads),
        "flash_reads": round(total.flash_reads),
        "cycles_lower": round(total.lower),
        "cycles_core": round(total.core_typical),
        "cycles_board": round(board),
        "latency_lower_ms": round(total.lower / clock_hz * 1e3, 4),
        "latency_ms": round(board / clock_hz * 1e3, 4),
        "clock_mhz": float(target.clock_mhz),
        "per_op": ops,
        "trace_seconds": round(trace_seconds, 2),
        "unknown_addresses": missing.count,
    }


def checked_rows(core: str) -> list[dict]:
    """The published rows marked ``use: check`` (held out) on boards of ``core``, from published_rows.yaml."""
    from pathlib import Path

    import yaml

    data = yaml.safe_load((Path(__file__).with_name(ROWS_FILE)).read_text(encoding="utf-8"))
    boards = data.get("boards", {})
    return [r for r in data.get("rows", []) if r.get("use") == "check"
            and boards.get(r.get("board"), {}).get("core") == core]


HELDOUT_FILE = "heldout.json"  # beside this module: the last `bench_firmware.py --heldout --write`
REGENERATE = "python scripts/bench_firmware.py --heldout --write"


def write_heldout(rows: list[dict], cores: dict) -> None:
    """Store the held-out comparison (every published row with its prediction; per-core errors of the check rows)."""
    import json
    from pathlib import Path

    keep = ("board", "core", "model", "use", "ms", "opt_level", "instructions", "predicted_ms", "lower_ms", "error",
            "tflm_levels_ms", "software")
    doc = {"regenerate": REGENERATE,
           "what": "the core timing model's board estimate for each published row of published_rows.yaml; "
                   "per core, the |error| of the rows marked use: check (never used to set a constant)",
           "rows": [{k: r.get(k) for k in keep} for r in rows], "cores": cores}
    Path(__file__).with_name(HELDOUT_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def heldout(core: str) -> dict | None:
    """The stored held-out errors of ``core`` ({"rows": [...], "median_abs_error", "worst_abs_error",
    "regenerate"}), or None when no check row of the core was measured."""
    import json
    from pathlib import Path

    path = Path(__file__).with_name(HELDOUT_FILE)
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    summary = doc.get("cores", {}).get(core)
    if not summary:
        return None
    rows = [{"row": f"{r['board']} {r['model']}", "published_ms": r["ms"], "predicted_ms": r["predicted_ms"],
             "error": r["error"]} for r in doc["rows"] if r["core"] == core and r["use"] == "check"]
    return {"rows": rows, "median_abs_error": summary["median_abs_error"],
            "worst_abs_error": summary["worst_abs_error"], "regenerate": doc.get("regenerate", REGENERATE)}


def validation(core, h: dict | None = None) -> str:
    """What checks ``core``'s timing table: the held-out published rows with their errors (``h``, as
    :func:`heldout` gives them), or why none does."""
    rows = checked_rows(core.core)
    if not rows:
        return core.unvalidated or "no published row checked"
    if h is None:
        names = ", ".join(f"{r['board']} {r['model']}" for r in rows)
        return f"{len(rows)} published row(s) checked ({names}); errors: {REGENERATE}"
    each = ", ".join(f"{r['row']} {r['error']:+.1%}" for r in h["rows"])
    return (f"{len(h['rows'])} published row(s) checked ({each}): median |error| {h['median_abs_error']:.1%}, worst "
            f"{h['worst_abs_error']:.1%}; regenerate: {h['regenerate']}")


def on_board(timing: dict, memory, clock_mhz: float) -> dict:
    """The same trace on another board of the same core: lower bound and board estimate in ms at
    ``clock_mhz`` with ``memory`` (a MemorySpec-like object, or None for zero wait states)."""
    c = tm.Cycles(instructions=timing["instructions"], lower=timing["cycles_lower"],
                  core_typical=timing["cycles_core"], taken=timing["taken_branches"], loads=timing["loads"],
                  flash_reads=timing["flash_reads"])
    board = tm.board_cycles(c, memory)
    hz = clock_mhz * 1e6
    return {"cycles_lower": round(c.lower), "cycles_board": round(board),
            "latency_lower_ms": c.lower / hz * 1e3, "latency_ms": board / hz * 1e3}


class _Missing:
    """An executed address objdump did not list (code outside the ELF's sections): costed as one ALU op."""

    def __init__(self):
        self.count = 0

    def at(self, addr):
        self.count += 1
        return tr.Insn(addr, 2, "nop", "")


def _add(a: tm.Cycles, b: tm.Cycles) -> None:
    a.instructions += b.instructions
    a.lower += b.lower
    a.core_typical += b.core_typical
    a.taken += b.taken
    a.loads += b.loads
    a.flash_reads += b.flash_reads
    a.classes.update(b.classes)


def _inclusive(w, per_win: dict, parent: dict) -> tm.Cycles:
    """An op's cycles with those of the ops nested in it (the timer's per-op numbers are inclusive too)."""
    out = tm.Cycles()
    for k, c in per_win.items():
        p = k
        while p is not None and p != w:
            p = parent.get(p)
        if p == w:
            _add(out, c)
    return out
