"""The CLI reference (``docs/cli.md``), generated from every command's ``--help``.

``python scripts/gen_cli_docs.py`` writes it; ``tests/test_cli_docs.py`` fails when it is stale.
The width is fixed, so the text does not depend on the terminal it is made in.
"""

from __future__ import annotations

import click

WIDTH = 100


def _walk(cmd: click.Command, path: list[str], parent: click.Context | None):
    ctx = cmd.make_context(path[-1], [], parent=parent, resilient_parsing=True, terminal_width=WIDTH,
                           max_content_width=WIDTH)
    yield path, cmd, cmd.get_help(ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def render(root: click.Command) -> str:
    out = ["# workbench command reference", "",
           "Generated from each command's `--help` by `python scripts/gen_cli_docs.py`; do not edit by hand.", ""]
    pages = list(_walk(root, ["workbench"], None))
    out += ["| command | summary |", "|---|---|"]
    for path, cmd, _ in pages[1:]:
        out.append(f"| [`{' '.join(path)}`](#{'-'.join(path)}) | {cmd.get_short_help_str(80)} |")
    out.append("")
    for path, _, text in pages:
        out += [f'<a id="{"-".join(path)}"></a>', f"## `{' '.join(path)}`", "", "```", text.rstrip(), "```", ""]
    return "\n".join(out)
