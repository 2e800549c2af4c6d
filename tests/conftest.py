"""Shared set-up for the test suite: make ``tests/oracles.py`` importable as ``oracles`` under any
pytest import mode, and have hypothesis print a reproduction blob on CI (``CI=true``), where its
example database does not survive the run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile("ci", print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core CPU run many times slower with two threads; test files of
    such models opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch  # only the tests that use the fixture pay for the import

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
