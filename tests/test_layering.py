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


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", ORDER)
def test_layers_import_downward_only(layer: str):
    above = set(ORDER[ORDER.index(layer) + 1 :])
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & above)
        for path in sorted((ROOT / layer).rglob("*.py"))
        if _imported_packages(path) & above
    }
    assert offenders == {}, f"{layer} imports a layer above it: {offenders}"


def test_the_rule_is_enforced_on_a_bad_file(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom app.cli import main\nfrom . import sibling\n")
    assert _imported_packages(bad) == {"numpy", "app"}


def test_flowgraph_loads_without_torch_or_plotly():
    code = (
        "import sys, flowgraph as fg; fg.check(fg.strided(64));"
        "print(sorted(m for m in ('torch', 'plotly', 'cupy', 'dash') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"
