"""The package's import rule (ARCHITECTURE.md): imports only go down the data flow.

Every ``import workbench.X`` / ``from workbench.X import ...`` in every module, at module
level or inside a function, is checked against the layer order below. A stage may import
the shared kernel and the stages before it; nothing below the API imports ``workbench.api``
or ``workbench.cli``. A module over the size limit must say in its docstring why it is one file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "workbench"

# Lowest first. A module may import its own layer and any layer before it.
LAYERS = ["core", "frontends", "data", "runtimes", "export", "evaluate", "optimize", "emulate", "profile", "report",
          "pipeline", "api", "cli"]
ANYWHERE = {"", "builtin"}  # the package root (``__version__``) and the shipped data packages
MAX_LINES = 500
WHY_ONE_FILE = "one file"  # a longer module's docstring says why it must be one file, in these words


def layer_of(module: str) -> str:
    """'workbench.export.tflm_sources' -> 'export'; 'workbench' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    found = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "workbench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "workbench":
                continue
            if target == "workbench":  # from workbench import api / profile / __version__
                found += [(node.lineno, f"workbench.{a.name}") for a in node.names if a.name != "__version__"]
            else:
                found.append((node.lineno, target))
    return found


def violations(root: Path = PKG, package: str = "workbench") -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        is_package = rel.name == "__init__"
        parts = list(rel.parts[:-1] if is_package else rel.parts)
        module = ".".join([package, *parts])
        src = layer_of(module)
        if src not in LAYERS:
            continue
        for line, target in imports_of(ast.parse(path.read_text(encoding="utf-8")), module, is_package):
            dst = layer_of(target)
            if dst in ANYWHERE or dst == src:
                continue
            if dst not in LAYERS:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {target}: not a known layer")
            elif LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{path.relative_to(root.parent)}:{line} ({src}) imports {target} ({dst}), a later layer")
    return bad


def test_every_top_level_name_is_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py")}
    assert names - {"__init__", "__main__"} - ANYWHERE == set(LAYERS), sorted(names)


def test_imports_only_go_down_the_flow():
    assert violations() == []


def test_the_check_catches_an_import_of_the_api_from_below(tmp_path):
    """The rule would have caught the cycle optimize -> api -> optimize (and a stage reaching up)."""
    pkg = tmp_path / "workbench"
    for sub in ("optimize", "export"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text("from workbench.optimize import measure\n")
    (pkg / "optimize" / "measure.py").write_text("def f():\n    from workbench import api\n    return api\n")
    (pkg / "export" / "tflm.py").write_text("from ..optimize import measure\nfrom . import other\n")
    bad = violations(pkg)
    assert any("optimize/measure.py:2" in b and "workbench.api" in b for b in bad), bad
    assert any("export/tflm.py:1" in b and "workbench.optimize" in b for b in bad), bad
    assert len(bad) == 2, bad


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_are_small_or_say_why_not(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert WHY_ONE_FILE in doc.lower(), (f"{path.relative_to(PKG.parent)} has {lines} lines (limit {MAX_LINES}); split it, "
                                         f"or say in its docstring why it must be {WHY_ONE_FILE}")
