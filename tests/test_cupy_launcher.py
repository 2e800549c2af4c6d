"""gpu/_cupy.py, the launcher every op goes through, against a stand-in for CuPy (CI has neither a
GPU nor CuPy): one module per source and device, the options and name expressions it compiles
with, the device and torch's current stream a launch runs under (through the ``__cuda_stream__``
protocol, fresh every launch), the shared-memory opt-in above 48 KiB, and the limit checks."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from gpu import _cupy
from gpu.kernels import KERNELS, NAME_EXPRESSIONS


class FakeKernel:
    def __init__(self, log, name):
        self.log, self.name = log, name
        self._max = 48 * 1024

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        self.log.append(("opt-in", self.name, value, self.log.device))
        self._max = value

    def __call__(self, grid, block, args, shared_mem=0):
        self.log.append(("launch", self.name, grid, block, args, shared_mem, self.log.device,
                         self.log.stream))  # fmt: skip


class Log(list):
    device = 0
    stream = None


@pytest.fixture
def fake(monkeypatch):
    """A stand-in ``cupy`` module recording what the launcher asks of it."""
    log = Log()
    cupy = types.ModuleType("cupy")

    class RawModule:
        def __init__(self, *, code, options, name_expressions):
            log.append(("compile", options, name_expressions, log.device, len(code)))

        def get_function(self, name):
            return FakeKernel(log, name)

    class Device:
        def __init__(self, index):
            self.index = index
            self.attributes = {"MaxSharedMemoryPerBlockOptin": 232448}

        def __enter__(self):
            self.previous, log.device = log.device, self.index

        def __exit__(self, *exc):
            log.device = self.previous

    class Stream:
        def __init__(self, handle):
            self.handle = handle

        @classmethod
        def from_external(cls, obj):
            version, handle = obj.__cuda_stream__()
            assert version == 0
            return cls(handle)

        def __enter__(self):
            log.stream = self.handle

        def __exit__(self, *exc):
            log.stream = None

    cupy.RawModule = RawModule
    cupy.cuda = types.SimpleNamespace(
        Device=Device, Stream=Stream, runtime=types.SimpleNamespace(getDevice=lambda: log.device)
    )
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    streams = {0: 1111, 1: 2222}
    monkeypatch.setattr(
        torch.cuda,
        "current_stream",
        lambda device: types.SimpleNamespace(cuda_stream=streams[device.index]),
    )
    monkeypatch.setattr(_cupy, "_modules", {})
    monkeypatch.setattr(_cupy, "_kernels", {})
    monkeypatch.setattr(_cupy, "_opted_in", {})
    return log, streams


def test_one_module_per_source_and_device(fake):
    log, _ = fake
    first = _cupy.kernel("sparse_attention.cu", "sparse_attention_fwd_f32<16, 32>")
    again = _cupy.kernel("sparse_attention.cu", "sparse_attention_fwd_f32<16, 32>")
    other = _cupy.kernel("sparse_attention.cu", "sparse_attention_bwd_f32<16, 32>")
    assert first is again and other is not first
    compiles = [entry for entry in log if entry[0] == "compile"]
    assert compiles == [
        (
            "compile",
            ("-std=c++17", f"-I{KERNELS}"),
            NAME_EXPRESSIONS["sparse_attention.cu"],
            0,
            len((KERNELS / "sparse_attention.cu").read_text(encoding="utf-8")),
        )
    ]
    log.device = 1
    _cupy.kernel("sparse_attention.cu", "sparse_attention_fwd_f32<16, 32>")
    _cupy.kernel("reduce.cu", "row_dot_f32")
    assert [(e[2], e[3]) for e in log if e[0] == "compile"][1:] == [
        (NAME_EXPRESSIONS["sparse_attention.cu"], 1),
        (None, 1),  # no templates: no name expressions
    ]
    with pytest.raises(ValueError, match=r"source must be one of .*got source='nope.cu'"):
        _cupy.kernel("nope.cu", "k")


def test_launch_runs_under_the_device_on_torch_s_current_stream(fake):
    log, streams = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    _cupy.launch(kern, (3, 2, 1), (32, 4, 1), ("a",), 1024, torch.device("cuda", 1))
    assert log[-1] == ("launch", "row_dot_f32", (3, 2, 1), (32, 4, 1), ("a",), 1024, 1, 2222)
    streams[1] = 3333  # the caller switched streams: the next launch follows
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 0, torch.device("cuda", 1))
    assert log[-1][-2:] == (1, 3333)
    assert log.device == 0 and log.stream is None  # both restored


def test_shared_memory_above_48_kib_is_opted_in_once(fake):
    log, _ = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    for _ in range(2):
        _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 100_000, torch.device("cuda", 0))
    assert [e for e in log if e[0] == "opt-in"] == [("opt-in", "row_dot_f32", 100_000, 0)]
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 150_000, torch.device("cuda", 0))
    assert [e[2] for e in log if e[0] == "opt-in"] == [100_000, 150_000]
    with pytest.raises(ValueError, match=r"shared_mem=300000 bytes exceeds the opt-in limit of "
                                         r"device cuda:0, 232448 bytes"):  # fmt: skip
        _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 300_000, torch.device("cuda", 0))


@pytest.mark.parametrize(
    ("grid", "block", "shared", "error", "message"),
    [
        ((1, 65536, 1), (32, 1, 1), 0, ValueError, r"grid=\(1, 65536, 1\) exceeds the CUDA limits"),
        ((1, 1, 70000), (32, 1, 1), 0, ValueError, r"y and z ≤ 65535"),
        ((2**31, 1, 1), (32, 1, 1), 0, ValueError, r"x ≤ 2147483647"),
        ((0, 1, 1), (32, 1, 1), 0, ValueError, r"grid must be positive"),
        ((1, 1), (32, 1, 1), 0, TypeError, r"grid must be a tuple of three ints"),
        ((1, 1, 1), (1024, 2, 1), 0, ValueError, r"block=\(1024, 2, 1\) exceeds 1024 threads"),
        ((1, 1, 1), (32, 1, 1), -1, ValueError, r"shared_mem must be a non-negative int"),
    ],
)
def test_launch_limits_fail_before_cuda_does(fake, grid, block, shared, error, message):
    log, _ = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    with pytest.raises(error, match=message):
        _cupy.launch(kern, grid, block, (), shared, torch.device("cuda", 0))
    assert not [e for e in log if e[0] == "launch"]


def test_pointers(fake):
    assert _cupy.ptr(None) == 0
    with pytest.raises(ValueError, match=r"expected a CUDA tensor, got a tensor on cpu"):
        _cupy.ptr(torch.zeros(1))
    with pytest.raises(TypeError, match=r"expected a torch.Tensor or None, got int"):
        _cupy.ptr(3)
    with pytest.raises(ValueError, match=r"device must be a CUDA torch.device, got device"):
        _cupy.launch(None, (1, 1, 1), (1, 1, 1), (), 0, torch.device("cpu"))
