"""Write docs/cli.md from every command's --help (tests/test_cli_docs.py checks it is current)."""

import sys
from pathlib import Path

from workbench.cli import main
from workbench.cli.reference import render

out = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
out.write_text(render(main), encoding="utf-8")
sys.stderr.write(f"wrote {out}\n")
