"""``workbench profile``: measure a model on this machine or on a board over ssh.

Imports nothing heavy: the profiler needs numpy and the runtime only (no torch, no tensorflow).
"""

from __future__ import annotations

import sys

import click

from workbench.cli.common import emit_json, human_bytes, json_option, overwrite_option, parse_shape, table

INTERRUPTED = 130


@click.command("profile")
@click.argument("model", type=click.Path())
@click.option("--runtime", type=click.Choice(["litert", "ort", "executorch"]), default=None,
              help="Runtime to measure in. Default: LiteRT for .tflite, ONNX Runtime for .onnx/.ort, ExecuTorch for .pte.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads. Default: every core of the device.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Timed inferences.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed inferences first.")
@click.option("--remote", metavar="USER@HOST",
              help="Profile on this board over ssh. It needs python3 with numpy and a runtime "
                   "(ai-edge-litert, tflite-runtime or onnxruntime; executorch, which brings torch, for a .pte); "
                   "workbench need not be installed there.")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="OPT",
              help="An ssh -o option, e.g. Port=2222 or IdentityFile=~/.ssh/pi (repeatable).")
@click.option("--remote-python", default="python3", show_default=True, metavar="PATH",
              help="The Python to run on the board (e.g. a venv's bin/python3).")
@click.option("--no-per-op", is_flag=True, help="Skip the per-op timing pass (ONNX Runtime, ExecuTorch).")
@click.option("--input-shape", callback=parse_shape, metavar="DIMS",
              help="The first input's shape, batch first (e.g. 1,3,640,640): fills its dynamic dims. Required when a "
                   "dim other than the batch is dynamic; a dynamic batch alone is timed at 1.")
@json_option
@click.option("-o", "--output", type=click.Path(), help="Write the report as JSON to this file.")
@overwrite_option
def profile_cmd(model, runtime, threads, runs, warmup, remote, ssh_options, remote_python, no_per_op, input_shape, as_json,
                output, overwrite):
    """Measure MODEL: load time, first inference, latency (mean, p50, p90, p99), throughput,
    peak memory and per-op times where the runtime reports them, with the device's CPU,
    clock governor, temperature and throttling state.

    The inputs are random, of the shapes the report prints (and records under "inputs").

    \b
    Examples:
      workbench profile model.tflite --threads 4 -o pi4.json
      workbench profile model.tflite --remote pi@raspberrypi.local --runs 50 -o pi4.json
      workbench profile det.onnx --input-shape 1,3,640,640

    Ctrl-C during the runs prints (and writes) what was measured so far, then exits with 130.
    """
    from workbench import profile as profiling
    from workbench.core.files import check_output, write_json_atomic

    if ssh_options and not remote:
        raise click.UsageError("--ssh-option applies to --remote only.")
    if output:
        check_output(output, overwrite)
    view = _Progress(enabled=not as_json)
    try:
        if remote:
            report = profiling.profile_remote(model, remote, runtime, threads, runs, warmup, view, ssh_options=ssh_options,
                                              python=remote_python, per_op=not no_per_op, input_shape=input_shape)
        else:
            report = profiling.profile(model, runtime, threads, runs, warmup, view, per_op=not no_per_op,
                                       input_shape=input_shape)
    finally:
        view.close()
    if output:
        write_json_atomic(output, report)
    if as_json:
        emit_json(report)
    else:
        render(report)
        if output:
            click.echo(f"\nreport written to {output}")
    if report.get("interrupted"):
        sys.exit(INTERRUPTED)


class _Progress:
    """Progress on stderr while the device works: a bar for warm-up and runs, a line per stage.
    Silent when the output is not a terminal or --json was given."""

    LABELS = {"load": "loading the model", "first": "first inference", "per_op": "per-op timing pass"}

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty() and sys.stdout.isatty()
        self.bar = None
        self.done = 0

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        if event.get("event") == "stage":
            self.close()
            stage = event.get("stage")
            if stage in ("warmup", "runs") and event.get("total"):
                self.bar = click.progressbar(length=event["total"], label=f"{stage:<7}", file=sys.stderr)
                self.bar.__enter__()
                self.done = 0
            elif stage in self.LABELS:
                click.echo(f"{self.LABELS[stage]}...", err=True)
        elif event.get("event") == "progress" and self.bar is not None:
            step = int(event.get("done", 0)) - self.done
            if step > 0:
                self.bar.update(step)
                self.done += step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _ms(v) -> str:
    if v is None:
        return "-"
    if v < 1:
        return f"{v:.4f}"
    return f"{v:.3f}" if v < 100 else f"{v:,.1f}"


def render(r: dict) -> None:
    m, t, rt, lat = r["model"], r["target"], r["runtime"], r["latency"]
    where = f"{t.get('remote')} ({t['description']})" if t.get("remote") else f"this machine ({t['description']})"
    click.echo(f"model:    {m['name']}  {human_bytes(m.get('bytes'))}  sha256 {m.get('sha256', '')[:12]}")
    click.echo(f"device:   {where}")
    sysf = t.get("system", {})
    extra = [f"{k} {v}" for k, v in (("os", sysf.get("os")), ("python", sysf.get("python")),
                                     ("governor", sysf.get("governor"))) if v]
    if extra:
        click.echo(f"          {', '.join(extra)}")
    click.echo(f"runtime:  {rt['name']} via {rt.get('module')} {rt.get('version') or ''}, {rt.get('threads')} thread(s)")
    for k, i in enumerate(r.get("inputs") or []):
        src = f" ({i['source']})" if i.get("source") else ""
        click.echo(f"{'inputs:' if k == 0 else '':<10}{i['name']} {i['shape']} {i['dtype']}, random{src}")
    if r.get("interrupted"):
        click.echo(f"INTERRUPTED: {lat['runs']} of {r['settings']['runs']} runs measured; these are partial results.")
    click.echo()
    rows = [["model load", _ms(r.get("load_ms"))], ["first inference", _ms(r.get("first_inference_ms"))]]
    for key, label in (("mean_ms", "mean"), ("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("std_ms", "std"),
                       ("min_ms", "min"), ("max_ms", "max")):
        rows.append([f"latency {label}", _ms(lat.get(key))])
    click.echo(table(rows, ["measured", "ms"]))
    ips = (r.get("throughput") or {}).get("inferences_per_s")
    if ips:
        click.echo(f"\nthroughput: {ips:,.1f} inferences/s over {lat['runs']} runs (batch {r.get('batch', 1)})")
    mem = r.get("memory") or {}
    if mem:
        click.echo(f"memory:     peak resident {human_bytes(r.get('ram_bytes'))}, of which the model added "
                   f"{human_bytes(mem.get('added_peak_bytes'))}")
    thermal = r.get("thermal") or {}
    before, after = (thermal.get("before") or {}), (thermal.get("after") or {})
    if before.get("temperature_c") or after.get("temperature_c"):
        click.echo(f"SoC temp:   {_temps(before)} -> {_temps(after)} °C")
    thr = after.get("throttled")
    if thr:
        flags = ", ".join(thr.get("flags") or []) or "none"
        click.echo(f"throttling: {thr.get('raw')} ({flags})")
    ops = [o for o in r.get("ops") or [] if o.get("latency_ms") is not None]
    per_op = r.get("per_op") or {}
    if ops:
        total = sum(o["latency_ms"] for o in ops) or 1.0
        click.echo(f"\nper-op ({per_op.get('source')}):")
        rows = [[o["index"], o["name"][:40], o["kind"], _ms(o["latency_ms"]), f"{100 * o['latency_ms'] / total:.1f}%"]
                for o in ops]
        click.echo(table(rows, ["#", "node", "op", "ms", "share"]))
    elif per_op.get("reason"):
        click.echo(f"\nper-op times: not available. {per_op['reason']}")


def _temps(state: dict) -> str:
    temps = state.get("temperature_c") or {}
    return "/".join(f"{v:.1f}" for v in temps.values()) or "-"
