// The marchers (training and inference) with sixteen rays in flight: two groups of eight, one ray per AVX2 lane.
//
// Why: a ray's steps form one chain (each step's t comes from the last), so the scalar loop of
// march_math.h spends most of its time waiting on the latency of that chain; eight independent rays per
// instruction, and a second group to work on while the first waits, fill the core (measured on one thread,
// bench/kernels.py's 65,536 rays: the plain loop 115 ms, one group 42 ms, two 31 ms, four 35 ms).
// Each lane does march_step's float operations in its order (no fused multiply-add: the build has
// -ffp-contract=off and this code is compiled for AVX2 without FMA), so the samples are bit for bit those of
// the scalar loop, the torch reference and the CUDA kernel.
//
// A lane is in one of two states: "look up" (the checks of march_ray's loop, then march_step's occupancy
// test: an occupied cell records a sample and moves t by dt, an empty one sets the cell's exit as the target)
// or "skip" (one `t = t + step_size(t)` of march_step's do-while per iteration, until t reaches the target).
// When a lane's ray ends (t >= far or its sample budget taken) the lane takes the next ray. Where the rays
// come from and where their samples go is the job of a "rays" class: TrainRays (march_rays_train: a chunk's
// rays, samples kept per ray until the ray ends) and RoundRays (march_rays: one inference round's slots).
#pragma once
#include "isa.h"

#if STK_HAVE_AVX2_CLONE
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "../march_math.h"

#pragma GCC push_options
#pragma GCC target("avx2")

namespace stk::cpu::lanes {

constexpr int W = 8;       // float lanes of an AVX2 register: a group of rays in flight
constexpr int GROUPS = 2;  // groups in flight (see march)

using V = __m256;
using VI = __m256i;

// minf(maxf(v, lo), hi) for lo, hi not NaN: MAXPS / MINPS return their first operand exactly when
// maxf / minf do (and v is never NaN after it: a NaN v gives lo).
inline V clamp_v(V v, V lo, V hi) { return _mm256_min_ps(_mm256_max_ps(v, lo), hi); }

// step_size of march_math.h.
inline V step_v(V t, V gamma, V dt_min, V dt_max) { return clamp_v(_mm256_mul_ps(t, gamma), dt_min, dt_max); }

// level_from: the number of j in [0, C-2] with m >= 2^j (those j are a prefix, as in the loop).
inline VI level_v(V m, int C) {
  VI level = _mm256_setzero_si256();
  for (int j = 0; j < C - 1; ++j) {
    const V ge = _mm256_cmp_ps(m, _mm256_set1_ps((float)(1u << j)), _CMP_GE_OQ);
    level = _mm256_sub_epi32(level, _mm256_castps_si256(ge));  // a true lane is -1
  }
  return level;
}

inline VI expand_bits_v(VI v) {
  v = _mm256_and_si256(v, _mm256_set1_epi32(0x3FF));
  v = _mm256_and_si256(_mm256_mullo_epi32(v, _mm256_set1_epi32(0x00010001)), _mm256_set1_epi32((int)0xFF0000FFu));
  v = _mm256_and_si256(_mm256_mullo_epi32(v, _mm256_set1_epi32(0x00000101)), _mm256_set1_epi32(0x0F00F00F));
  v = _mm256_and_si256(_mm256_mullo_epi32(v, _mm256_set1_epi32(0x00000011)), _mm256_set1_epi32((int)0xC30C30C3u));
  v = _mm256_and_si256(_mm256_mullo_epi32(v, _mm256_set1_epi32(0x00000005)), _mm256_set1_epi32(0x49249249));
  return v;
}

// A per-cascade constant for each lane's level: one register holds the values of all (up to 8) cascades
// (with one cascade, every lane holds its value already).
template <bool ONE_CASCADE>
inline V per_level(V table, VI level) {
  return ONE_CASCADE ? table : _mm256_permutevar8x32_ps(table, level);
}

// One group's state. Each iteration loads it and stores it back (cheap: it stays in L1), which keeps the scalar
// code that records samples and swaps rays simple.
struct Lanes {
  alignas(32) float t[W], far[W], target[W], o[3][W], d[3][W], rd[3][W];
  alignas(32) int32_t count[W], live[W], skip[W];  // masks: -1 true, 0 false
  int64_t ray[W];

  // Lane j starts ray `id` (origin o, direction d) at t, as march_ray does.
  void start(int j, int64_t id, const float* o, const float* d, float t0, float far0) {
    ray[j] = id;
    live[j] = -1;
    skip[j] = count[j] = 0;
    t[j] = t0;
    far[j] = far0;
    target[j] = 0.0f;
    for (int a = 0; a < 3; ++a) {
      this->o[a][j] = o[a];
      this->d[a][j] = d[a];
      rd[a][j] = safe_rcp(d[a]);
    }
  }
  void idle(int j) {
    live[j] = skip[j] = count[j] = 0;
    t[j] = far[j] = target[j] = 0.0f;
    for (int a = 0; a < 3; ++a) o[a][j] = d[a][j] = rd[a][j] = 0.0f;
  }
};

// march_rays_train's rays [b, e) of one chunk. Each ray's (t, dt) pairs are appended to buf when it ends (one
// ray's samples together, rays in the order they end), the index of its first pair in buf goes to first[i]
// and its sample count to pr[2 * i + 1].
struct TrainRays {
  static constexpr bool WANTS_X = false;  // the sample positions are recomputed from t when written out
  const MarchConsts& k;
  const float *o, *d, *nears, *fars, *noise;
  int64_t next, e;
  int* pr;
  int64_t* first;
  std::vector<float>& buf;
  std::vector<float> stage;  // lane l's samples so far: stage[2 * max_samples * l ...]

  TrainRays(const MarchConsts& k, const float* o, const float* d, const float* nears, const float* fars,
            const float* noise, int64_t b, int64_t e, int* pr, int64_t* first, std::vector<float>& buf)
      : k(k), o(o), d(d), nears(nears), fars(fars), noise(noise), next(b), e(e), pr(pr), first(first), buf(buf),
        stage((size_t)GROUPS * W * 2 * k.max_samples) {}
  int max_count() const { return k.max_samples; }
  bool load(Lanes& s, int j) {
    if (next >= e) return false;
    const int64_t i = next++;
    s.start(j, i, o + 3 * i, d + 3 * i, perturbed_start(k, nears[i], noise, (int)i), fars[i]);
    return true;
  }
  void record(int lane, int64_t, int count, float t, float dt, const float*) {
    float* dst = stage.data() + (size_t)2 * k.max_samples * lane + 2 * count;
    dst[0] = t;
    dst[1] = dt;
  }
  void end(int lane, int64_t i, int count) {
    pr[2 * i + 1] = count;
    first[i] = (int64_t)(buf.size() / 2);
    const float* src = stage.data() + (size_t)2 * k.max_samples * lane;
    buf.insert(buf.end(), src, src + 2 * count);
  }
};

// One march_rays round, slots [b, e): slot n marches ray alive[n] (none if negative) from rays_t[n] for up to
// n_step samples, written to the slots' rows n * n_step + count (the rest stay zero).
struct RoundRays {
  static constexpr bool WANTS_X = true;
  const MarchConsts& k;
  const float *o, *d, *fars, *rays_t, *noise;
  const int* alive;
  int64_t next, e;
  int n_step;
  float *xyzs, *dirs, *ts;

  int max_count() const { return n_step; }
  bool load(Lanes& s, int j) {
    for (; next < e; ++next) {
      const int64_t n = next, id = alive[n];
      if (id < 0) continue;
      ++next;
      s.start(j, n, o + 3 * id, d + 3 * id, perturbed_start(k, rays_t[n], noise, (int)n), fars[id]);
      return true;
    }
    return false;
  }
  void record(int j, int64_t n, int count, float t, float dt, const float* x) {
    const int64_t row = n * n_step + count, id = alive[n];
    for (int a = 0; a < 3; ++a) {
      xyzs[3 * row + a] = x[a];
      dirs[3 * row + a] = d[3 * id + a];
    }
    ts[2 * row] = t;
    ts[2 * row + 1] = dt;
  }
  void end(int, int64_t, int) {}
};

// The march's constants, broadcast to every lane.
struct Consts {
  V gamma, dt_min, dt_max, inv_cell0, box_lo[3], box_hi[3], center[3], inv_half[3];
  V lo[3], cell[3], inv_cell[3];  // per cascade: entry c holds cascade c's value (see per_level)
  VI max_count, h_max, h3;
  int C;
  const int* words;  // the bitfield, 32 bits at a time

  Consts(const MarchConsts& k, const uint8_t* bitfield, int max_samples, int cascades) {
    gamma = _mm256_set1_ps(k.dt_gamma);
    dt_min = _mm256_set1_ps(k.dt_min);
    dt_max = _mm256_set1_ps(k.dt_max);
    inv_cell0 = _mm256_set1_ps(k.inv_cell0);
    for (int a = 0; a < 3; ++a) {
      box_lo[a] = _mm256_set1_ps(k.box_lo[a]);
      box_hi[a] = _mm256_set1_ps(k.box_hi[a]);
      center[a] = _mm256_set1_ps(k.center[a]);
      inv_half[a] = _mm256_set1_ps(k.inv_half0[a]);
      alignas(32) float tl[W], tc[W], ti[W];  // with one cascade every entry holds its value
      for (int c = 0; c < W; ++c) {
        const int cc = c < cascades ? c : cascades - 1;
        tl[c] = k.lo[cc][a];
        tc[c] = k.cell[cc][a];
        ti[c] = k.inv_cell[cc][a];
      }
      lo[a] = _mm256_load_ps(tl);
      cell[a] = _mm256_load_ps(tc);
      inv_cell[a] = _mm256_load_ps(ti);
    }
    max_count = _mm256_set1_epi32(max_samples);
    h_max = _mm256_set1_epi32(k.H - 1);
    h3 = _mm256_set1_epi32(k.H * k.H * k.H);
    C = cascades;
    words = reinterpret_cast<const int*>(bitfield);
  }
};

// One iteration for the eight lanes of group g (lanes g * W ...): a skipping lane takes one step of
// march_step's do-while; every other live lane does march_ray's loop test and, if its ray goes on, one
// march_step look-up (an occupied cell is recorded). Returns the mask of the lanes whose ray ended.
template <bool ONE_CASCADE, class Rays>
STK_INLINE int advance(const Consts& c, Lanes& s, int g, Rays& rays) {
  const V zero = _mm256_setzero_ps();
  V t = _mm256_load_ps(s.t), target = _mm256_load_ps(s.target);
  VI count = _mm256_load_si256((const VI*)s.count);
  const V live = _mm256_castsi256_ps(_mm256_load_si256((const VI*)s.live));
  const V skipping = _mm256_castsi256_ps(_mm256_load_si256((const VI*)s.skip));
  t = _mm256_blendv_ps(t, _mm256_add_ps(t, step_v(t, c.gamma, c.dt_min, c.dt_max)), skipping);
  V skip = _mm256_and_ps(skipping, _mm256_cmp_ps(t, target, _CMP_LT_OQ));
  // lanes that reached their target just now look up in this same iteration
  const V look = _mm256_andnot_ps(skip, live);
  const V go = _mm256_and_ps(_mm256_and_ps(look, _mm256_cmp_ps(t, _mm256_load_ps(s.far), _CMP_LT_OQ)),
                             _mm256_castsi256_ps(_mm256_cmpgt_epi32(c.max_count, count)));
  const int ended = _mm256_movemask_ps(_mm256_andnot_ps(go, look));
  if (_mm256_movemask_ps(go)) {
    V x[3], dd[3];
    for (int a = 0; a < 3; ++a) {
      dd[a] = _mm256_load_ps(s.d[a]);
      x[a] = clamp_v(_mm256_add_ps(_mm256_load_ps(s.o[a]), _mm256_mul_ps(t, dd[a])), c.box_lo[a], c.box_hi[a]);
    }
    const V dt = step_v(t, c.gamma, c.dt_min, c.dt_max);
    V m = zero;  // maxf(m, v) is MAXPS(v, m): m is never NaN
    for (int a = 0; a < 3; ++a) {
      const V dist = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(x[a], c.center[a]));  // fabsf
      m = _mm256_max_ps(_mm256_mul_ps(dist, c.inv_half[a]), m);
    }
    const VI level = ONE_CASCADE ? _mm256_setzero_si256()
                                 : _mm256_max_epi32(level_v(m, c.C), level_v(_mm256_mul_ps(dt, c.inv_cell0), c.C));
    VI n[3];
    V lo_l[3], cell_l[3];
    for (int a = 0; a < 3; ++a) {
      lo_l[a] = per_level<ONE_CASCADE>(c.lo[a], level);
      cell_l[a] = per_level<ONE_CASCADE>(c.cell[a], level);
      const V u = _mm256_mul_ps(_mm256_sub_ps(x[a], lo_l[a]), per_level<ONE_CASCADE>(c.inv_cell[a], level));
      n[a] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(u), _mm256_setzero_si256()), c.h_max);
    }
    const VI morton = _mm256_or_si256(
        expand_bits_v(n[0]),
        _mm256_or_si256(_mm256_slli_epi32(expand_bits_v(n[1]), 1), _mm256_slli_epi32(expand_bits_v(n[2]), 2)));
    const VI index = _mm256_add_epi32(_mm256_mullo_epi32(level, c.h3), morton);
    // only the looking-up lanes read the bitfield (an idle lane's index is not computed from a ray)
    const VI word = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), c.words, _mm256_srli_epi32(index, 5),
                                                _mm256_castps_si256(go), 4);
    const VI bit0 = _mm256_set1_epi32(1);
    const VI bit = _mm256_and_si256(_mm256_srlv_epi32(word, _mm256_and_si256(index, _mm256_set1_epi32(31))), bit0);
    const V hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(bit, bit0));
    const V occupied = _mm256_and_ps(go, hit), empty = _mm256_andnot_ps(hit, go);
    if (int om = _mm256_movemask_ps(occupied)) {  // record each occupied lane's sample
      alignas(32) float tv[W], dv[W], xv[3][W];
      alignas(32) int32_t cv[W];
      _mm256_store_ps(tv, t);
      _mm256_store_ps(dv, dt);
      _mm256_store_si256((VI*)cv, count);
      if (Rays::WANTS_X)
        for (int a = 0; a < 3; ++a) _mm256_store_ps(xv[a], x[a]);
      for (; om; om &= om - 1) {
        const int j = __builtin_ctz(om);
        const float xj[3] = {xv[0][j], xv[1][j], xv[2][j]};
        rays.record(g * W + j, s.ray[j], cv[j], tv[j], dv[j], xj);
      }
      count = _mm256_sub_epi32(count, _mm256_castps_si256(occupied));
      t = _mm256_blendv_ps(t, _mm256_add_ps(t, dt), occupied);
    }
    if (_mm256_movemask_ps(empty)) {  // the cell's exit along the ray, then skip to it
      V tmin = _mm256_set1_ps(INFINITY);  // minf(tmin, v) as MINPS(v, tmin): equal only for +-0, made +0 below
      for (int a = 0; a < 3; ++a) {
        const V side = _mm256_and_ps(_mm256_cmp_ps(dd[a], zero, _CMP_GE_OQ), _mm256_set1_ps(1.0f));
        const V bound =
            _mm256_add_ps(lo_l[a], _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(n[a]), side), cell_l[a]));
        tmin = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(bound, x[a]), _mm256_load_ps(s.rd[a])), tmin);
      }
      target = _mm256_blendv_ps(target, _mm256_add_ps(t, _mm256_max_ps(tmin, zero)), empty);
      skip = _mm256_or_ps(skip, empty);
    }
  }
  _mm256_store_ps(s.t, t);
  _mm256_store_ps(s.target, target);
  _mm256_store_si256((VI*)s.count, count);
  _mm256_store_si256((VI*)s.skip, _mm256_castps_si256(skip));
  return ended;
}

// Marches every ray `rays` hands out, GROUPS * W at a time: while one group's step waits on its chain
// (t -> cell -> bitfield word -> t), the core works on the other's. The bitfield is read 32 bits at a time: its
// size in bytes must be a multiple of 4 (the callers check).
template <bool ONE_CASCADE, class Rays>
void march(const MarchConsts& k, const uint8_t* bitfield, Rays& rays) {
  const Consts c(k, bitfield, rays.max_count(), ONE_CASCADE ? 1 : k.C);
  Lanes s[GROUPS];
  bool live = false;
  for (int g = 0; g < GROUPS; ++g)
    for (int j = 0; j < W; ++j) {
      if (!rays.load(s[g], j)) s[g].idle(j);
      live |= s[g].live[j] != 0;
    }
  while (live) {
    int ended[GROUPS], any_ended = 0;
    for (int g = 0; g < GROUPS; ++g) any_ended |= ended[g] = advance<ONE_CASCADE>(c, s[g], g, rays);
    if (!any_ended) continue;
    live = false;
    for (int g = 0; g < GROUPS; ++g) {
      for (int em = ended[g]; em; em &= em - 1) {
        const int j = __builtin_ctz(em);
        rays.end(g * W + j, s[g].ray[j], s[g].count[j]);
        if (!rays.load(s[g], j)) s[g].idle(j);
      }
      for (int j = 0; j < W; ++j) live |= s[g].live[j] != 0;
    }
  }
}

}  // namespace stk::cpu::lanes

#pragma GCC pop_options
#endif  // STK_HAVE_AVX2_CLONE
