// Launch helpers shared by the .cu files. c10 headers only: ATen/cuda/CUDAContext.h pulls in cuSPARSE /
// cuBLAS headers that a bare CUDA toolkit (as on CI) does not ship.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace stk::cuda {

constexpr int THREADS = 256;
inline unsigned blocks_for(int64_t n) { return (unsigned)((n + THREADS - 1) / THREADS); }
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
#define STK_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()

}  // namespace stk::cuda
