// Stand-in for the CUDA toolkit header <cuda_fp16.h> under the CPU emulator: everything the kernels
// may use from it is in cuda_emu.h.
#pragma once
#include "../cuda_emu.h"
