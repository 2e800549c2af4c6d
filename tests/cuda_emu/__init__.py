"""Run the CUDA kernels of ``gpu/kernels/*.cu`` on the CPU: compile them with the system C++
compiler and the shim ``cuda_emu.h``, load the result with ctypes, launch like CuPy.

>>> import numpy as np
>>> mod = load(KERNELS / "reduce.cu")
>>> a, out = np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(2, np.float32)
>>> mod.get_function("row_dot_f32")((1,), (32, 2), (a, a, out, np.int32(2), np.int32(3)))
>>> out.tolist()  # the dot product of each row with itself
[5.0, 50.0]

``load(source, name_expressions=...)`` mirrors ``cupy.RawModule(code, name_expressions=...)``: the
``extern "C" __global__`` kernels of the file are found by name, template instantiations are
asked for by expression (``"sparse_fwd<64, 32>"``). A kernel is called with a grid, a block, the
argument tuple and ``shared_mem`` (dynamic shared memory bytes), as a ``cupy.RawKernel`` is;
pointers take numpy arrays or CPU torch tensors of the parameter's element type, scalars take
numpy scalars of exactly the parameter's type (``numpy.int32``, ``numpy.float32``), the
convention the CuPy launchers follow. ``seed`` (not in CuPy) changes the order in which the fibers
of a block run between synchronisation points: run a kernel under several seeds to expose a
missing ``__syncthreads``.

Builds are cached in a temporary folder keyed by a hash of every input (shim, sources, headers
next to the source, flags, compiler version); ``CUDA_EMU_CACHE`` overrides the folder, ``CXX`` the
compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KERNELS", "EmuError", "EmuKernel", "EmuModule", "extern_c_kernels", "load"]

HERE = Path(__file__).resolve().parent
SHIM = HERE / "cuda_emu.h"
INCLUDE = HERE / "include"
KERNELS = HERE.parents[1] / "gpu" / "kernels"
FLAGS = (
    "-std=c++17",
    "-O1",
    "-shared",
    "-fPIC",
    "-Wall",
    "-Wno-unknown-pragmas",  # #pragma unroll
    "-Wno-unused-function",
    "-Wno-unused-variable",
)

_SCALARS = {
    "i8": (ctypes.c_int8, np.int8),
    "u8": (ctypes.c_uint8, np.uint8),
    "i16": (ctypes.c_int16, np.int16),
    "u16": (ctypes.c_uint16, np.uint16),
    "i32": (ctypes.c_int32, np.int32),
    "u32": (ctypes.c_uint32, np.uint32),
    "i64": (ctypes.c_int64, np.int64),
    "u64": (ctypes.c_uint64, np.uint64),
    "f32": (ctypes.c_float, np.float32),
    "f64": (ctypes.c_double, np.float64),
    "b8": (ctypes.c_bool, np.bool_),
}
_POINTEES = {  # element type code -> accepted numpy dtypes and torch dtype names
    "f32": ({np.dtype(np.float32)}, {"float32"}),
    "f64": ({np.dtype(np.float64)}, {"float64"}),
    "f16": ({np.dtype(np.float16)}, {"float16"}),
    "bf16": ({np.dtype(np.uint16)}, {"bfloat16"}),  # numpy has no bfloat16: raw bits as uint16
    "i8": ({np.dtype(np.int8)}, {"int8"}),
    "u8": ({np.dtype(np.uint8)}, {"uint8", "bool"}),
    "b8": ({np.dtype(np.bool_)}, {"bool"}),
    "i16": ({np.dtype(np.int16)}, {"int16"}),
    "u16": ({np.dtype(np.uint16)}, {"uint16"}),
    "i32": ({np.dtype(np.int32)}, {"int32"}),
    "u32": ({np.dtype(np.uint32), np.dtype(np.int32)}, {"int32", "uint32"}),
    "i64": ({np.dtype(np.int64)}, {"int64"}),
    "u64": ({np.dtype(np.uint64)}, {"uint64"}),
}
_BOUNDS = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
_ENTRY = re.compile(rf'extern\s+"C"\s+__global__\s+{_BOUNDS}void\s+{_BOUNDS}(\w+)\s*\(')


def extern_c_kernels(text: str) -> list[str]:
    """The names of the ``extern "C" __global__`` kernels a CUDA source declares."""
    return _ENTRY.findall(text)


class EmuError(RuntimeError):
    """A build or a launch failed; the message is the compiler's or the emulator's."""


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise EmuError(f"no C++ compiler {cxx!r} on PATH (set CXX)")
    return cxx


def _cache_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"flowgraph-cuda-emu-{os.getuid()}"
    path = Path(os.environ.get("CUDA_EMU_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wrapper(source: Path, names: list[str]) -> str:
    lines = [f'#include "{source}"', 'extern "C" {']
    for i, name in enumerate(names):
        lines += [
            f"int emu_launch_{i}(const unsigned* grid, const unsigned* block,",
            "    unsigned long long shared_bytes, unsigned long long seed, void** args) {",
            f"  return ::cuda_emu::launch_kernel(&{name}, grid, block, shared_bytes, seed, args);",
            "}",
            f"const char* emu_signature_{i}() {{ return ::cuda_emu::signature(&{name}); }}",
        ]
    lines += [
        "const char* emu_last_error() { return ::cuda_emu::rt().error.c_str(); }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def load(
    source: str | Path, name_expressions: tuple[str, ...] | list[str] = (), *, extra_flags=()
) -> EmuModule:
    """Compile ``source`` for the emulator (or reuse a cached build) and load it."""
    source = Path(source).resolve()
    text = source.read_text(encoding="utf-8")
    names = list(dict.fromkeys([*extern_c_kernels(text), *name_expressions]))
    if not names:
        raise EmuError(f'{source} declares no extern "C" __global__ kernel and none was asked for')
    wrapper = _wrapper(source, names)
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    flags = [
        *FLAGS,
        *extra_flags,
        "-include",
        str(SHIM),
        "-I",
        str(INCLUDE),
        "-I",
        str(source.parent),
    ]
    digest = hashlib.sha256()
    inputs = [SHIM, *sorted(INCLUDE.iterdir()), source]
    inputs += sorted(p for p in source.parent.iterdir() if p.suffix in (".cuh", ".h"))
    for path in inputs:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join([wrapper, version, *flags]).encode())
    lib = _cache_dir() / f"{source.stem}-{digest.hexdigest()[:20]}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            cpp = Path(tmp) / "wrapper.cpp"
            cpp.write_text(wrapper, encoding="utf-8")
            out = Path(tmp) / lib.name
            done = subprocess.run(
                [cxx, *flags, str(cpp), "-o", str(out)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise EmuError(f"compiling {source.name} for the emulator failed:\n{done.stderr}")
            os.replace(out, lib)  # atomic: a concurrent build of the same key is harmless
    return EmuModule(lib, names, source)


class EmuModule:
    """A loaded emulator build: ``get_function(name)`` as on a ``cupy.RawModule``."""

    def __init__(self, lib: Path, names: list[str], source: Path) -> None:
        self.path = lib
        self.source = source
        self._lib = ctypes.CDLL(str(lib))
        self._lib.emu_last_error.restype = ctypes.c_char_p
        self._names = names

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def get_function(self, name: str) -> EmuKernel:
        if name not in self._names:
            raise EmuError(f"{self.source.name} has no kernel {name!r}; it has {self._names}")
        i = self._names.index(name)
        launch = getattr(self._lib, f"emu_launch_{i}")
        launch.restype = ctypes.c_int
        launch.argtypes = [
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_ulonglong,
            ctypes.c_ulonglong,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        signature = getattr(self._lib, f"emu_signature_{i}")
        signature.restype = ctypes.c_char_p
        params = [p for p in signature().decode().split(",") if p]
        return EmuKernel(name, params, launch, self._lib.emu_last_error)


def _dims(name: str, value: Any) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(v, (int, np.integer)) for v in dims):
        raise TypeError(f"{name} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    return (*map(int, dims), *(1,) * (3 - len(dims)))


class EmuKernel:
    """One kernel: ``kernel(grid, block, args, shared_mem=0, seed=0)``."""

    def __init__(self, name: str, params: list[str], launch: Any, last_error: Any) -> None:
        self.name = name
        self.params = params
        self._launch = launch
        self._last_error = last_error

    def _pack(self, i: int, code: str, arg: Any) -> tuple[Any, Any]:
        """The ctypes value holding argument i, and the object it keeps alive."""
        where = f"{self.name} argument {i} ({code})"
        if code.startswith("*"):
            if arg is None:
                return ctypes.c_void_p(0), None
            if isinstance(arg, np.ndarray):
                ok_numpy, _ = _POINTEES.get(code[1:], (set(), set()))
                if code != "*v" and arg.dtype not in ok_numpy:
                    raise TypeError(f"{where} needs {code[1:]} elements, got a {arg.dtype} array")
                if not arg.flags.c_contiguous:
                    raise ValueError(f"{where}: the array must be C-contiguous")
                return ctypes.c_void_p(arg.ctypes.data), arg
            if type(arg).__module__.startswith("torch"):
                _, ok_torch = _POINTEES.get(code[1:], (set(), set()))
                dtype = str(arg.dtype).removeprefix("torch.")
                if code != "*v" and dtype not in ok_torch:
                    raise TypeError(f"{where} needs {code[1:]} elements, got a {dtype} tensor")
                if arg.device.type != "cpu" or not arg.is_contiguous():
                    raise ValueError(f"{where}: the tensor must be on the CPU and contiguous")
                return ctypes.c_void_p(arg.data_ptr()), arg
            raise TypeError(f"{where} takes a numpy array or a CPU torch tensor, got {arg!r}")
        ctype, dtype = _SCALARS[code]
        if not isinstance(arg, np.generic) or arg.dtype != dtype:
            raise TypeError(
                f"{where} takes a numpy.{np.dtype(dtype).name} scalar (as with CuPy), got {arg!r}"
                f" ({type(arg).__name__})"
            )
        return ctype(arg.item()), None

    def __call__(
        self, grid: Any, block: Any, args: tuple, *, shared_mem: int = 0, seed: int = 0
    ) -> None:
        if len(args) != len(self.params):
            raise TypeError(
                f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)}), "
                f"got {len(args)}"
            )
        packed = [
            self._pack(i, c, a) for i, (c, a) in enumerate(zip(self.params, args, strict=True))
        ]
        values = [v for v, _ in packed]
        argv = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values]
        )
        g = (ctypes.c_uint * 3)(*_dims("grid", grid))
        b = (ctypes.c_uint * 3)(*_dims("block", block))
        if self._launch(g, b, int(shared_mem), int(seed), argv) != 0:
            raise EmuError(f"{self.name}: {self._last_error().decode()}")
