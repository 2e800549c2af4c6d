"""Shared by the tests of tests/gpu: every test here is marked ``gpu`` and skipped without a CUDA
device. A module of the CuPy kernels' tests names its op as ``KERNEL_ENTRY = (module, function)``:
its tests are also skipped without CuPy, and :func:`poisoned` runs around each of them. (No
``__init__.py`` here: the folder must not shadow the real ``gpu`` package.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    has_cupy = importlib.util.find_spec("cupy") is not None
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if not has_cuda:
            reason = "needs a CUDA device: torch.cuda.is_available() is False"
            item.add_marker(pytest.mark.skip(reason=reason))
        elif hasattr(getattr(item, "module", None), "KERNEL_ENTRY") and not has_cupy:
            item.add_marker(pytest.mark.skip(reason="needs CuPy, the kernels' launcher"))


@pytest.fixture(autouse=True)
def poisoned(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list | None:
    """For a module with ``KERNEL_ENTRY = (module, function)``: NaN-filled outputs from that module
    (its ``poison_outputs``), so an element no kernel writes shows, and the list of the calls that
    reached the function (the shape of each call's first argument), to tell a kernel run from a
    fallback. None for the other modules."""
    entry = getattr(request.module, "KERNEL_ENTRY", None)
    if entry is None:
        return None
    module, name = entry
    monkeypatch.setattr(module, "poison_outputs", True)
    calls: list[torch.Size] = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls
