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
    memory: Memory | None  # None when unsupported ops stop the arena measurement
    latency: LatencyEstimate
    unsupported_ops: tuple[dict, ...]
    notes: tuple[str, ...] = ()
    accuracy: dict | None = None
    runtime: dict = field(default_factory=dict)

    @property
    def flash_fits(self) -> bool | None:
        if self.memory is None:
            return None
        return self.memory.flash_budget is None or self.memory.flash_bytes <= self.memory.flash_budget

    @property
    def ram_fits(self) -> bool | None:
        if self.memory is None:
            return None
        return self.memory.ram_bytes <= self.memory.ram_budget

    @property
    def fits(self) -> bool:
        return not self.unsupported_ops and bool(self.flash_fits) and bool(self.ram_fits)

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
            "ram_budget_bytes": m.ram_budget if m else t.ram_bytes,
            "latency_ms": round(self.latency.total_ms, 6),
            "threads": self.latency.threads,
            "macs": self.latency.macs,
            "fits": self.fits,
            "margins": {
                "flash_bytes": m.flash_margin if m else None,
                "ram_bytes": m.ram_margin if m else None,
                "flash_used_fraction": round(m.flash_bytes / m.flash_budget, 4) if m and m.flash_budget else None,
                "ram_used_fraction": round(m.ram_bytes / m.ram_budget, 4) if m and m.ram_budget else None,
            },
            "reasons": self.reasons(),
            "unsupported_ops": [dict(p) for p in self.unsupported_ops],
            "ops": [o.to_dict() for o in self.latency.ops],
            "memory": m.breakdown if m else None,
            "cost_model": self.latency.model,
            "notes": list(self.notes),
            "sources": [{"fact": s.fact, "url": s.url} for s in t.sources],
        }
        if t.kind == "mcu":
            d["arena_bytes"] = m.arena_bytes if m else None
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
        return d


def render_text(report: TargetReport, max_ops: int = 40) -> str:
    """A human summary: verdict, memory, latency, op table, notes."""
    t = report.target
    d = report.to_dict()
    lines = [f"{report.model} on {t.name} ({t.title}): {t.runtime.name}+{t.runtime.kernels}, {t.core} @ {t.clock_mhz:g} MHz"]
    m = report.memory
    if m is None:
        lines.append("  flash and RAM not measured: the runtime cannot load the model (unsupported ops below)")
    else:
        fb = "external storage" if m.flash_budget is None else f"{human_bytes(m.flash_budget)}, margin {human_bytes(m.flash_margin)}"
        lines.append(f"  flash   {human_bytes(m.flash_bytes):>12}  (model {human_bytes(report.model_bytes)} + runtime {human_bytes(t.runtime.code_bytes)}; {fb})")
        if m.arena_bytes is not None:
            lines.append(f"  RAM     {human_bytes(m.ram_bytes):>12}  (arena {m.arena_bytes:,} B exact + runtime {human_bytes(t.runtime.ram_overhead_bytes)}; "
                         f"{human_bytes(m.ram_budget)}, margin {human_bytes(m.ram_margin)})")
        else:
            lines.append(f"  RAM     {human_bytes(m.ram_bytes):>12}  (peak resident memory with LiteRT, measured; "
                         f"{human_bytes(m.ram_budget)} available, margin {human_bytes(m.ram_margin)})")
    lines.append(f"  latency {d['latency_ms']:>12.3f} ms  (estimate, {report.latency.threads} thread(s), {report.latency.macs:,} MACs)")
    if report.accuracy is not None:
        a = report.accuracy
        parts = []
        if a.get("accuracy") is not None:
            parts.append(f"accuracy {a['accuracy'] * 100:.2f}%")
        if a.get("reference_accuracy") is not None:
            parts.append(f"reference {a['reference_accuracy'] * 100:.2f}% (drop {a['accuracy_drop']:.2f} points)")
        if a.get("argmax_agreement") is not None and "reference" in a:
            parts.append(f"agreement {a['argmax_agreement'] * 100:.2f}%")
        if a.get("sqnr_db") is not None and "reference" in a:
            parts.append(f"SQNR {a['sqnr_db']:.1f} dB")
        lines.append(f"  eval    {a.get('samples', '?')} samples in {t.runtime.name}: " + ", ".join(parts))
    ops = sorted(report.latency.ops, key=lambda o: -o.latency_ms)[:max_ops]
    if ops:
        lines.append("")
        w = max(len("layer"), *(min(40, len(o.name.split(';')[0])) for o in ops))
        lines.append(f"  {'#':>4}  {'op':<20} {'layer':<{w}} {'dtype':<8} {'MACs':>12} {'ms':>10}")
        for o in ops:
            lines.append(f"  {o.index:>4}  {o.kind[:20]:<20} {o.name.split(';')[0][:40]:<{w}} {o.dtype:<8} {o.macs:>12,} {o.latency_ms:>10.4f}")
        if len(report.latency.ops) > max_ops:
            lines.append(f"  ... {len(report.latency.ops) - max_ops} more ops (all in --json)")
    for n in report.notes:
        lines.append(f"  note: {n}")
    lines.append("")
    if report.fits:
        lines.append(f"FITS on {t.name}.")
    else:
        lines.append(f"DOES NOT FIT on {t.name}:")
        lines.extend(f"  - {r}" for r in report.reasons())
    return "\n".join(lines)
