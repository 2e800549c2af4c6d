"""The one CuPy launcher every op of :mod:`gpu` goes through: compile a kernel once per process and
device, launch it on torch's current stream, pass tensors as raw device pointers.

CuPy is imported inside these functions only, so importing this module costs nothing on a machine
without CUDA (``gpu.backend`` looks for it to decide whether the kernels exist). The ops
(``gpu._sparse_cuda``, ``gpu._metric_cuda``) own their checks and grid arithmetic; this module owns
what every launch needs: the cached modules, the device and stream, the shared-memory opt-in, the
launch limits and the argument types. docs/gpu.md ("The CUDA launcher") lists what of CuPy's
behaviour shaped it.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np
import torch

from flowgraph.gpu.kernels import KERNELS, NAME_EXPRESSIONS
from flowgraph.gpu.kernels import source as _read_source

__all__ = [
    "DEFAULT_SHARED_BYTES",
    "MAX_GRID_X",
    "MAX_GRID_YZ",
    "check_args",
    "check_launch",
    "kernel",
    "launch",
    "ptr",
]

DEFAULT_SHARED_BYTES = 48 * 1024  # above this a kernel must opt in (cudaFuncAttribute)
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
MAX_THREADS = 1024
_SCALAR_ARGS = (np.int32, np.uint32, np.int64, np.float32)  # the kernels' scalar parameter types

_lock = threading.Lock()
_modules: dict[tuple[str, str, int], Any] = {}  # (source, instance or "", device) -> RawModule
_kernels: dict[tuple[str, str, int], Any] = {}  # (source, name, device) -> cupy.RawKernel
_opted_in: dict[tuple[int, int], int] = {}  # (id(kernel), device) -> dynamic shared bytes allowed
_alive: list[Any] = []  # kernels named in _opted_in, kept alive so their ids stay theirs
_streams: dict[tuple[int, int], Any] = {}  # (device, stream handle) -> cupy stream, never freed


def _cupy() -> Any:
    import cupy  # the optional dependency: only here, never at module load

    return cupy


def _code(source: str) -> str:
    """The text handed to NVRTC: the source, then a comment with a digest of the headers it may
    include from the kernels folder. CuPy's on-disk cache key hashes the code string and the
    options, not the files that ``#include`` pulls in: without the digest an edited
    ``tile_common.cuh`` would keep loading the cubin built from the old one."""
    digest = hashlib.sha256()
    for header in sorted(KERNELS.glob("*.cuh")):
        digest.update(header.name.encode() + b"\0" + header.read_bytes() + b"\0")
    return f"{_read_source(source)}\n// flowgraph kernel headers sha256 {digest.hexdigest()}\n"


def _compile_error(err: Exception, source: str, name: str) -> RuntimeError:
    """A compile failure re-raised with what to do about the usual cause, missing headers."""
    text = str(err)
    hint = ""
    if "cannot open source file" in text or "could not open source file" in text:
        hint = (
            "\nNVRTC did not find a CUDA header (<cuda_fp16.h>, <cuda_bf16.h> or <mma.h>). CuPy "
            "adds the toolkit's include folder (CUDA_PATH, else nvcc's folder, else "
            "/usr/local/cuda) or, for pip wheels, the include folder of the "
            "nvidia-cuda-runtime-cuXX package whose version matches NVRTC's major.minor: set "
            "CUDA_PATH or `pip install nvidia-cuda-runtime-cu12==<NVRTC major.minor>.*`."
        )
    return RuntimeError(f"compiling {name} of gpu/kernels/{source} failed:\n{text}{hint}")


def kernel(source: str, name: str, device: torch.device | None = None) -> Any:
    """The compiled kernel ``name`` of ``gpu/kernels/<source>`` for ``device`` (a CUDA
    torch.device; None: CuPy's current device).

    ``name`` is an ``extern "C"`` kernel of the source or one of the template expressions listed in
    ``gpu.kernels.NAME_EXPRESSIONS[source]``. Each template instantiation is its own
    ``cupy.RawModule`` (``-std=c++17``, the kernels folder on the include path,
    ``name_expressions=(name,)``), compiled on first use, once per process and device: CuPy never
    reads its disk cache for a module with name expressions (it recompiles to learn the mangled
    names), so compiling all of a source's instantiations at once would cost every process
    20–45 s per source (NVRTC 12, sm_90); one instantiation takes under a second. A
    ``cupy.RawKernel`` also compiles itself for another device on its first launch there, so a
    kernel fetched on one device may be launched on any — after compiling once more: the ops
    fetch their kernels under the tensors' device, so that a tensor on cuda:1 neither compiles
    twice nor opens a context on cuda:0.
    """
    if source not in NAME_EXPRESSIONS:
        raise ValueError(f"source must be one of {sorted(NAME_EXPRESSIONS)}, got source={source!r}")
    template = "<" in name
    if template and name not in NAME_EXPRESSIONS[source]:
        raise ValueError(
            f'name must be an extern "C" kernel of {source} or one of its '
            f"flowgraph.gpu.kernels.NAME_EXPRESSIONS, got name={name!r}"
        )
    cupy = _cupy()
    if device is None:
        index = cupy.cuda.runtime.getDevice()
    elif isinstance(device, torch.device) and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    else:
        raise ValueError(f"device must be a CUDA torch.device or None, got device={device!r}")
    key = (source, name, index)
    found = _kernels.get(key)
    if found is not None:
        return found
    with _lock, cupy.cuda.Device(index):
        if key in _kernels:
            return _kernels[key]
        # extern "C" kernels share one module per source; a template instance has its own
        module_key = (source, name if template else "", index)
        try:
            module = _modules.get(module_key)
            if module is None:
                module = cupy.RawModule(
                    code=_code(source),
                    options=("-std=c++17", f"-I{KERNELS}"),
                    name_expressions=(name,) if template else None,
                )
                _modules[module_key] = module
            # RawModule compiles lazily: get_function is where NVRTC runs
            _kernels[key] = module.get_function(name)
        except Exception as err:  # cupy.cuda.compiler.CompileException and NVRTCError
            if type(err).__name__ not in ("CompileException", "NVRTCError"):
                raise
            raise _compile_error(err, source, name) from err
        return _kernels[key]


class _TorchStream:
    """The CUDA stream protocol (``__cuda_stream__``, a method returning ``(0, handle)``) over a
    torch stream, for ``cupy.cuda.Stream.from_external``; it keeps the torch stream alive while
    CuPy holds it."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, int(self.stream.cuda_stream))


def _stream(cupy: Any, device: torch.device) -> Any:
    """torch's current stream on ``device`` as a CuPy stream; called under that device, every
    launch (the caller may have switched streams since the last one).

    The CuPy stream objects are kept, one per (device, handle), for the life of the process:
    ``Stream.from_external`` returns a ``cupy.cuda.Stream``, whose ``__del__`` calls
    ``cudaStreamDestroy`` on any handle other than the default streams' unless that CuPy version
    knows the handle is foreign — a wrapper collected after a launch would destroy the torch
    stream under torch (a side stream from ``torch.cuda.Stream()`` is such a handle). Kept
    wrappers are never collected before interpreter exit, where CuPy skips ``__del__``; torch's
    streams come from a fixed pool per device, so the cache stays small."""
    current = torch.cuda.current_stream(device)
    key = (device.index, int(current.cuda_stream))
    found = _streams.get(key)
    if found is not None:
        return found
    wrapped = _TorchStream(current)
    if hasattr(cupy.cuda.Stream, "from_external"):
        made = cupy.cuda.Stream.from_external(wrapped)
    else:  # CuPy < 14 has no from_external; ExternalStream is its (since deprecated) equivalent
        made = cupy.cuda.ExternalStream(key[1], device.index)
    with _lock:
        return _streams.setdefault(key, made)


def _dims(argname: str, dims: tuple[int, int, int]) -> tuple[int, int, int]:
    if (
        not isinstance(dims, tuple)
        or len(dims) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in dims)
    ):
        raise TypeError(f"{argname} must be a tuple of three ints, got {argname}={dims!r}")
    if min(dims) < 1:
        raise ValueError(f"{argname} must be positive in every dimension, got {argname}={dims}")
    return dims


def check_launch(grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int) -> None:
    """Raise ValueError/TypeError for a launch the hardware refuses (grid x ≤ 2³¹−1, y and z ≤
    65535, at most 1024 threads per block, non-negative shared memory), before CUDA does it with a
    less helpful message."""
    gx, gy, gz = _dims("grid", grid)
    bx, by, bz = _dims("block", block)
    if gx > MAX_GRID_X or gy > MAX_GRID_YZ or gz > MAX_GRID_YZ:
        raise ValueError(
            f"grid={grid} exceeds the CUDA limits (x ≤ {MAX_GRID_X}, y and z ≤ {MAX_GRID_YZ}); "
            "split the launch (loop over grid z) or fold the excess into x"
        )
    if bx * by * bz > MAX_THREADS or bz > 64:
        raise ValueError(f"block={block} exceeds {MAX_THREADS} threads per block (z ≤ 64)")
    if isinstance(shared_mem, bool) or not isinstance(shared_mem, int) or shared_mem < 0:
        raise ValueError(f"shared_mem must be a non-negative int, got shared_mem={shared_mem!r}")


def check_args(args: tuple) -> None:
    """Raise TypeError for a kernel argument CuPy would pass with the wrong width. CuPy turns a
    Python ``int`` into an 8-byte ``int64`` (right for a pointer), a ``float`` into a ``double``
    and a ``bool`` into an ``int64`` too, so an ``int`` or ``float`` parameter must get
    ``numpy.int32`` / ``numpy.float32``: a wrong width shifts every later argument and the kernel
    reads garbage, with no error from CUDA."""
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}")
    for i, a in enumerate(args):
        if type(a) in _SCALAR_ARGS:
            continue
        if isinstance(a, int) and not isinstance(a, bool) and a >= 0:
            continue  # a device pointer (or a long long)
        raise TypeError(
            f"kernel argument {i} must be a device pointer (a non-negative int) or one of "
            f"numpy.int32, numpy.uint32, numpy.int64, numpy.float32; got {type(a).__name__} "
            f"{a!r}"
        )


def launch(
    kern: Any,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: tuple,
    shared_mem: int,
    device: torch.device,
) -> None:
    """Launch ``kern`` on ``device`` (under ``cupy.cuda.Device(device.index)``), on torch's current
    stream there, with ``shared_mem`` bytes of dynamic shared memory.

    Above 48 KiB the kernel's ``max_dynamic_shared_size_bytes`` is raised first (once per kernel,
    device and size), and a request past the device's opt-in limit fails with a ValueError naming
    both. Grid and block limits are checked here with a clear error. Arguments are passed as CuPy
    passes them: device pointers as ints (:func:`ptr`), scalars as ``numpy.int32`` /
    ``numpy.float32`` of exactly the parameter's type.
    """
    check_launch(grid, block, shared_mem)
    check_args(args)
    if not isinstance(device, torch.device) or device.type != "cuda":
        raise ValueError(f"device must be a CUDA torch.device, got device={device!r}")
    cupy = _cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index):
        if shared_mem > DEFAULT_SHARED_BYTES:
            key = (id(kern), index)
            if _opted_in.get(key, 0) < shared_mem:
                limit = cupy.cuda.Device(index).attributes["MaxSharedMemoryPerBlockOptin"]
                if shared_mem > limit:
                    raise ValueError(
                        f"shared_mem={shared_mem} bytes exceeds the opt-in limit of device "
                        f"cuda:{index}, {limit} bytes; use a smaller block or head dim"
                    )
                kern.max_dynamic_shared_size_bytes = shared_mem
                with _lock:
                    if key not in _opted_in:
                        _alive.append(kern)
                    _opted_in[key] = shared_mem
        with _stream(cupy, torch.device("cuda", index)):
            kern(grid, block, args, shared_mem=shared_mem)


def ptr(t: torch.Tensor | None) -> int:
    """The device address of ``t`` for a kernel argument (0, a null pointer, for None), after
    checking that ``t`` is a CUDA tensor."""
    if t is None:
        return 0
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or None, got {type(t).__name__}")
    if not t.is_cuda:
        raise ValueError(f"expected a CUDA tensor, got a tensor on {t.device}")
    return t.data_ptr()
