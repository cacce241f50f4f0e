"""``workbench compare-report A.json B.json``: an estimate and a measurement side by side."""

from __future__ import annotations

import click

from workbench.cli.common import emit_json, human_bytes, json_option, table


@click.command("compare-report")
@click.argument("report_a", type=click.Path())
@click.argument("report_b", type=click.Path())
@json_option
def compare_report_cmd(report_a, report_b, as_json):
    """Put two reports side by side: totals (latency, RAM, flash, load time) and per-op times
    where both have them, with the ratio B/A.

    Typically A is an estimate (workbench emulate -o) and B a measurement (workbench profile -o):
    a ratio above 1 means the device is slower than estimated. Ops are paired by name, else
    by their order within each op kind.
    """
    from workbench.profile import compare_reports, load_report

    result = compare_reports(load_report(report_a), load_report(report_b))
    if as_json:
        emit_json(result)
        return
    a, b = result["a"], result["b"]
    click.echo(f"A: {report_a}  ({a['kind']}, {a['model']} on {a['target']})")
    click.echo(f"B: {report_b}  ({b['kind']}, {b['model']} on {b['target']})")
    click.echo()
    rows = [[t["metric"], _fmt(t["metric"], t["a"]), _fmt(t["metric"], t["b"]), _ratio(t["ratio"])] for t in result["totals"]]
    click.echo(table(rows, ["metric", "A", "B", "B/A"]))
    if result["ops"]:
        click.echo()
        rows = [[_idx(o["a_index"]), _idx(o["b_index"]), (o["name"] or "")[:40], o["kind"], f"{o['a_ms']:.4f}",
                 f"{o['b_ms']:.4f}", _ratio(o["ratio"])] for o in result["ops"]]
        click.echo(table(rows, ["A#", "B#", "op", "kind", "A ms", "B ms", "B/A"]))
    for note in result["notes"]:
        click.echo(f"\nnote: {note}")


def _fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    if metric.endswith("_bytes"):
        return human_bytes(v)
    return f"{v:.4f}" if isinstance(v, float) and v < 10 else f"{v:,.2f}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _idx(i) -> str:
    return "-" if i is None else str(i)
