"""The architecture rule: layers import downward only (app → models → gpu → flowgraph), and the
graph core loads without torch or plotly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("flowgraph", "gpu", "models", "app")  # each may import only those before it
LAYERS = ORDER[1:]  # installed as flowgraph.gpu, flowgraph.models, flowgraph.app
SOURCES = ("flowgraph", "gpu", "models", "app", "tests", "benchmarks", "docs")


def _layer_of(module: str) -> str | None:
    """The layer a module name belongs to: ``flowgraph.models.heads`` → models, ``flowgraph.plot``
    → flowgraph; None for other distributions' modules."""
    parts = module.split(".")
    if parts[0] != "flowgraph":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "flowgraph"


def _imports(path: Path) -> list[str]:
    """Every absolute module name a file imports, ``from flowgraph import gpu`` as flowgraph.gpu."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _imported_layers(path: Path) -> set[str]:
    return {layer for name in _imports(path) if (layer := _layer_of(name)) is not None}


@pytest.mark.parametrize("layer", ORDER)
def test_layers_import_downward_only(layer: str):
    above = set(ORDER[ORDER.index(layer) + 1 :])
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_layers(path) & above)
        for path in sorted((ROOT / layer).rglob("*.py"))
        if _imported_layers(path) & above
    }
    assert offenders == {}, f"{layer} imports a layer above it: {offenders}"


def test_nothing_imports_the_bare_folder_names():
    """``import models`` would find whatever ``models`` comes first on sys.path — a user's own
    package in their working folder; ours is only ever ``flowgraph.models``."""
    offenders = {
        str(path.relative_to(ROOT)): bare
        for folder in SOURCES
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (bare := sorted({n for n in _imports(path) if n.split(".")[0] in LAYERS}))
    }
    assert offenders == {}


def test_the_rule_is_enforced_on_a_bad_file(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import numpy\nfrom flowgraph.app.cli import main\nfrom flowgraph import models, plot\n"
        "from . import sibling\nimport models\n"
    )
    assert _imported_layers(bad) == {"app", "models", "flowgraph"}
    assert "models" in _imports(bad)


def test_flowgraph_loads_without_torch_or_plotly():
    code = (
        "import sys, flowgraph as fg; fg.check(fg.strided(64));"
        "print(sorted(m for m in ('torch', 'plotly', 'cupy', 'dash') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"
