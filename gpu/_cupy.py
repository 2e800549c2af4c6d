"""The one CuPy launcher every op of :mod:`gpu` goes through: compile a source once per process and
device, launch a kernel on torch's current stream, pass tensors as raw device pointers.

CuPy is imported inside these functions only, so importing this module costs nothing on a machine
without CUDA (``gpu.backend`` looks for it to decide whether the kernels exist). The ops
(``gpu._sparse_cuda``, ``gpu._metric_cuda``) own their checks and grid arithmetic; this module owns
what every launch needs: the cached modules, the device and stream, the shared-memory opt-in and
the launch limits.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from gpu.kernels import KERNELS, NAME_EXPRESSIONS
from gpu.kernels import source as _read_source

__all__ = ["DEFAULT_SHARED_BYTES", "MAX_GRID_X", "MAX_GRID_YZ", "kernel", "launch", "ptr"]

DEFAULT_SHARED_BYTES = 48 * 1024  # above this a kernel must opt in (cudaFuncAttribute)
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
MAX_THREADS = 1024

_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}  # (source, device) -> cupy.RawModule
_kernels: dict[tuple[str, str, int], Any] = {}  # (source, name, device) -> cupy.RawKernel
_opted_in: dict[tuple[int, int], int] = {}  # (id(kernel), device) -> dynamic shared bytes allowed
_alive: list[Any] = []  # kernels named in _opted_in, kept alive so their ids stay theirs


def _cupy() -> Any:
    import cupy  # the optional dependency: only here, never at module load

    return cupy


def kernel(source: str, name: str) -> Any:
    """The compiled kernel ``name`` of ``gpu/kernels/<source>`` for the current CUDA device.

    ``name`` is an ``extern "C"`` kernel of the source or one of the template expressions listed in
    ``gpu.kernels.NAME_EXPRESSIONS[source]``. The source is compiled once per process and
    device (``cupy.RawModule`` with ``-std=c++17`` and the kernels folder on the include path);
    modules and kernels are cached. A ``cupy.RawKernel`` also compiles itself for another device on
    its first launch there, so a kernel fetched on one device may be launched on any.
    """
    if source not in NAME_EXPRESSIONS:
        raise ValueError(f"source must be one of {sorted(NAME_EXPRESSIONS)}, got source={source!r}")
    cupy = _cupy()
    device = cupy.cuda.runtime.getDevice()
    key = (source, name, device)
    found = _kernels.get(key)
    if found is not None:
        return found
    with _lock:
        module = _modules.get((source, device))
        if module is None:
            module = cupy.RawModule(
                code=_read_source(source),
                options=("-std=c++17", f"-I{KERNELS}"),
                name_expressions=NAME_EXPRESSIONS[source] or None,
            )
            _modules[(source, device)] = module
        _kernels[key] = module.get_function(name)
        return _kernels[key]


class _TorchStream:
    """The CUDA stream protocol (``__cuda_stream__``) over a torch stream, for
    ``cupy.cuda.Stream.from_external``; it keeps the torch stream alive while CuPy holds it."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, int(self.stream.cuda_stream))


def _stream(cupy: Any, device: torch.device) -> Any:
    """torch's current stream on ``device`` as a CuPy stream; called under that device, every
    launch (a stream cached once goes stale when the caller switches streams)."""
    wrapped = _TorchStream(torch.cuda.current_stream(device))
    if hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(wrapped)
    # CuPy < 14 has no from_external; ExternalStream is its (since deprecated) equivalent
    return cupy.cuda.ExternalStream(wrapped.__cuda_stream__()[1], device.index)


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
