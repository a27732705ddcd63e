// Which copy of the CPU kernels' hot loops runs: plain x86-64, or AVX2 where the CPU has it. The build stays
// portable (no -march): the AVX2 copies are compiled with gcc's target attribute and chosen at run time.
#pragma once
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#define STK_HAVE_AVX2_CLONE 1
#define STK_INLINE inline __attribute__((always_inline))
#else
#define STK_HAVE_AVX2_CLONE 0
#define STK_INLINE inline
#endif

namespace stk::cpu {

// AVX2 where the CPU has it, unless SYNCTALK_CPU_ISA=base (how the tests run the plain copy too).
inline bool use_avx2() {
#if STK_HAVE_AVX2_CLONE
  const char* isa = std::getenv("SYNCTALK_CPU_ISA");
  if (isa && std::strcmp(isa, "base") == 0) return false;
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

}  // namespace stk::cpu
