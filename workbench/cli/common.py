"""Options and rendering shared by the commands."""

from __future__ import annotations

import json
import sys

import click

from workbench.core.files import to_jsonable
from workbench.core.units import human_bytes  # noqa: F401  (re-exported for the commands)


def parse_shape(ctx, param, value):
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a shape; write it batch first, e.g. 1,28,28,1.") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"'{value}' is not a shape of positive integers.")
    return dims


def model_options(f):
    f = click.option("--trust-model", is_flag=True, help="Allow code execution from the model file (full pickles, Keras Lambda layers). Only for files you trust.")(f)
    f = click.option("--factory", metavar="MODULE:FUNCTION", help="For a PyTorch state_dict: the function that builds the nn.Module.")(f)
    f = click.option("--input-shape", callback=parse_shape, metavar="DIMS", help="Input shape, batch first (e.g. 1,1,28,28); overrides what the model records.")(f)
    f = click.option("--inputs", "graph_inputs", callback=_parse_graph_inputs, expose_value=False, metavar="NAME[:SHAPE],...",
                     help="For a TF1 frozen graph: the input nodes, each with an optional shape (e.g. images:1x224x224x3).")(f)
    f = click.option("--outputs", "graph_outputs", callback=_parse_graph_outputs, expose_value=False, metavar="NAME,...",
                     help="For a TF1 frozen graph: the output nodes (default: the nodes nothing consumes).")(f)
    return f


def _parse_graph_inputs(ctx, param, value):
    if not value:
        return None
    entries = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        if not sep or dims == "0":  # no shape, or a TF tensor name ("x:0")
            entries.append((item, None))
            continue
        entries.append((name, parse_shape(ctx, param, dims)))
    ctx.meta["workbench.graph_inputs"] = tuple(entries)
    return None


def _parse_graph_outputs(ctx, param, value):
    if value:
        ctx.meta["workbench.graph_outputs"] = tuple(v.strip() for v in value.split(",") if v.strip())
    return None


def load_options(trust_model: bool, factory: str | None, input_shape):
    from workbench.frontends.loader import LoadOptions

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return LoadOptions(trust_model=trust_model, factory=factory, input_shape=input_shape,
                       graph_inputs=meta.get("workbench.graph_inputs", ()), graph_outputs=meta.get("workbench.graph_outputs", ()))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout and nothing else.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def _numeric(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def progress(it, label: str, enabled: bool, length: int | None = None):
    """A progress bar on stderr when it is a terminal and JSON output was not asked for."""
    if not enabled or not sys.stderr.isatty():
        return _NullBar(it)
    return click.progressbar(it, label=label, length=length, file=sys.stderr)


class _NullBar:
    def __init__(self, it):
        self.it = it

    def __enter__(self):
        return self.it

    def __exit__(self, *a):
        return False
