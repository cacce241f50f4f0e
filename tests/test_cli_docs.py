"""docs/cli.md is generated from the commands' --help and must match them."""

from pathlib import Path

from workbench.cli import main
from workbench.cli.reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current():
    assert DOC.exists(), "docs/cli.md is missing: run python scripts/gen_cli_docs.py"
    assert DOC.read_text(encoding="utf-8") == render(main), "docs/cli.md is stale: run python scripts/gen_cli_docs.py"


def test_cli_reference_covers_every_command():
    text = DOC.read_text(encoding="utf-8")
    for name, cmd in main.commands.items():
        assert f"## `workbench {name}`" in text
        for sub in getattr(cmd, "commands", {}):
            assert f"## `workbench {name} {sub}`" in text
