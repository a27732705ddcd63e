// Shared by the CPU (.cpp) and CUDA (.cu) builds: one definition of the per-element math.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define HD __host__ __device__ __forceinline__
#else
#define HD inline
#endif

namespace stk {

// fminf / fmaxf. On the GPU the intrinsics. On the CPU the same results written inline: gcc keeps
// fminf / fmaxf as libm calls (their NaN rule has no single SSE instruction), and the marcher makes
// several per step. Same rule as libm: a NaN operand gives the other one; equal operands (+0 and -0)
// give the second, as x86 minss / maxss and glibc do.
#ifdef __CUDACC__
HD float minf(float a, float b) { return fminf(a, b); }
HD float maxf(float a, float b) { return fmaxf(a, b); }
#else
inline float minf(float a, float b) { return (a < b || b != b) ? a : b; }
inline float maxf(float a, float b) { return (a > b || b != b) ? a : b; }
#endif

HD float clampf(float v, float lo, float hi) { return minf(maxf(v, lo), hi); }
HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace stk
