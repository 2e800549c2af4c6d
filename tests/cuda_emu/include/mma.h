// Stand-in for the CUDA toolkit header <mma.h> (nvcuda::wmma) under the CPU emulator: everything
// the kernels may use from it is in cuda_emu.h.
#pragma once
#include "../cuda_emu.h"
