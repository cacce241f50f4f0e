"""Reports from a run's results: JSON (results.json, versioned), Markdown and a self-contained HTML page."""

from workbench.report.render import write_reports

__all__ = ["write_reports"]
