"""Markdown and HTML renderings of a run's results (results.json is the source of truth)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from workbench.core.files import write_text_atomic

COLUMNS = [("model", "model"), ("variant", "variant"), ("format", "format"), ("target", "target"), ("bytes", "size"),
           ("accuracy", "accuracy"), ("accuracy_drop_pp", "drop (pts)"), ("flash_bytes", "flash"), ("ram_bytes", "RAM"),
           ("arena_bytes", "arena"), ("latency_ms", "latency ms"), ("method", "measured by"), ("fits", "fits")]


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "accuracy":
        return f"{v:.2%}"
    if key == "accuracy_drop_pp":
        return f"{v:+.2f}"
    if key in ("bytes", "flash_bytes", "ram_bytes", "arena_bytes"):
        return f"{v / 1024:,.1f} KiB"
    if key == "latency_ms":
        return f"{v:.3g}"
    if key == "fits":
        return "yes" if v else "NO"
    return str(v)


def markdown(doc: dict, broken: list[dict]) -> str:
    lines = [f"# workbench run: {doc['recipe']}", "",
             f"{len(doc['rows'])} results; accuracy is measured in each artifact's runtime (LiteRT, ONNX Runtime) against "
             "the float original in its framework; latency, flash and RAM come from `workbench emulate` for each target (measured by: `firmware` = the "
             "TFLite Micro firmware built for the MCU and run on QEMU; `estimate` = the documented cost model).", ""]
    lines.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for r in doc["rows"]:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    errs = [(k, e) for k, j in doc.get("jobs", {}).items() for e in j.get("errors", [])]
    if errs:
        lines += ["", "## Not built", ""] + [f"- {k}: {e}" for k, e in errs]
    if broken:
        lines += ["", "## Budgets broken", ""] + [f"- {b['model']}/{b['variant']} on {b['target'] or '-'}: {b['budget']} (value {b['value']})" for b in broken]
    return "\n".join(lines) + "\n"


def html_page(doc: dict, broken: list[dict], plots: dict[str, bytes]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h in COLUMNS)
    body = []
    for r in doc["rows"]:
        bad = r.get("fits") is False
        cells = "".join(f"<td>{e(_fmt(k, r.get(k)))}</td>" for k, _ in COLUMNS)
        body.append(f"<tr class='{'bad' if bad else ''}'>{cells}</tr>")
    imgs = "".join(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                   f"<figcaption>{e(name)}</figcaption></figure>" for name, png in plots.items() if png)
    errs = "".join(f"<li>{e(k)}: {e(x)}</li>" for k, j in doc.get("jobs", {}).items() for x in j.get("errors", []))
    budget = "".join(f"<li>{e(str(b['model']))}/{e(str(b['variant']))} on {e(str(b['target'] or '-'))}: {e(b['budget'])} "
                     f"(value {e(str(b['value']))})</li>" for b in broken)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>workbench: {e(doc['recipe'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px}}th,td{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f0f3f6}}td:nth-child(-n+4){{text-align:left}}tr.bad td{{background:#fde2e0}}
figure{{display:inline-block;margin:1em 1em 0 0}}img{{max-width:100%}}figcaption{{font-size:12px;color:#555}}
</style></head><body>
<h1>workbench run: {e(doc['recipe'])}</h1>
<p id="summary">{len(doc['rows'])} results. Accuracy is measured in each artifact's runtime against the float original;
latency, flash and RAM are estimated by <code>workbench emulate</code> per target (RAM of MCU targets is the exact
TFLite Micro arena plus runtime overhead). Rows in red do not fit their target.</p>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
{'<h2>Budgets broken</h2><ul id="budgets">' + budget + '</ul>' if budget else ''}
{'<h2>Not built</h2><ul>' + errs + '</ul>' if errs else ''}
<h2>Plots</h2>{imgs or '<p>No plottable results.</p>'}
</body></html>
"""


def write_reports(doc: dict, out: Path, broken: list[dict]) -> dict[str, Path]:
    from workbench.report import plots as P

    rows = doc["rows"]
    figs = {}
    try:
        figs = {
            "accuracy vs latency per target": P.pareto([r for r in rows if r.get("target")], "latency_ms", "latency (ms)",
                                                       "Accuracy against estimated latency", log_x=True),
            "accuracy vs size": P.pareto([{**r, "target": r["format"]} for r in rows], "bytes", "artifact size (bytes)",
                                         "Accuracy against size", log_x=True),
            "memory against target limits": P.memory_bars(rows),
            "per-layer quantization error (int8 vs float)": P.layer_errors(doc.get("jobs", {})),
            "instructions per op on the MCU firmware": P.firmware_ops(rows),
        }
    except Exception as exc:  # plots are a convenience: a missing matplotlib must not lose the tables
        from workbench.core.errors import MissingDependencyError

        if not isinstance(exc, MissingDependencyError):
            raise
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    write_text_atomic(paths["markdown"], markdown(doc, broken))
    write_text_atomic(paths["html"], html_page(doc, broken, figs))
    return paths


def write_optimize_report(doc: dict, out: Path) -> Path:
    """``optimize.html``: the candidates table and the accuracy-loss/latency plot with the budgets."""
    from workbench.report import plots as P

    e = html.escape
    cols = [("variant", "variant"), ("stage", "stage"), ("drop_pp", "loss (pp)"), ("latency_ms", "latency ms"),
            ("ram_bytes", "RAM"), ("flash_bytes", "flash"), ("method", "measured by"), ("broken_budgets", "breaks")]

    def cell(k, v):
        if k in ("ram_bytes", "flash_bytes"):
            return _fmt(k, v)
        if k == "broken_budgets":
            return ", ".join(v) if v else ("-" if v is not None else "not built")
        if isinstance(v, float):
            return f"{v:.3g}"
        return "-" if v is None else str(v)

    try:
        png = P.optimize_front(doc)
    except Exception as exc:  # a missing matplotlib must not lose the table
        from workbench.core.errors import MissingDependencyError

        if not isinstance(exc, MissingDependencyError):
            raise
        png = None
    chosen = doc.get("chosen")
    rows = "".join("<tr class='{}'>{}</tr>".format("bad" if c.get("broken_budgets") else "",
                                                    "".join(f"<td>{e(cell(k, c.get(k)))}</td>" for k, _ in cols))
                   for c in doc["candidates"])
    img = f"<img alt='candidates' src='data:image/png;base64,{base64.b64encode(png).decode()}'>" if png else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>workbench optimize</title>"
            f"<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}"
            f"tr.bad td{{color:#c0392b}}</style></head><body><h1>optimize {e(doc['model'])} for {e(doc['target'])}</h1>"
            f"<p>budgets: {e(str(doc['budgets']))}; chosen: <b>{e(chosen['variant']) if chosen else 'nothing fits'}</b></p>"
            f"{img}<table><tr>{''.join(f'<th>{e(h)}</th>' for _, h in cols)}</tr>{rows}</table>"
            f"<h2>skipped</h2><ul>{''.join(f'<li>{e(x)}</li>' for x in doc['skipped'])}</ul></body></html>")
    path = out / "optimize.html"
    write_text_atomic(path, page)
    return path
