// Ray/box, Morton codes, occupancy lookups and one marching step: the math of reference.py, op for op.
// Every float operation happens in the same order as in the reference (and builds disable fused
// multiply-add), so the marcher takes the same branches on every backend.
#pragma once
#include <cmath>

#include "common.h"

namespace stk {

constexpr int MAX_CASCADES = 8;  // geometry.MAX_CASCADES
constexpr float RCP_EPS = 1e-15f;
constexpr float MISS = 1e10f;

// Unpacked geometry.MarchSpec (see MarchSpec.packed for the layout).
struct MarchConsts {
  float box_lo[3], box_hi[3], center[3], inv_half0[3];
  float inv_cell0, dt_gamma, dt_min, dt_max;
  float lo[MAX_CASCADES][3], cell[MAX_CASCADES][3], inv_cell[MAX_CASCADES][3];
  int H, C, max_samples;
};

inline MarchConsts unpack_march(const float* p, int H, int C, int max_samples) {
  MarchConsts k{};
  for (int i = 0; i < 3; ++i) {
    k.box_lo[i] = p[i];
    k.box_hi[i] = p[3 + i];
    k.center[i] = p[6 + i];
    k.inv_half0[i] = p[9 + i];
  }
  k.inv_cell0 = p[12];
  k.dt_gamma = p[13];
  k.dt_min = p[14];
  k.dt_max = p[15];
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < 3; ++i) {
      k.lo[c][i] = p[16 + 9 * c + i];
      k.cell[c][i] = p[16 + 9 * c + 3 + i];
      k.inv_cell[c][i] = p[16 + 9 * c + 6 + i];
    }
  k.H = H;
  k.C = C;
  k.max_samples = max_samples;
  return k;
}

// 1 / d, away from zero, with the sign of (d >= 0) so a zero direction never gives NaN.
HD float safe_rcp(float d) { return 1.0f / (d >= 0.0f ? maxf(d, RCP_EPS) : minf(d, -RCP_EPS)); }

// Slab test; nears are at least min_near; misses get near = far = MISS.
HD void near_far(const float* o, const float* d, const float* box, float min_near, float& near, float& far) {
  near = -INFINITY;
  far = INFINITY;
  for (int i = 0; i < 3; ++i) {
    const float rd = safe_rcp(d[i]);
    const float t1 = (box[i] - o[i]) * rd;
    const float t2 = (box[3 + i] - o[i]) * rd;
    near = maxf(near, minf(t1, t2));
    far = minf(far, maxf(t1, t2));
  }
  near = maxf(near, min_near);
  if (near > far) near = far = MISS;
}

HD uint32_t expand_bits(uint32_t v) {
  v &= 0x3FFu;
  v = (v * 0x00010001u) & 0xFF0000FFu;
  v = (v * 0x00000101u) & 0x0F00F00Fu;
  v = (v * 0x00000011u) & 0xC30C30C3u;
  v = (v * 0x00000005u) & 0x49249249u;
  return v;
}

HD uint32_t compact_bits(uint32_t v) {
  v &= 0x49249249u;
  v = (v | (v >> 2)) & 0xC30C30C3u;
  v = (v | (v >> 4)) & 0x0F00F00Fu;
  v = (v | (v >> 8)) & 0xFF0000FFu;
  v = (v | (v >> 16)) & 0x0000FFFFu;
  return v;
}

HD uint32_t morton3D(uint32_t x, uint32_t y, uint32_t z) {
  return expand_bits(x) | (expand_bits(y) << 1) | (expand_bits(z) << 2);
}

// Number of k in [0, C-2] with m >= 2^k: the cascade whose box (or cell) first holds m.
HD int level_from(float m, int C) {
  int level = 0;
  while (level < C - 1 && m >= (float)(1u << level)) ++level;
  return level;
}

HD float step_size(const MarchConsts& k, float t) { return clampf(t * k.dt_gamma, k.dt_min, k.dt_max); }

// One step at t. Occupied cell: fills x (clamped into the box) and dt, returns true; the caller
// records the sample and adds dt to t. Empty cell: moves t past the cell's exit on the step grid.
HD bool march_step(const MarchConsts& k, const uint8_t* bitfield, const float* o, const float* d,
                   const float* rd, float& t, float* x, float& dt) {
  for (int i = 0; i < 3; ++i) x[i] = minf(maxf(o[i] + t * d[i], k.box_lo[i]), k.box_hi[i]);
  dt = step_size(k, t);
  float m = 0.0f;
  for (int i = 0; i < 3; ++i) m = maxf(m, fabsf(x[i] - k.center[i]) * k.inv_half0[i]);
  const int lp = level_from(m, k.C), ld = level_from(dt * k.inv_cell0, k.C);
  const int level = lp > ld ? lp : ld;
  int n[3];
  for (int i = 0; i < 3; ++i) n[i] = clampi((int)((x[i] - k.lo[level][i]) * k.inv_cell[level][i]), 0, k.H - 1);
  const uint32_t index = (uint32_t)level * (uint32_t)(k.H * k.H * k.H) + morton3D(n[0], n[1], n[2]);
  if (bitfield[index >> 3] & (1u << (index & 7u))) return true;
  float tmin = INFINITY;
  for (int i = 0; i < 3; ++i) {
    const float side = d[i] >= 0.0f ? 1.0f : 0.0f;
    const float bound = k.lo[level][i] + ((float)n[i] + side) * k.cell[level][i];
    tmin = minf(tmin, (bound - x[i]) * rd[i]);
  }
  const float target = t + maxf(tmin, 0.0f);
  do {
    t = t + step_size(k, t);
  } while (t < target);
  return false;
}

// March one ray from t until far or max_count samples. With out_* null it only counts.
HD int march_ray(const MarchConsts& k, const uint8_t* bitfield, const float* o, const float* d, float t,
                 float far, int max_count, float* out_xyz, float* out_dir, float* out_ts) {
  float rd[3] = {safe_rcp(d[0]), safe_rcp(d[1]), safe_rcp(d[2])};
  float x[3], dt;
  int count = 0;
  while (t < far && count < max_count) {
    if (march_step(k, bitfield, o, d, rd, t, x, dt)) {
      if (out_xyz) {
        for (int i = 0; i < 3; ++i) {
          out_xyz[3 * count + i] = x[i];
          out_dir[3 * count + i] = d[i];
        }
        out_ts[2 * count] = t;
        out_ts[2 * count + 1] = dt;
      }
      ++count;
      t = t + dt;
    }
  }
  return count;
}

HD float perturbed_start(const MarchConsts& k, float t, const float* noise, int i) {
  return noise ? t + step_size(k, t) * noise[i] : t;
}

}  // namespace stk
