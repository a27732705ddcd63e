// Shared by the CPU (.cpp) and CUDA (.cu) builds: one definition of the per-element math.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define HD __host__ __device__ __forceinline__
#else
#define HD inline
#endif

namespace stk {

HD float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }
HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace stk
