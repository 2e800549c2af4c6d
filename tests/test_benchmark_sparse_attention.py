"""benchmarks/sparse_attention.py: the patterns it times exist at both sizes, and without a CUDA
device it says why and exits with status 2 instead of failing halfway (it times only on a GPU;
tests/gpu and a run of ``--check`` on a GPU check its numbers' correctness)."""

from __future__ import annotations

import pytest
import torch
from bench_scripts import load_script, run_script


@pytest.mark.parametrize("n", [4096, 16384])
def test_the_patterns(n):
    bench = load_script("sparse_attention")
    for name in bench.PATTERNS:
        assert bench.pattern(name, n).n == n
    assert bench.pattern("local", n).n == n


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("args", [(), ("--check",)])
def test_without_a_gpu_it_exits_with_a_clear_message(args):
    done = run_script("sparse_attention", *args)
    assert done.returncode == 2
    assert "needs a CUDA GPU with CuPy: no CUDA device" in done.stderr
    assert done.stdout == ""
