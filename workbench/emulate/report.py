"""The result of ``emulate``: a frozen TargetReport, its JSON shape and a text rendering.

``workbench profile`` (measured on a device) emits the same top-level keys with
``kind: "measurement"``; this report has ``kind: "estimate"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.emulate.cost import LatencyEstimate
from workbench.emulate.memory import Memory
from workbench.emulate.targets import Target
from workbench.core.units import human_bytes


@dataclass(frozen=True)
class TargetReport:
    target: Target
    model: str
    model_bytes: int
    model_sha256: str
    memory: Memory | None  # flash is always known; memory.ram_bytes is None when the runtime cannot allocate
    latency: LatencyEstimate
    unsupported_ops: tuple[dict, ...]
    notes: tuple[str, ...] = ()
    accuracy: dict | None = None
    runtime: dict = field(default_factory=dict)
    firmware: object | None = None  # workbench.emulate.firmware.FirmwareReport when the real firmware ran
    npu: dict | None = None  # boards with an NPU: the NPU compiler's estimate (workbench.emulate.npu)
    # A tool that failed (firmware build, link, QEMU): {"kind", "message", "hint", "exit_code"}. No verdict then:
    # fits is None, and the numbers are what is known without the tool (the estimates).
    tool_failure: dict | None = None

    @property
    def method(self) -> str:
        if self.npu is not None:
            return "npu-compiler"
        return "firmware" if self.firmware is not None else "estimate"

    @property
    def latency_ms(self) -> float:
        fw = self.firmware
        if fw is not None and fw.latency_ms is not None:
            return float(fw.latency_ms)
        return round(self.latency.total_ms, 6)

    @property
    def flash_fits(self) -> bool | None:
        if self.memory is None:
            return None
        return self.memory.flash_budget is None or self.memory.flash_bytes <= self.memory.flash_budget

    @property
    def ram_fits(self) -> bool | None:
        if self.memory is None or self.memory.ram_bytes is None:
            return None
        return self.memory.ram_bytes <= self.memory.ram_budget

    @property
    def fits(self) -> bool | None:
        """Runs, and fits both memories. A model the runtime cannot run does not fit, whatever its size.
        None when a tool failed (``tool_failure``): that is no verdict on the model."""
        if self.tool_failure is not None:
            return None
        npu_ok = self.npu is None or self.npu.get("sram_fits") is not False
        return not self.unsupported_ops and bool(self.flash_fits) and bool(self.ram_fits) and npu_ok

    def reasons(self) -> list[str]:
        """Why it does not fit, each saying by how much."""
        out = []
        for p in self.unsupported_ops:
            out.append(f"unsupported: {p['message']}")
        m = self.memory
        if m is not None:
            if self.flash_fits is False:
                out.append(f"flash: needs {m.flash_bytes:,} B, {self.target.name} has {m.flash_budget:,} B "
                           f"(short by {m.flash_bytes - m.flash_budget:,} B)")
            if self.ram_fits is False:
                out.append(f"RAM: needs {m.ram_bytes:,} B, {self.target.name} has {m.ram_budget:,} B available "
                           f"(short by {m.ram_bytes - m.ram_budget:,} B)")
        n = self.npu
        if n is not None and n.get("sram_fits") is False:
            out.append(f"NPU SRAM: Vela needs {n['sram_bytes']:,} B, the NPU may use {n['sram_budget_bytes']:,} B "
                       f"(short by {n['sram_bytes'] - n['sram_budget_bytes']:,} B)")
        return out

    def to_dict(self) -> dict:
        m = self.memory
        t = self.target
        d = {
            "kind": "estimate",
            "target": t.name,
            "target_title": t.title,
            "target_kind": t.kind,
            "model": self.model,
            "model_bytes": self.model_bytes,
            "model_sha256": self.model_sha256,
            "runtime": {"name": t.runtime.name, "kernels": t.runtime.kernels, **self.runtime},
            "flash_bytes": m.flash_bytes if m else None,
            "flash_budget_bytes": m.flash_budget if m else t.flash_bytes,
            "ram_bytes": m.ram_bytes if m else None,
            "ram_unknown_reason": m.ram_unknown if m else "not measured",
            "ram_budget_bytes": m.ram_budget if m else t.ram_bytes,
            "latency_ms": self.latency_ms,
            "latency_method": ("NPU compiler estimate (Vela) + cost model for the ops left on the CPU" if self.npu is not None
                               else _firmware_method(self.firmware) if self.firmware is not None
                               and self.firmware.latency_ms is not None else "cost model estimate"),
            "latency_estimate_ms": round(self.latency.total_ms, 6),
            "method": self.method,
            "threads": self.latency.threads,
            "macs": self.latency.macs,
            "fits": self.fits,
            "tool_failure": self.tool_failure["message"] if self.tool_failure else None,
            "margins": {
                "flash_bytes": m.flash_margin if m else None,
                "ram_bytes": m.ram_margin if m else None,
                "flash_used_fraction": round(m.flash_bytes / m.flash_budget, 4) if m and m.flash_budget else None,
                "ram_used_fraction": round(m.ram_bytes / m.ram_budget, 4) if m and m.ram_budget and m.ram_bytes is not None else None,
            },
            "reasons": self.reasons(),
            "unsupported_ops": [dict(p) for p in self.unsupported_ops],
            "ops": self._ops(),
            "memory": m.breakdown if m else None,
            "cost_model": self.latency.model,
            "notes": list(self.notes),
            "float_ops": self.float_ops(),
            "sources": [{"fact": s.fact, "url": s.url} for s in t.sources],
        }
        if t.kind == "mcu":
            d["arena_bytes"] = m.arena_bytes if m else None
            d["firmware"] = self.firmware.to_dict() if self.firmware is not None else None
            if d["firmware"] is not None:
                from workbench.emulate.firmware.cpi import fit_summary

                d["firmware"]["cpi_fit"] = fit_summary(self.firmware.core)
        else:
            d["runtime_storage_bytes"] = t.runtime.code_bytes
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
        if self.npu is not None:
            d["npu"] = self.npu
        if self.tool_failure is not None:
            d["tool_failure_detail"] = dict(self.tool_failure)
        return d

    def float_ops(self) -> list[dict]:
        """The ops that compute in float (``[{op, count, layers}]``): in a quantized model, what was left float."""
        from workbench.frontends.tflite_reader import float_ops

        return float_ops((o.kind, o.dtype, o.name) for o in self.latency.ops)

    def _ops(self) -> list[dict]:
        """The cost model's per-op rows, with the firmware's instruction counts where it ran."""
        rows = [o.to_dict() for o in self.latency.ops]
        if self.firmware is not None:
            by_index = {p["index"]: p for p in self.firmware.per_op if p.get("depth", 0) == 0}
            timed = {p["index"]: p for p in (getattr(self.firmware, "timing", None) or {}).get("per_op", [])}
            hz = self.firmware.clock_mhz * 1e6
            for r in rows:
                p = by_index.get(r["index"])
                if p is not None:
                    r["instructions"] = p["instructions"]
                    r["estimate_latency_ms"] = r.pop("latency_ms")
                    q = timed.get(r["index"])
                    if q is not None:  # the core timing model's cycles of this op
                        r["cycles_lower"], r["cycles_board"] = q["cycles_lower"], q["cycles_board"]
                        r["latency_ms"] = round(q["cycles_board"] / hz * 1e3, 6)
                        continue
                    total = max(1, self.firmware.instructions)
                    r["latency_ms"] = (round(self.latency_ms * p["instructions"] / total, 6)
                                       if self.firmware.latency_ms is not None else None)
        return rows


def _firmware_method(fw) -> str:
    if getattr(fw, "timing", None):
        return ("firmware on QEMU, executed instructions by class x the core's published instruction timings "
                "+ the board's flash wait states (core timing model)")
    return "firmware instructions x the core's fitted CPI"


RUNTIME_TITLES = {"litert": "LiteRT", "ort": "ONNX Runtime", "executorch": "ExecuTorch (with torch)"}


def _built(fw) -> str:
    """" built at -Os" when the firmware was compiled at one level of the user's choice, else ""."""
    level = getattr(fw, "opt_level", None)
    return f" built at {level}" if level else ""


def render_text(report: TargetReport, max_ops: int = 40) -> str:
    """A human summary: verdict, memory, latency, op table, notes."""
    t = report.target
    d = report.to_dict()
    lines = [f"{report.model} on {t.name} ({t.title}): {t.runtime.name}+{t.runtime.kernels}, {t.core} @ {t.clock_mhz:g} MHz"]
    m = report.memory
    if m is None:
        lines.append("  flash and RAM not measured: the runtime cannot load the model (unsupported ops below)")
    elif report.npu is not None:
        fb = "external storage" if m.flash_budget is None else f"{human_bytes(m.flash_budget)}, margin {human_bytes(m.flash_margin)}"
        rt = f" + runtime {human_bytes(t.runtime.code_bytes)}" if t.kind == "mcu" else ""
        lines.append(f"  flash   {human_bytes(m.flash_bytes):>12}  (Vela-compiled model {human_bytes(m.breakdown['compiled_model_bytes'])}"
                     f"{rt}; {fb})")
        lines.append(f"  RAM     {human_bytes(m.ram_bytes):>12}  (Vela: SRAM {m.breakdown['npu_sram_bytes']:,} B + DRAM "
                     f"{m.breakdown['npu_dram_bytes']:,} B, + runtime {human_bytes(m.breakdown.get('runtime_ram_bytes') or 0)}; "
                     f"{human_bytes(m.ram_budget)}, margin {human_bytes(m.ram_margin)})")
    else:
        fb = "external storage" if m.flash_budget is None else f"{human_bytes(m.flash_budget)}, margin {human_bytes(m.flash_margin)}"
        fw = report.firmware
        if fw is not None:
            lines.append(f"  flash   {human_bytes(m.flash_bytes):>12}  (linked firmware: text {fw.text_bytes:,} B + data "
                         f"{fw.data_bytes:,} B, model {human_bytes(report.model_bytes)} included; {fb})")
        elif t.kind == "mcu":
            lines.append(f"  flash   {human_bytes(m.flash_bytes):>12}  (model {human_bytes(report.model_bytes)} + runtime {human_bytes(t.runtime.code_bytes)}; {fb})")
        else:
            lines.append(f"  storage {human_bytes(m.flash_bytes):>12}  (the model; {fb}; the runtime's own install, "
                         f"{human_bytes(t.runtime.code_bytes)}, is not counted)")
        if m.ram_bytes is None:
            lines.append(f"  RAM     {'unknown':>12}  ({m.ram_unknown})")
        elif fw is not None:
            lines.append(f"  RAM     {human_bytes(m.ram_bytes):>12}  (data + bss {fw.ram_static_bytes:,} B + arena {fw.arena_bytes:,} B "
                         f"[{fw.arena_used_bytes:,} B used] + stack {fw.stack_bytes:,} B; {human_bytes(m.ram_budget)}, "
                         f"margin {human_bytes(m.ram_margin)})")
        elif m.arena_bytes is not None:
            lines.append(f"  RAM     {human_bytes(m.ram_bytes):>12}  (arena {m.arena_bytes:,} B exact + runtime {human_bytes(t.runtime.ram_overhead_bytes)}; "
                         f"{human_bytes(m.ram_budget)}, margin {human_bytes(m.ram_margin)})")
        else:
            lines.append(f"  RAM     {human_bytes(m.ram_bytes):>12}  (peak resident memory with {RUNTIME_TITLES.get(t.runtime.name, t.runtime.name)}, measured; "
                         f"{human_bytes(m.ram_budget)} available, margin {human_bytes(m.ram_margin)})")
    fw = report.firmware
    if report.npu is not None:
        lines.extend(_npu_lines(report.npu, d["latency_ms"]))
    elif fw is not None and fw.latency_ms is not None and getattr(fw, "timing", None):
        tmg = fw.timing
        xc = ("" if fw.cpi_latency_ms is None else
              f"; fitted-CPI cross-check {fw.cpi_latency_ms:.3f} ms (CPI fitted to TFLM 2.3.1 rows of 2020)")
        h = tmg.get("heldout")
        xc += (f"; its error on {len(h['rows'])} published row(s) of this core kept out of every fit: median "
               f"{h['median_abs_error']:.0%}, worst {h['worst_abs_error']:.0%}" if h else
               "; no published row checks this core's timing table")
        lines.append(f"  latency {d['latency_ms']:>12.3f} ms  (firmware{_built(fw)} on QEMU {fw.machine}: {fw.instructions:,} instructions, "
                     f"{tmg['cycles_board']:,} cycles on the board by the {tmg['core_model']} timing model, at least "
                     f"{tmg['cycles_lower']:,} = {tmg['latency_lower_ms']:.3f} ms at zero wait states, "
                     f"{t.clock_mhz:g} MHz{xc}; cost-model estimate {report.latency.total_ms:.3f} ms)")
    elif fw is not None and fw.latency_ms is not None:
        cpi = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in (fw.cpi or {}).items())
        fit = (d.get("firmware") or {}).get("cpi_fit") or {}
        loo = f"; held-out error up to {fit['held_out_max_abs_error']:.0%}" if fit.get("held_out_max_abs_error") is not None else ""
        lines.append(f"  latency {d['latency_ms']:>12.3f} ms  (firmware{_built(fw)} on QEMU {fw.machine}: {fw.instructions:,} instructions "
                     f"x CPI [{cpi}] / {t.clock_mhz:g} MHz{loo}; cost-model estimate {report.latency.total_ms:.3f} ms)")
    elif fw is not None:
        lines.append(f"  latency {d['latency_ms']:>12.3f} ms  (estimate; the firmware ran {fw.instructions:,} instructions, "
                     f"but no CPI is fitted for {fw.core}: {fw.cpi_source})")
    else:
        lines.append(f"  latency {d['latency_ms']:>12.3f} ms  (estimate, {report.latency.threads} thread(s), {report.latency.macs:,} MACs)")
    if report.accuracy is not None:
        a = report.accuracy
        parts = []
        if a.get("accuracy") is not None:
            parts.append(f"accuracy {a['accuracy'] * 100:.2f}%")
        if a.get("reference_accuracy") is not None:
            parts.append(f"reference {a['reference_accuracy'] * 100:.2f}% (drop {a['accuracy_drop_pp']:.2f} points)")
        if a.get("metric") not in (None, "top1"):
            from workbench.evaluate.metrics import describe

            parts.append(describe(a) or "")
        if a.get("argmax_agreement") is not None and "reference" in a:
            parts.append(f"agreement {a['argmax_agreement'] * 100:.2f}%")
        if a.get("sqnr_db") is not None and "reference" in a:
            parts.append(f"SQNR {a['sqnr_db']:.1f} dB")
        lines.append(f"  eval    {a.get('samples', '?')} samples in {t.runtime.name}: " + ", ".join(parts))
    rows = {r["index"]: r for r in d["ops"]}
    instr = {i: r["instructions"] for i, r in rows.items() if "instructions" in r}
    key = (lambda o: -instr.get(o.index, 0)) if instr else (lambda o: -o.latency_ms)
    ops = sorted(report.latency.ops, key=key)[:max_ops]
    if ops:
        lines.append("")
        w = max(len("layer"), *(min(40, len(o.name.split(';')[0])) for o in ops))
        extra = f" {'instructions':>13}" if instr else ""
        lines.append(f"  {'#':>4}  {'op':<20} {'layer':<{w}} {'dtype':<8} {'MACs':>12}{extra} {'ms':>10}")
        for o in ops:
            ms = rows[o.index].get("latency_ms")
            cell = f" {instr.get(o.index, 0):>13,}" if instr else ""
            shown = f"{ms:>10.4f}" if isinstance(ms, (int, float)) else f"{'-':>10}"
            lines.append(f"  {o.index:>4}  {o.kind[:20]:<20} {o.name.split(';')[0][:40]:<{w}} {o.dtype:<8} {o.macs:>12,}{cell} {shown}")
        if len(report.latency.ops) > max_ops:
            lines.append(f"  ... {len(report.latency.ops) - max_ops} more ops (all in --json)")
    floats = d["float_ops"]
    if floats and any(o.dtype in ("int8", "uint8", "int16") for o in report.latency.ops if o.kind not in ("QUANTIZE", "DEQUANTIZE")):
        from workbench.frontends.tflite_reader import describe_float_ops

        lines.append(f"  float   {sum(f['count'] for f in floats)} op(s) of this quantized model compute in float: "
                     f"{describe_float_ops(floats)}")
    for n in report.notes:
        lines.append(f"  note: {n}")
    lines.append("")
    if report.tool_failure is not None:
        tf = report.tool_failure
        lines.append(f"NO VERDICT on {t.name}: a tool failed, not the model ({tf['kind'].replace('_', ' ')}):")
        lines.extend(f"  {ln}" for ln in tf["message"].splitlines()[:12])
        if tf.get("hint"):
            lines.append(f"  {tf['hint']}")
    elif report.fits:
        lines.append(f"FITS on {t.name}.")
    else:
        lines.append(f"DOES NOT FIT on {t.name}:")
        lines.extend(f"  - {r}" for r in report.reasons())
    return "\n".join(lines)


def _npu_lines(n: dict, total_ms: float, slowest: int = 8) -> list[str]:
    """The NPU part of the text report: Vela's cycles, memories, and its slowest layers."""
    out = [f"  latency {total_ms:>12.3f} ms  (NPU {n['npu_ms']:.4f} ms: {n['total_cycles']:,} cycles [{n['npu_cycles']:,} "
           f"compute] at {n['clock_mhz']:g} MHz on {n['accelerator']}; CPU ops {n['cpu_ms']:.4f} ms, cost model)",
           f"  NPU     SRAM {n['sram_bytes']:,} B of {n['sram_budget_bytes']:,} B, flash {n['flash_bytes']:,} B; weights "
           f"{n['original_weight_bytes']:,} B -> {n['encoded_weight_bytes']:,} B encoded; {n['npu_ops']} NPU op(s), "
           f"{n['cpu_ops']} on the CPU ({n['compiler']} {n['compiler_version']}, {n['system_config']}, {n['memory_mode']})"]
    h = n.get("host_firmware")
    if h:
        cpu = ("no op left on the CPU" if not h["cpu_ops"] else f"{h['cpu_ops']} CPU op(s) " + (
            "not matched" if h["instructions_cpu_ops"] is None else f"{h['instructions_cpu_ops']:,} instructions"))
        lat = ("" if h["latency_ms_whole_model"] is None else f", {h['latency_ms_whole_model']:.3f} ms by {h['latency_basis']}")
        out.append(f"  host    {h['core']} firmware on QEMU {h['machine']}: {cpu}; the whole model without the NPU "
                   f"{h['instructions_whole_model']:,} instructions{lat}"
                   + ("" if lat else " (no fitted CPI: latency from instructions unknown)"))
    layers = sorted((r for r in n.get("per_layer", []) if isinstance(r.get("cycles"), (int, float))),
                    key=lambda r: -r["cycles"])[:slowest]
    if layers:
        out.append(f"  slowest NPU layers (Vela):  {'op':<16} {'cycles':>10} {'MACs':>12}  layer")
        for r in layers:
            out.append(f"    {'':<24}{str(r.get('op', ''))[:16]:<16} {int(r['cycles']):>10,} {int(r.get('macs') or 0):>12,}  "
                       f"{str(r.get('name', '')).split(';')[0][:48]}")
    return out
