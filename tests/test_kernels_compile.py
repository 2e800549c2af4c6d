"""Every CUDA source in gpu/kernels/ compiles for the GPUs we target (sm_80, sm_90) with nvcc, with
warnings as errors, together with every template instantiation gpu.kernels.NAME_EXPRESSIONS lists,
and the cubin holds each kernel; every source and instantiation also builds for the CPU emulator.
Without nvcc the GPU half is skipped, unless CI=true, where a missing nvcc fails the run. Where
libnvrtc is found (the nvidia-cuda-nvrtc wheel, a dev dependency), NVRTC — CuPy's compiler —
also compiles the attention kernels and lowers their name expressions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cuda_emu import extern_c_kernels, load

from flowgraph.gpu.kernels import KERNELS, NAME_EXPRESSIONS

SOURCES = sorted(KERNELS.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")
needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None and os.environ.get("CI") != "true",
    reason="no nvcc on PATH (with CI=true this test runs and fails instead)",
)


def _mangled_prefix(expression: str) -> str:
    """The Itanium-mangled start of a kernel template instantiation with int arguments."""
    name, args = re.fullmatch(r"(\w+)<([^<>]*)>", expression.replace(" ", "")).groups()
    return f"_Z{len(name)}{name}I" + "".join(f"Li{int(a)}E" for a in args.split(",")) + "E"


def test_every_source_is_listed_and_declares_kernels():
    assert SOURCES, f"no .cu files under {KERNELS}"
    assert sorted(NAME_EXPRESSIONS) == [p.name for p in SOURCES]
    for source in SOURCES:
        assert extern_c_kernels(source.read_text(encoding="utf-8")) or NAME_EXPRESSIONS[source.name]
    assert _mangled_prefix("f<16, 32>") == "_Z1fILi16ELi32EE"


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source: Path, tmp_path: Path):
    expressions = NAME_EXPRESSIONS[source.name]
    unit = tmp_path / f"{source.stem}_all.cu"  # host references instantiate the templates
    unit.write_text(
        f'#include "{source}"\n'
        + "static void* const instantiate[] = {nullptr"
        + "".join(f", (void*)&{e}" for e in expressions)
        + "};\nvoid* fg_instantiated() { return (void*)instantiate; }\n"
    )
    # one nvcc per architecture, side by side: the big sources take a minute each
    runs = {}
    for arch in ARCHS:
        command = ["nvcc", "-std=c++17", "-cubin", f"-arch={arch}", "-Werror", "all-warnings"]
        command += ["-o", str(tmp_path / f"{source.stem}.{arch}.cubin"), str(unit)]
        runs[arch] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    names = extern_c_kernels(source.read_text(encoding="utf-8"))
    for arch, run in runs.items():
        _, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, f"nvcc -arch={arch} {source.name}:\n{stderr}"
        data = (tmp_path / f"{source.stem}.{arch}.cubin").read_bytes()
        missing = [name for name in names if name.encode() + b"\0" not in data]
        missing += [e for e in expressions if _mangled_prefix(e).encode() not in data]
        assert not missing, f"{source.name} for {arch} lacks the kernels {missing}"


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None and os.environ.get("CI") != "true",
    reason="no C++ compiler on PATH",
)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_emulator_builds(source: Path):
    module = load(source, NAME_EXPRESSIONS[source.name])
    assert module.names[len(module.names) - len(NAME_EXPRESSIONS[source.name]) :] == list(
        NAME_EXPRESSIONS[source.name]
    )
    for name in module.names:
        assert module.get_function(name).params, f"{name} has no parameters"


# --- NVRTC, the compiler CuPy uses ---------------------------------------------------------------
def _libnvrtc() -> Path | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel or the CUDA toolkit beside nvcc, if any."""
    roots = [Path(p) for p in sys.path if "site-packages" in p]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        roots.append(Path(nvcc).resolve().parents[1])
    for root in roots:
        for pattern in ("nvidia/cuda_nvrtc/lib/libnvrtc.so*", "lib64/libnvrtc.so*"):
            found = sorted(p for p in root.glob(pattern) if "alt" not in p.name)
            if found:
                return found[0]
    return None


def _cuda_include() -> Path | None:
    """The toolkit's include folder, looked for as CuPy looks for the toolkit (CUDA_PATH, then
    nvcc's folder, then /usr/local/cuda)."""
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")]
    roots += [str(Path(nvcc).resolve().parents[1]) if nvcc else None, "/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "include" / "mma.h").is_file():
            return Path(root) / "include"
    return None


NVRTC = _libnvrtc()
CUDA_INCLUDE = _cuda_include()


@pytest.mark.skipif(NVRTC is None, reason="no libnvrtc (pip install nvidia-cuda-nvrtc-cu12)")
@pytest.mark.skipif(CUDA_INCLUDE is None, reason="no CUDA toolkit headers")
@pytest.mark.parametrize(
    ("source", "instance"),
    [("sparse_attention.cu", "<32, 64>"), ("metric_attention.cu", "<64, 64>")],
)
def test_nvrtc_compiles_the_kernels_and_lowers_their_names(source: str, instance: str):
    """NVRTC — what cupy.RawModule runs — compiles each attention source with the options of
    gpu._cupy.kernel plus the toolkit's include folder (which CuPy adds itself: NVRTC has no
    <mma.h> or <cuda_bf16.h> built in), one instantiation of every kernel (fp32, fp16, bf16,
    forward and backward), and lowers every name expression to the mangled name the cubin
    holds."""
    import ctypes

    lib = ctypes.CDLL(str(NVRTC))
    expressions = [e for e in NAME_EXPRESSIONS[source] if e.endswith(instance)]
    assert len(expressions) == 6
    prog = ctypes.c_void_p()
    code = (KERNELS / source).read_bytes()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), code, source.encode(), 0, None, None) == 0
    for e in expressions:
        assert lib.nvrtcAddNameExpression(prog, e.encode()) == 0
    options = ["-std=c++17", f"-I{KERNELS}", f"-I{CUDA_INCLUDE}", "-arch=compute_90"]
    argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    done = lib.nvrtcCompileProgram(prog, len(options), argv)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert done == 0, log.value.decode()
    for e in expressions:
        lowered = ctypes.c_char_p()
        assert lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(lowered)) == 0
        assert lowered.value.decode().startswith(_mangled_prefix(e)), (e, lowered.value)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
