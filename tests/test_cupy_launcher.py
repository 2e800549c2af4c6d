"""gpu/_cupy.py, the launcher every op goes through, against a stand-in for CuPy (CI has neither a
GPU nor CuPy), and the two ops' launches through it with CPU tensors: one module per template
instantiation and device, the code (with a digest of the headers, CuPy's disk cache key) and
options it compiles with, compile errors with a hint, the device and torch's current stream a
launch runs under (through the ``__cuda_stream__`` protocol, one kept CuPy wrapper per torch
stream, never collected: CuPy's ``Stream.__del__`` may destroy the handle), the shared-memory
opt-in above 48 KiB, the limit checks, every launch's arguments against the kernel's C
parameter list (CuPy passes a Python int as 8 bytes: an ``int`` parameter needs numpy.int32), and
every configuration's thread count against the kernel's ``__launch_bounds__`` — mistakes that
only a GPU would otherwise show."""

from __future__ import annotations

import gc
import re
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from flowgraph.gpu import _cupy, pack_symmetric
from flowgraph.gpu.kernels import KERNELS, NAME_EXPRESSIONS
from flowgraph.gpu.mask import SparseMask


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
    compile_error: str | None = None


class CompileException(Exception):  # the name gpu._cupy recognises, as CuPy's
    pass


def _fake_cupy(log: Log, *, from_external: bool = True) -> types.ModuleType:
    cupy = types.ModuleType("cupy")

    class RawModule:
        def __init__(self, *, code, options, name_expressions):
            self.code, self.name_expressions = code, name_expressions
            log.append(("module", options, name_expressions, log.device))

        def get_function(self, name):  # where CuPy compiles (lazily) and looks the name up
            if log.compile_error is not None:
                raise CompileException(log.compile_error)
            assert self.name_expressions is None or name in self.name_expressions
            log.append(("compile", name, log.device, self.code))
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
        """As cupy.cuda.Stream: collecting one destroys its handle (unless it is a default one)."""

        def __init__(self, handle, device):
            self.handle, self.device = handle, device
            log.append(("stream", handle, device))

        def __del__(self):
            if self.handle != 0:
                log.append(("destroyed", self.handle))

        def __enter__(self):
            assert self.device == log.device, "a stream used under another device"
            log.stream = self.handle

        def __exit__(self, *exc):
            log.stream = None

    if from_external:

        def make(cls, obj):
            version, handle = obj.__cuda_stream__()  # a method, as CuPy calls it
            assert version == 0 and type(handle) is int
            return cls(handle, log.device)

        Stream.from_external = classmethod(make)

    cupy.RawModule = RawModule
    cupy.cuda = types.SimpleNamespace(
        Device=Device,
        Stream=Stream,
        ExternalStream=lambda handle, device: Stream(handle, device),
        runtime=types.SimpleNamespace(getDevice=lambda: log.device),
    )
    return cupy


@pytest.fixture
def fake(monkeypatch):
    """A stand-in ``cupy`` module recording what the launcher asks of it."""
    log = Log()
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    streams = {0: 1111, 1: 2222}

    class TorchStream:  # what torch.cuda.current_stream returns, one object per call
        def __init__(self, handle):
            self.cuda_stream = handle

    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda device: TorchStream(streams[device.index])
    )
    for name in ("_modules", "_kernels", "_opted_in", "_streams"):
        monkeypatch.setattr(_cupy, name, {})
    monkeypatch.setattr(_cupy, "_alive", [])
    return log, streams


FWD_F32 = "sparse_attention_fwd_f32<16, 32>"


def test_one_module_per_instantiation_and_device(fake):
    log, _ = fake
    first = _cupy.kernel("sparse_attention.cu", FWD_F32)
    again = _cupy.kernel("sparse_attention.cu", FWD_F32)
    other = _cupy.kernel("sparse_attention.cu", "sparse_attention_bwd_f32<16, 32>")
    assert first is again and other is not first
    options = ("-std=c++17", f"-I{KERNELS}")
    assert [e for e in log if e[0] == "module"] == [
        ("module", options, (FWD_F32,), 0),
        ("module", options, ("sparse_attention_bwd_f32<16, 32>",), 0),
    ]
    source = (KERNELS / "sparse_attention.cu").read_text(encoding="utf-8")
    compiled = [e for e in log if e[0] == "compile"]
    assert [e[1:3] for e in compiled] == [(FWD_F32, 0), ("sparse_attention_bwd_f32<16, 32>", 0)]
    assert compiled[0][3].startswith(source) and compiled[0][3] == _cupy._code(
        "sparse_attention.cu"
    )
    log.device = 1
    _cupy.kernel("sparse_attention.cu", FWD_F32)
    _cupy.kernel("reduce.cu", "row_dot_f32")
    _cupy.kernel("reduce.cu", "row_dot_f16")  # extern "C" kernels share their source's module
    assert [(e[2], e[3]) for e in log if e[0] == "module"][2:] == [((FWD_F32,), 1), (None, 1)]
    with pytest.raises(ValueError, match=r"source must be one of .*got source='nope.cu'"):
        _cupy.kernel("nope.cu", "k")
    with pytest.raises(ValueError, match=r"NAME_EXPRESSIONS, got name='sparse_attention_fwd_f32"):
        _cupy.kernel("sparse_attention.cu", "sparse_attention_fwd_f32<16, 48>")


def test_every_name_expression_is_asked_for_exactly_as_listed(fake):
    """CuPy finds a template kernel by the very string given in name_expressions."""
    log, _ = fake
    asked = [(source, name) for source, names in NAME_EXPRESSIONS.items() for name in names[::7]]
    for source, name in asked:
        _cupy.kernel(source, name)
    modules = [e[2] for e in log if e[0] == "module"]
    assert modules == [(name,) for _, name in asked]
    assert [e[1] for e in log if e[0] == "compile"] == [name for _, name in asked]


def test_the_code_carries_a_digest_of_the_headers(fake, tmp_path, monkeypatch):
    """CuPy keys its disk cache on the code string, not on what #include reads: an edited header
    must change the code, or the old cubin is loaded."""
    folder = tmp_path / "kernels"
    shutil.copytree(KERNELS, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setattr(_cupy, "KERNELS", folder)
    before = _cupy._code("sparse_attention.cu")
    assert before.startswith((KERNELS / "sparse_attention.cu").read_text(encoding="utf-8"))
    assert _cupy._code("sparse_attention.cu") == before
    header = folder / "tile_common.cuh"
    header.write_text(header.read_text(encoding="utf-8") + "// edited\n", encoding="utf-8")
    after = _cupy._code("sparse_attention.cu")
    assert after != before and re.search(r"sha256 [0-9a-f]{64}\n$", after)


def test_a_missing_header_fails_with_what_to_do(fake):
    log, _ = fake
    log.compile_error = 'tile_common.cuh(12): catastrophic error: cannot open source file "mma.h"'
    with pytest.raises(RuntimeError, match=r"(?s)compiling sparse_attention_fwd_f32<16, 32> of "
                       r"gpu/kernels/sparse_attention.cu failed.*mma.h.*CUDA_PATH"):  # fmt: skip
        _cupy.kernel("sparse_attention.cu", FWD_F32)
    log.compile_error = None
    assert _cupy.kernel("sparse_attention.cu", FWD_F32)  # nothing half-built was cached


def test_launch_runs_under_the_device_on_torch_s_current_stream(fake):
    log, streams = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    args = (4096, np.int32(2))
    _cupy.launch(kern, (3, 2, 1), (32, 4, 1), args, 1024, torch.device("cuda", 1))
    assert log[-1] == ("launch", "row_dot_f32", (3, 2, 1), (32, 4, 1), args, 1024, 1, 2222)
    streams[1] = 3333  # the caller switched streams: the next launch follows
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 0, torch.device("cuda", 1))
    assert log[-1][-2:] == (1, 3333)
    assert log.device == 0 and log.stream is None  # both restored


def test_one_kept_cupy_stream_per_torch_stream(fake):
    """A side stream's handle must survive the launches: CuPy's Stream.__del__ destroys a
    handle it does not know to be foreign, so the wrappers are made once and kept."""
    log, streams = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    for handle in (1111, 4444, 1111, 4444):
        streams[0] = handle
        _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 0, torch.device("cuda", 0))
    gc.collect()
    assert [e for e in log if e[0] == "stream"] == [("stream", 1111, 0), ("stream", 4444, 0)]
    assert not [e for e in log if e[0] == "destroyed"]
    assert [e[-1] for e in log if e[0] == "launch"] == [1111, 4444, 1111, 4444]


def test_cupy_without_from_external_uses_external_stream(fake, monkeypatch):
    log, _ = fake
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log, from_external=False))
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 0, torch.device("cuda", 1))
    assert ("stream", 2222, 1) in log and log[-1][-2:] == (1, 2222)


def test_shared_memory_above_48_kib_is_opted_in_once(fake):
    log, _ = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    for _ in range(2):
        _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 100_000, torch.device("cuda", 0))
    assert [e for e in log if e[0] == "opt-in"] == [("opt-in", "row_dot_f32", 100_000, 0)]
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 150_000, torch.device("cuda", 0))
    assert [e[2] for e in log if e[0] == "opt-in"] == [100_000, 150_000]
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (), 100_000, torch.device("cuda", 1))
    assert [e for e in log if e[0] == "opt-in"][-1] == ("opt-in", "row_dot_f32", 100_000, 1)
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


@pytest.mark.parametrize(
    ("arg", "shown"),
    [
        (0.5, "float 0.5"),
        (True, "bool True"),
        (np.float64(1.0), "float64"),
        (-1, "int -1"),
        (torch.zeros(1), "Tensor"),
    ],
)
def test_arguments_of_the_wrong_width_fail_before_the_launch(fake, arg, shown):
    log, _ = fake
    kern = _cupy.kernel("reduce.cu", "row_dot_f32")
    with pytest.raises(TypeError, match=rf"kernel argument 1 must be a device pointer .*{shown}"):
        _cupy.launch(kern, (1, 1, 1), (32, 1, 1), (8, arg), 0, torch.device("cuda", 0))
    assert not [e for e in log if e[0] == "launch"]
    ok = (8, np.int32(1), np.uint32(2), np.int64(3), np.float32(0.5))
    _cupy.launch(kern, (1, 1, 1), (32, 1, 1), ok, 0, torch.device("cuda", 0))


def test_pointers(fake):
    assert _cupy.ptr(None) == 0
    with pytest.raises(ValueError, match=r"expected a CUDA tensor, got a tensor on cpu"):
        _cupy.ptr(torch.zeros(1))
    with pytest.raises(TypeError, match=r"expected a torch.Tensor or None, got int"):
        _cupy.ptr(3)
    with pytest.raises(ValueError, match=r"device must be a CUDA torch.device, got device"):
        _cupy.launch(None, (1, 1, 1), (1, 1, 1), (), 0, torch.device("cpu"))


# --- the ops' launches against the kernels' parameter lists ---------------------------------------
def _parameters(source: str, expression: str) -> list[str]:
    """The C parameter kinds of a kernel of ``source`` — "ptr", "int", "float" or "long long" —
    read from its definition (a template kernel written out directly or by an entry-point
    macro, ``name_##SUFFIX``)."""
    text = (KERNELS / source).read_text(encoding="utf-8")
    name = expression.split("<")[0]
    stem = name.rpartition("_")[0]
    for pattern in (rf"\b{name}\s*\(", rf"\b{stem}_##SUFFIX\s*\("):
        found = re.search(pattern, text)
        if found:
            break
    else:
        raise AssertionError(f"no definition of {name} in {source}")
    depth, i = 1, found.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    params = re.sub(r"\\\n", " ", text[found.end() : i - 1])
    kinds = []
    for param in params.split(","):
        words = param.split()
        if "*" in param:
            kinds.append("ptr")
        elif words[:2] == ["long", "long"]:
            kinds.append("long long")
        else:
            assert words[0] in ("int", "float"), (name, param)
            kinds.append(words[0])
    return kinds


ARG_KIND = {int: "ptr", np.int32: "int", np.float32: "float", np.int64: "long long"}


def _launched(log: Log) -> list[tuple[str, str, tuple]]:
    return [(e[1], e[4]) for e in log if e[0] == "launch"]


def _check_against_signatures(log: Log, source: str) -> int:
    launches = _launched(log)
    for name, args in launches:
        kinds = [ARG_KIND[type(a)] for a in args]
        assert kinds == _parameters(source, name), name
    return len(launches)


@pytest.fixture
def cpu_ops(fake, monkeypatch):
    """Both ops run on CPU tensors through the real gpu._cupy.launch (and the fake CuPy):
    pointers are the tensors' addresses, the launch device is cuda:0."""
    from flowgraph.gpu import _metric_cuda, _sparse_cuda

    real_kernel, real_launch, cuda0 = _cupy.kernel, _cupy.launch, torch.device("cuda", 0)

    def kernel(source, name, device):
        assert device.type == "cpu"  # the tensors' device, passed on
        return real_kernel(source, name, cuda0)

    def launch(kern, grid, block, args, shared_mem, device):
        real_launch(kern, grid, block, args, shared_mem, cuda0)

    def pointer(t):
        return 0 if t is None else t.data_ptr()

    monkeypatch.setattr(_sparse_cuda, "_kernel", kernel)
    monkeypatch.setattr(_sparse_cuda, "_ptr", pointer)
    monkeypatch.setattr(_sparse_cuda, "_launch", launch)
    monkeypatch.setattr(_cupy, "kernel", kernel)  # what _metric_cuda's CuPy launcher calls
    monkeypatch.setattr(_cupy, "ptr", pointer)
    monkeypatch.setattr(_cupy, "launch", launch)
    return _sparse_cuda, _metric_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_op_arguments_match_the_kernel_parameters(fake, cpu_ops, dtype):
    log, _ = fake
    sparse, _ = cpu_ops
    rng = np.random.default_rng(0)
    mask = SparseMask.from_masks(rng.random((2, 40, 40)) < 0.3, block=16)
    q, k, v = (torch.randn(1, 2, 40, 32).to(dtype) for _ in range(3))
    out, lse = sparse._forward_op(
        q, k, v, mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.q_indptr, mask.q_indices,
        mask.q_slots, mask.bits_pbw, 16, 0.25,
    )  # fmt: skip
    sparse._backward_op(
        torch.randn_like(q), q, k, v, out, lse, mask.q_indptr, mask.q_indices, mask.q_slots,
        mask.bits_pbw, 16, 0.25,
    )  # fmt: skip
    assert _check_against_signatures(log, "sparse_attention.cu") == 2


@pytest.mark.parametrize(("dtype", "masked"), [(torch.float32, True), (torch.float16, False)])
def test_metric_op_arguments_match_the_kernel_parameters(fake, cpu_ops, dtype, masked):
    log, _ = fake
    _, metric = cpu_ops
    rng = np.random.default_rng(1)
    mask = SparseMask.from_masks(rng.random((2, 40, 40)) < 0.3, block=16) if masked else None
    p = torch.randn(1, 2, 40, 16).to(dtype)
    m_hkk = torch.randn(2, 16, 16)
    m = pack_symmetric((m_hkk + m_hkk.mT).to(dtype))
    out = metric.metric_attention_cuda(p, m, True, mask, 0.25)
    csr = (None,) * 5 if mask is None else (mask.q_indptr, mask.q_indices, mask.q_slots,
                                            mask.bits_pbw, mask.perm_hn)  # fmt: skip
    lse = torch.zeros(1, 2, 40)
    block = 64 if mask is None else 16
    metric._bwd(torch.randn_like(out), p, m, out, lse, *csr, True, 0.25, block)
    assert _check_against_signatures(log, "metric_attention.cu") == 2


def test_a_kernel_is_compiled_under_the_tensors_device(fake):
    """CuPy compiles and loads on its current device: fetched for a tensor on cuda:1 while the
    current device is 0, the kernel must be built under cuda:1 (not on 0, then again on 1)."""
    log, _ = fake
    kern = _cupy.kernel("sparse_attention.cu", FWD_F32, torch.device("cuda", 1))
    assert [e[:3] for e in log if e[0] == "compile"] == [("compile", FWD_F32, 1)]
    assert log.device == 0  # restored
    assert _cupy.kernel("sparse_attention.cu", FWD_F32, torch.device("cuda", 1)) is kern
    assert _cupy.kernel("sparse_attention.cu", FWD_F32) is not kern  # device 0's own
    with pytest.raises(ValueError, match=r"device must be a CUDA torch.device or None"):
        _cupy.kernel("sparse_attention.cu", FWD_F32, torch.device("cpu"))


def _launch_bounds(source: str) -> dict[str, str]:
    """kernel name (with ``SUFFIX`` for the entry-point macros) → its ``__launch_bounds__``
    expression, as written in the source."""
    text = (KERNELS / source).read_text(encoding="utf-8")
    found = {}
    for match in re.finditer(r"__launch_bounds__\(", text):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        name = re.match(r"[\s\\]*(\w+)", text[i:]).group(1)
        found[name] = text[match.end() : i - 1]
    return found


def _threads_allowed(expression: str, block: int) -> int:
    python = re.sub(r"(\w+) < (\w+) \? (\w+) : (\w+)", r"(\3 if \1 < \2 else \4)", expression)
    assert re.fullmatch(r"[\sB\d*+()<>ifelse]+", python), expression
    return eval(python, {"B": block})  # a checked arithmetic expression of B


@pytest.mark.parametrize("source", ["sparse_attention.cu", "metric_attention.cu"])
def test_every_launch_stays_within_the_kernel_s_launch_bounds(source):
    """A block of more threads than ``__launch_bounds__`` allows fails on the GPU only ("too many
    resources requested"); the emulator runs it. The thread counts the launchers take from
    gpu.kernels' configs must equal what each kernel declares."""
    from flowgraph.gpu import kernels

    assert _threads_allowed("8 * (B < 64 ? B : 64)", 128) == 512
    bounds = _launch_bounds(source)
    assert len(bounds) >= 2, bounds
    kind = source.split("_")[0]
    for expression in NAME_EXPRESSIONS[source]:
        name, args = expression.rstrip(">").split("<")
        block, d = (int(x) for x in args.split(","))
        direction, dtype = name.split("_")[-2:]
        wmma = "" if dtype == "f32" else "_wmma"
        config = getattr(kernels, f"{kind}_attention_{direction}{wmma}_config")
        threads, _ = config(block, d)
        declared = bounds.get(name) or bounds[name.rsplit("_", 1)[0] + "_"]
        assert threads == _threads_allowed(declared, block), expression
