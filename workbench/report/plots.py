"""Plots for the report (matplotlib, Agg backend): PNG bytes, embedded in the HTML page."""

from __future__ import annotations

import io

from workbench.core.errors import require


def _plt():
    mpl = require("matplotlib", "report", "Plots in the HTML report")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _label(r: dict) -> str:
    return f"{r['model']}/{r['variant']}"


def pareto(rows: list[dict], x_key: str, x_label: str, title: str, log_x: bool = False) -> bytes | None:
    """Accuracy against ``x_key`` for each target, the Pareto front (better: left and up) drawn as a line."""
    pts = [r for r in rows if r.get("accuracy") is not None and r.get(x_key) is not None]
    if not pts:
        return None
    plt = _plt()
    groups: dict[str, list] = {}
    for r in pts:
        groups.setdefault(r.get("target") or r["format"], []).append(r)
    n = len(groups)
    cols = min(n, 2)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(6.2 * cols, 4.2 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, (grp, rs) in zip(axes.flat, sorted(groups.items())):
        for r in rs:
            ax.scatter(r[x_key], r["accuracy"] * 100, s=46, alpha=0.85, label=_label(r))
            ax.annotate(_label(r), (r[x_key], r["accuracy"] * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
        front, best = [], -1.0
        for r in sorted(rs, key=lambda r: (r[x_key], -r["accuracy"])):
            if r["accuracy"] > best:
                front.append(r)
                best = r["accuracy"]
        ax.plot([r[x_key] for r in front], [r["accuracy"] * 100 for r in front], "k--", lw=1, alpha=0.6)
        ax.set_title(f"{grp}", fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel("accuracy (%)")
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _png(fig)


def memory_bars(rows: list[dict]) -> bytes | None:
    """Flash and RAM of each variant against each MCU target's limits."""
    mcu = [r for r in rows if r.get("target_kind") == "mcu" and r.get("flash_limit_bytes") and r.get("ram_limit_bytes")]
    if not mcu:
        return None
    plt = _plt()
    targets = sorted({r["target"] for r in mcu})
    fig, axes = plt.subplots(len(targets), 2, figsize=(12, 2.2 + 0.45 * len(mcu) / max(1, len(targets)) * len(targets)), squeeze=False)
    for row_axes, t in zip(axes, targets):
        rs = [r for r in mcu if r["target"] == t]
        names = [_label(r) for r in rs]
        for ax, key, limit_key, what in ((row_axes[0], "flash_bytes", "flash_limit_bytes", "flash"),
                                         (row_axes[1], "ram_bytes", "ram_limit_bytes", "RAM")):
            vals = [r[key] / 1024 if r.get(key) is not None else 0.0 for r in rs]  # unknown (the runtime failed): no bar
            limit = rs[0][limit_key] / 1024
            colors = ["#c0392b" if v > limit or r.get(key) is None else "#2e86c1" for v, r in zip(vals, rs)]
            ax.barh([n + ("" if r.get(key) is not None else " (unknown)") for n, r in zip(names, rs)], vals, color=colors)
            ax.axvline(limit, color="k", ls="--", lw=1)
            ax.set_title(f"{t}: {what} (limit {limit:,.0f} KiB)", fontsize=9)
            ax.set_xlabel("KiB")
            ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def layer_errors(jobs: dict) -> bytes | None:
    """Per-layer SQNR of each int8 model against its float twin, in graph order (the PTQ diagnosis)."""
    series = {k: j["info"]["layer_errors"] for k, j in jobs.items() if j.get("info", {}).get("layer_errors")}
    if not series:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), squeeze=False)
    for ax, (name, rows) in zip(axes.flat, sorted(series.items())):
        labels = [f"{r['op']}: {r['layer'][-40:]}" for r in rows]
        vals = [min(r["sqnr_db"], 80) for r in rows]
        ax.barh(labels, vals, color=["#c0392b" if v < 20 else "#2e86c1" for v in vals])
        ax.invert_yaxis()
        ax.set_title(f"{name}: SQNR per layer (dB, higher is better)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def firmware_ops(rows: list[dict]) -> bytes | None:
    """Instructions per op of one model on the firmware (the first row that ran it): where the time goes."""
    row = next((r for r in rows if r.get("per_op_instructions")), None)
    if row is None:
        return None
    ops = row["per_op_instructions"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(ops) + 1.2))
    labels = [f"{o['index']}: {o['op']}" for o in ops]
    ax.barh(labels, [o["instructions"] for o in ops], color="#2e86c1")
    ax.invert_yaxis()
    ax.set_xlabel("instructions per inference (QEMU, -icount shift=0)")
    ax.set_title(f"{_label(row)} on {row.get('target')}: instructions per op in the TFLite Micro firmware", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def optimize_front(doc: dict) -> bytes | None:
    """Every measured candidate of ``optimize``: accuracy loss against latency, the Pareto front
    joined, the budgets drawn, the chosen one ringed."""
    cands = [c for c in doc["candidates"] if c.get("latency_ms") is not None and c.get("drop_pp") is not None]
    if not cands:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = {c["variant"] for c in doc["pareto"]}
    for c in cands:
        ok = not c["broken_budgets"]
        ax.scatter(c["latency_ms"], c["drop_pp"], color="#2e86c1" if ok else "#c0392b", s=30, zorder=3)
        ax.annotate(c["variant"], (c["latency_ms"], c["drop_pp"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pf = sorted((c for c in cands if c["variant"] in front), key=lambda c: c["latency_ms"])
    if len(pf) > 1:
        ax.plot([c["latency_ms"] for c in pf], [c["drop_pp"] for c in pf], color="#7f8c8d", lw=1, zorder=2)
    b = doc["budgets"]
    if b.get("max_latency_ms") is not None:
        ax.axvline(b["max_latency_ms"], color="#e67e22", ls="--", lw=1, label=f"latency budget {b['max_latency_ms']:g} ms")
    if b.get("max_drop_pp") is not None:
        ax.axhline(b["max_drop_pp"], color="#8e44ad", ls="--", lw=1, label=f"loss budget {b['max_drop_pp']:g} pp")
    if doc.get("chosen"):
        c = doc["chosen"]
        ax.scatter(c["latency_ms"], c["drop_pp"], s=160, facecolors="none", edgecolors="#27ae60", lw=2, zorder=4, label="chosen")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency on {doc['target']} (ms)")
    ax.set_ylabel("accuracy loss (points)")
    ax.set_title("optimize: candidates (red: breaks a budget), Pareto front joined", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
