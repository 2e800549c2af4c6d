"""What every benchmark prints about the machine it ran on, so a table can be judged later, and
the pieces every script's command line and report share (flags, timing, tables, output).

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average: above the CPU count, other work was competing for the CPUs."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):  # not on every platform
        return "unknown"


def machine_line(libraries: str) -> str:
    """``Machine: <platform>, <n> CPUs (<model>); Python <v>, <libraries>``."""
    return (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu_model()}); "
        f"Python {platform.python_version()}, {libraries}"
    )


# --- shared by the scripts' main(): command line, timing, output ----------------------------------
def command_line() -> str:
    """The command that started this process, shell-quoted: the report's ``Command:`` line."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def load_span(load_start: str) -> str:
    """The report's load sentence, from the load average taken at the start of the run."""
    return f"1-minute load average at start / end: {load_start} / {load_average()}."


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds the report alone."""
    print(msg, file=sys.stderr, flush=True)


def median_s(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls of ``fn``, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def cuda_ms(fn: Callable[[], object]) -> float:
    """Milliseconds of one call of ``fn`` on the current CUDA stream, between two CUDA events."""
    import torch  # only the GPU scripts come here; check_scaling runs without torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def markdown_table(
    header: Sequence[str], align: str, rows: Iterable[Sequence[object]]
) -> list[str]:
    """The lines of a markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one of l/r per column ({len(header)}), got {align!r}")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def new_parser(doc: str, *, quick: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring ``doc``; with ``quick``
    (its help text), the script's ``--quick`` smoke-run flag."""
    ap = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    return ap


def add_markdown_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--markdown", type=Path, help="also write the report to this file")


def add_threads_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def check_minimums(
    ap: argparse.ArgumentParser, args: argparse.Namespace, minimums: dict[str, float]
) -> None:
    """``ap.error`` (exit 2) for the first flag below its minimum; flags left unset pass."""
    for flag, minimum in minimums.items():
        value = getattr(args, flag)
        if value is not None and value < minimum:
            ap.error(f"--{flag.replace('_', '-')} must be ≥ {minimum}, got {value}")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``<path>.tmp`` and a rename, so no reader sees half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def emit(text: str, markdown: Path | None) -> None:
    """Print the report; with ``--markdown PATH``, also write it there."""
    print(text, end="")
    if markdown is not None:
        write_atomic(markdown, text)
