"""Load or run a script of ``benchmarks/`` from a test: the scripts are not a package, and they
import ``_report`` from their own folder, so that folder goes on ``sys.path`` first."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@functools.cache
def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as the module ``bench_<name>`` (once per session)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python benchmarks/<name>.py ARGS`` from the repository root, capturing its output."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: a list of rows of cells, the header row first."""
    found, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            assert set("".join(current[1])) <= {"-", ":"}, current[1]  # the separator row
            found.append([current[0], *current[2:]])
            current = []
    return found


def assert_quick_report(proc: subprocess.CompletedProcess[str], markdown: Path) -> None:
    """What every ``--quick --markdown PATH`` run reports: the machine line first, the command,
    the load average, the note that the numbers mean nothing, and the same text in the file."""
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Machine: ")
    assert "Command: `" in proc.stdout and "--quick" in proc.stdout
    assert "1-minute load average at start / end: " in proc.stdout
    assert "a --quick smoke run" in proc.stdout
    assert markdown.read_text(encoding="utf-8") == proc.stdout


def assert_rejected(name: str, args: list[str], message: str) -> None:
    """``benchmarks/<name>.py ARGS`` exits with argparse's status 2 and ``message`` on stderr."""
    proc = run_script(name, *args)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr


def assert_verdict(verdict: str, printed: str, limit: float, *, at_most: bool) -> None:
    """A goal line's met/NOT met agrees with its printed value — unless that value is within
    rounding of the limit, where the script's unrounded number may fall on either side."""
    value = float(printed.replace(",", ""))
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    if abs(value - limit) <= 0.5 * 10.0**-decimals:
        assert verdict in ("met", "NOT met")
        return
    assert verdict == ("met" if (value <= limit if at_most else value >= limit) else "NOT met")
