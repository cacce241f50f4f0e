"""The host core of an NPU board on firmware: instruction counts for the ops the NPU compiler
leaves on the CPU.

QEMU has no Ethos-U, so the Vela-compiled model (its ``ethos-u`` custom op included) cannot
run on the emulated board. What does run is the input model itself, every op on the host
core: its TFLite Micro + CMSIS-NN firmware built for that core (the Cortex-M55 with Helium on
QEMU ``mps3-an547``, see :mod:`workbench.emulate.firmware`). Its per-op instruction counts
give the instructions of each op Vela leaves on the CPU (matched by the op's output tensor,
which Vela keeps), and its total is what the model costs on the host core without the NPU.

Latency from that run comes from the core timing model (:mod:`workbench.emulate.firmware.timed`:
the Cortex-M55 table of ``timing_tables``, lower bound and board estimate, per op too), or a
fitted CPI where a core has no table; the CPU ops' time in the NPU total stays the documented
cost model's, with the timing model's cycles of each matched op beside it.

When the firmware cannot run here (no toolchain, no TFLM tree) or a tool fails, Vela's
figures are still the report; a note says why the host-core counts are missing. With
``firmware=True`` such a failure is an error instead.
"""

from __future__ import annotations

from workbench.core.errors import MissingDependencyError, RuntimeFailure, ToolFailure, UnsupportedError
from workbench.emulate.targets import Target

BASIS = ("the input model with every op on the host core (TFLite Micro + CMSIS-NN firmware on QEMU, no NPU); "
         "the ops Vela leaves on the CPU are matched to it by their output tensor")


def output_names(graph, op) -> tuple[str, ...]:
    names = []
    for i in op.outputs:
        t = graph.tensor(i)
        if t is not None and t.name:
            names.append(t.name)
    return tuple(names)


def host_firmware(path, original_graph, compiled_graph, cpu_ops, target: Target, *, firmware: bool | None,
                  tflm_dir, notes: list[str], opt_level: str | None = None) -> tuple[dict | None, dict]:
    """(summary of the host-core firmware run or None, {compiled op index: instructions or None})."""
    if firmware is False:
        return None, {}
    from workbench.emulate.firmware import firmware_support, run_firmware

    why_not = None if firmware else firmware_support(target, tflm_dir=tflm_dir)
    if why_not is not None:
        notes.append(f"No host-core firmware run ({why_not}): the CPU ops' time is the cost model only.")
        return None, {}
    try:
        fw = run_firmware(path, target, tflm_dir=tflm_dir, opt_level=opt_level)
    except (ToolFailure, MissingDependencyError, UnsupportedError, RuntimeFailure) as exc:
        if firmware:
            raise
        notes.append(f"No host-core firmware run: {exc.message.splitlines()[0][:300]}; the CPU ops' time is the cost "
                     "model only.")
        return None, {}
    notes.extend(fw.notes)
    by_output: dict[tuple[str, ...], int] = {}
    for op in original_graph.ops:
        by_output.setdefault(output_names(original_graph, op), op.index)
    instr = {p["index"]: int(p["instructions"]) for p in fw.per_op if int(p.get("depth", 0)) == 0}
    timed = {p["index"]: p for p in (fw.timing or {}).get("per_op", []) if int(p.get("depth", 0)) == 0}
    matched: dict[int, int | None] = {}
    cycles: dict[int, dict] = {}
    for op in cpu_ops:
        idx = by_output.get(output_names(compiled_graph, op))
        matched[op.index] = instr.get(idx) if idx is not None else None
        if idx in timed:
            cycles[op.index] = {"lower": timed[idx]["cycles_lower"], "board": timed[idx]["cycles_board"]}
    known = [v for v in matched.values() if v is not None]
    summary = {
        "core": fw.core, "machine": fw.machine, "cpu": fw.cpu, "kernels": fw.kernels, "basis": BASIS,
        "instructions_whole_model": fw.instructions,
        "instructions_cpu_ops": sum(known) if len(known) == len(matched) else None,
        "cpu_ops_matched": len(known), "cpu_ops": len(matched),
        "latency_ms_whole_model": fw.latency_ms,
        "latency_lower_ms_whole_model": fw.latency_lower_ms,
        "timing_validation": (fw.timing or {}).get("validation"),
        "cpu_ops_cycles": {str(k): v for k, v in cycles.items()},  # compiled op index -> core timing model cycles
        "latency_basis": (getattr(fw, "latency_method", None) or "instructions x the core's fitted CPI / clock"
                          if fw.latency_ms is not None
                          else f"unknown: {fw.cpi_source}; the CPU ops' time is the documented cost model"),
        "flash_bytes_whole_model": fw.flash_bytes, "ram_bytes_whole_model": fw.ram_bytes,
        "instructions_per_tick": fw.instructions_per_tick, "elf": fw.elf, "firmware_key": fw.firmware_key,
    }
    return summary, matched


def host_note(summary: dict, target: Target) -> str:
    """One line for the notes: what the host-core firmware counted and what its latency rests on."""
    cpu = summary["instructions_cpu_ops"]
    part = (f"the {summary['cpu_ops']} op(s) left on the CPU run {cpu:,} instructions" if cpu is not None and summary["cpu_ops"]
            else "no op is left on the CPU" if not summary["cpu_ops"]
            else f"{summary['cpu_ops_matched']} of the {summary['cpu_ops']} CPU op(s) were matched")
    val = summary.get("timing_validation")
    lat = (f"{summary['latency_ms_whole_model']:.4f} ms at {target.clock_mhz:g} MHz by {summary['latency_basis']}"
           + (f", {val.split(':')[0]}" if val else "")
           if summary["latency_ms_whole_model"] is not None else "latency unknown: no CPI is fitted for "
           f"{summary['core']}, so the CPU ops' time is the cost model")
    return (f"Host core on firmware ({summary['core']}, TFLite Micro + CMSIS-NN on QEMU {summary['machine']}): {part}; "
            f"the whole model without the NPU runs {summary['instructions_whole_model']:,} instructions ({lat}).")
