"""What every benchmark prints about the machine it ran on, so a table can be judged later.

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder on the path).
"""

from __future__ import annotations

import os
import platform
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
