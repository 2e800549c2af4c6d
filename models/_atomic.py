"""Helpers for writing files that a crash never leaves half-written (shared by the checkpoint
and word-vector savers, which write a temporary directory and rename it into place)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_path"]


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a directory: its entries) to disk, so that a rename that follows
    never publishes data the disk does not hold yet."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
