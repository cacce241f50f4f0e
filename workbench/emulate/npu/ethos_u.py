"""Arm Ethos-U boards: Vela's performance estimate for the NPU part, the cost model for the CPU part.

What is reported, and where each number comes from:

* NPU cycles, time at the NPU clock, SRAM and flash used, original and NPU-encoded weight
  bytes, and the per-layer table: Vela's own summary and per-layer CSVs
  (:mod:`workbench.export.vela`), unchanged. They are the vendor compiler's performance
  estimate; Vela's README says they are not accurate representations of real performance
  (profile on an FPGA or a Fixed Virtual Platform for that).
* The ops Vela leaves on the CPU: read from the compiled model (every op that is not an
  ``ethos-u`` custom op), each with Vela's reasons, timed with the documented cost model of
  :mod:`workbench.emulate.cost` and the host core's coefficients from the profile. Where the
  host core's firmware runs here (:mod:`workbench.emulate.npu.host_cpu`: the Cortex-M55 on
  QEMU), each also gets its instruction count and its core timing model cycles (lower bound
  and board estimate) on that firmware, and the report gives what the whole model costs on the
  host core without the NPU; the CPU time in the total stays the cost model's.
* Flash: the compiled model + the runtime's code; RAM: Vela's SRAM (and DRAM) use + the
  runtime's RAM besides the arena; fits: against the board's memories, and Vela's SRAM use
  against the SRAM the NPU may use (``npu.sram_bytes``).
"""

from __future__ import annotations

from pathlib import Path

from workbench.emulate.cost import LatencyEstimate, OpCost, activation_bytes, op_cycles, weight_bytes
from workbench.emulate.memory import Memory
from workbench.emulate.npu import NPU_EMULATORS
from workbench.emulate.npu.host_cpu import host_firmware, host_note
from workbench.emulate.report import TargetReport
from workbench.emulate.targets import Target
from workbench.core.files import sha256_file

NPU_OP = "ethos-u"
ESTIMATE_LABEL = ("Vela's performance estimate (the vendor compiler's model of the NPU; Vela's README: not an accurate "
                  "representation of real performance, profile on an FPGA or FVP for that)")


def vela_options(target: Target):
    from workbench.export.vela import VelaOptions

    n = target.npu
    return VelaOptions(accelerator=n.accelerator, system_config=n.system_config, memory_mode=n.memory_mode,
                       clock_hz=_clock_override(n), arena_cache_size=n.arena_cache_size)


def _clock_override(npu) -> float | None:
    """None when the profile's NPU clock is the system config's own core_clock (Vela then runs unchanged)."""
    base = _system_clock(npu.system_config)
    return None if base is not None and abs(base - npu.clock_hz) < 1.0 else npu.clock_hz


def _system_clock(name: str) -> float | None:
    import configparser
    from importlib import resources

    try:
        ini = resources.files("ethosu").joinpath("config_files/Arm/vela.ini").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    cp = configparser.ConfigParser()
    cp.read_string(ini)
    sec = f"System_Config.{name}"
    try:
        return float(cp.get(sec, "core_clock"))
    except (configparser.Error, ValueError):
        return None


@NPU_EMULATORS.register("ethos-u")
def emulate_ethos_u(path: Path, handle, target: Target, *, threads=None, eval_data=None, reference=None,
                    eval_samples=500, metric=None, timeout: float = 300.0, firmware: bool | None = None,
                    tflm_dir=None, opt_level: str | None = None) -> TargetReport:
    from workbench.export.vela import compile_for_npu
    from workbench.frontends.tflite_reader import read_tflite_bytes

    path = Path(path)
    res = compile_for_npu(path, vela_options(target), timeout=timeout)
    compiled = read_tflite_bytes(res.compiled, f"{path.name} compiled by Vela")
    n_threads = 1 if target.runtime.name == "tflm" else max(1, min(threads or target.threads, target.cores))
    npu_ms = res.inference_time_s * 1e3
    npu_ops = [op for op in compiled.ops if op.kind == NPU_OP]
    cpu_ops = [op for op in compiled.ops if op.kind != NPU_OP]
    reasons = _reasons_by_name(res.cpu_ops)
    rows, cpu_rows = [], []
    for op in compiled.ops:
        if op.kind == NPU_OP:
            ms = npu_ms / max(1, len(npu_ops))
            rows.append(OpCost(index=op.index, name=op.name or "ethos-u command stream", kind=op.kind, dtype=compiled.op_dtype(op),
                               macs=0, bytes=0, weight_bytes=weight_bytes(compiled, op),
                               cycles=res.total_cycles / max(1, len(npu_ops)), latency_ms=ms, delegated=None))
            continue
        dlg = None if target.runtime.name != "litert" else True
        cyc = op_cycles(compiled, op, target, n_threads, dlg)
        row = OpCost(index=op.index, name=op.name, kind=op.kind, dtype=compiled.op_dtype(op), macs=compiled.macs(op),
                     bytes=activation_bytes(compiled, op), weight_bytes=weight_bytes(compiled, op), cycles=cyc,
                     latency_ms=cyc / target.clock_hz * 1e3, delegated=dlg)
        rows.append(row)
        cpu_rows.append({"index": op.index, "op": op.kind, "name": op.name, "dtype": row.dtype, "macs": row.macs,
                         "cpu_cycles": round(cyc, 1), "cpu_ms": round(row.latency_ms, 6),
                         "reasons": _reasons_for(op, compiled, reasons)})
    cpu_ms = sum(r["cpu_ms"] for r in cpu_rows)
    fw_notes: list[str] = []
    host, host_instr = host_firmware(path, handle.meta["graph"], compiled, cpu_ops, target, firmware=firmware,
                                     tflm_dir=tflm_dir, notes=fw_notes, opt_level=opt_level)
    if host is not None:
        for r in cpu_rows:
            r["firmware_instructions"] = host_instr.get(r["index"])
            cyc = host["cpu_ops_cycles"].get(str(r["index"]))
            if cyc is not None:
                r["firmware_cycles_lower"], r["firmware_cycles_board"] = cyc["lower"], cyc["board"]
    latency = LatencyEstimate(total_ms=npu_ms + cpu_ms, threads=n_threads, ops=tuple(rows),
                              model=(f"NPU: {ESTIMATE_LABEL}, {res.total_cycles:,} cycles at {res.clock_hz / 1e6:g} MHz; "
                                     f"CPU ops: cost model on {target.core} at {target.clock_mhz:g} MHz "
                                     "(cycles = overhead + class x cycles/MAC x MACs + cycles/byte x activation bytes)"))
    mem, sram_fits = _memory(target, res)
    notes = _notes(target, res, cpu_rows, len(npu_ops), compiled, handle, host is not None)
    notes += [host_note(host, target)] if host is not None else []
    notes += fw_notes
    npu = {
        "family": target.npu.family, "accelerator": target.npu.accelerator, "system_config": res.options.system_config_name(),
        "memory_mode": target.npu.memory_mode, "clock_mhz": target.npu.clock_mhz, "compiler": "ethos-u-vela",
        "compiler_version": _vela_version(), "estimate": ESTIMATE_LABEL,
        **res.summary_dict(),
        "npu_ms": round(npu_ms, 6), "cpu_ms": round(cpu_ms, 6), "total_ms": round(npu_ms + cpu_ms, 6),
        "sram_budget_bytes": target.npu.sram_bytes, "sram_fits": sram_fits,
        "ops_on_npu": sum(1 for r in res.per_layer if r.get("target") == "NPU") or res.npu_ops,
        "cpu_ops_detail": cpu_rows, "vela_cpu_ops": [dict(c) for c in res.cpu_ops], "host_firmware": host,
        "per_layer": [dict(r) for r in res.per_layer],
        "command": " ".join(["vela", *res.command[3:]]),
    }
    accuracy = None
    if eval_data is not None:
        from workbench.emulate.emulator import _accuracy

        accuracy = _accuracy(handle, target, n_threads, eval_data, reference, eval_samples, metric=metric)
        accuracy["note"] = ("accuracy of the original model in the host core's runtime: the NPU's arithmetic is not "
                            "emulated on this machine (it is integer-exact by design, but not checked here)")
    return TargetReport(target=target, model=str(path), model_bytes=path.stat().st_size, model_sha256=sha256_file(path),
                        memory=mem, latency=latency, unsupported_ops=(), notes=tuple(notes), accuracy=accuracy,
                        runtime={"vela": _vela_version(), "npu_ops": len(npu_ops), "cpu_ops": len(cpu_ops)}, npu=npu)


def _vela_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ethos-u-vela")
    except PackageNotFoundError:
        return "unknown"


def _reasons_by_name(vela_cpu_ops) -> dict[str, list[str]]:
    return {c["name"]: list(c["reasons"]) for c in vela_cpu_ops}


def _reasons_for(op, graph, reasons: dict[str, list[str]]) -> list[str]:
    """Vela names each CPU op by its output tensor; match on that, then on the op's layer name."""
    for i in op.outputs:
        t = graph.tensor(i)
        if t is not None and t.name in reasons:
            return reasons[t.name]
    if op.name in reasons:
        return reasons[op.name]
    return ["not offloaded by Vela (no reason given in its output)"]


def _memory(target: Target, res) -> tuple[Memory, bool]:
    rt = target.runtime
    mcu = rt.name == "tflm"
    model = len(res.compiled)
    flash = model + (rt.code_bytes if mcu else 0)
    flash_budget = target.npu.flash_bytes or target.flash_bytes
    ram = res.sram_bytes + res.dram_bytes + rt.ram_overhead_bytes if mcu else res.sram_bytes + res.dram_bytes
    ram_budget = target.ram_bytes if mcu else max(0, target.ram_bytes - rt.ram_overhead_bytes)
    breakdown = {"compiled_model_bytes": model, ("runtime_code_bytes" if mcu else "runtime_storage_bytes"): rt.code_bytes,
                 "npu_sram_bytes": res.sram_bytes, "npu_dram_bytes": res.dram_bytes, "npu_flash_bytes": res.flash_bytes,
                 "original_weight_bytes": res.original_weight_bytes, "encoded_weight_bytes": res.encoded_weight_bytes,
                 "runtime_ram_bytes": rt.ram_overhead_bytes if mcu else None,
                 "source": "Vela's memory summary + the profile's runtime figures"}
    mem = Memory(flash_bytes=flash, flash_budget=flash_budget, ram_bytes=ram, ram_budget=ram_budget, arena_bytes=None,
                 breakdown=breakdown, source="vela")
    return mem, res.sram_bytes <= target.npu.sram_bytes


def _notes(target: Target, res, cpu_rows: list[dict], n_npu: int, compiled, handle, host_ran: bool = False) -> list[str]:
    notes = [f"NPU figures are {ESTIMATE_LABEL}."]
    if res.original_weight_bytes:
        notes.append(f"Vela compresses the weights: {res.original_weight_bytes:,} B in the model -> {res.encoded_weight_bytes:,} B "
                     "encoded for the NPU (the encoded stream includes scales and biases, so it can be larger on tiny models).")
    notes += ["CPU op times are the cost model with the profile's coefficients for " + target.core +
              ("; their instruction counts come from the host core's firmware (below)." if host_ran
               else " (the host core's firmware did not run).")]
    if cpu_rows:
        listed = "; ".join(f"{r['op']} '{(r['name'] or '?').split(';')[0]}' ({', '.join(r['reasons'])})" for r in cpu_rows[:8])
        more = f"; and {len(cpu_rows) - 8} more (all in --json)" if len(cpu_rows) > 8 else ""
        notes.append(f"{len(cpu_rows)} op(s) stay on the CPU, Vela's reasons: {listed}{more}.")
    if n_npu == 0:
        dtypes = sorted({compiled.op_dtype(op) for op in compiled.ops})
        notes.append(f"Nothing runs on the NPU (the model computes in {', '.join(dtypes)}): Ethos-U runs int8/int16 "
                     "quantized ops only. Quantize it first: workbench quantize MODEL --scheme int8 ...")
    elif any(r["dtype"].startswith("float") for r in cpu_rows):
        notes.append("Float ops stay on the CPU (a float or hybrid model): only int8/int16 ops run on the NPU; a full "
                     "int8 model keeps more on the NPU.")
    if target.runtime.name == "litert":
        notes.append("Ops left on the CPU run in LiteRT on the application cores, as with NXP's Ethos-U delegate.")
    return notes
