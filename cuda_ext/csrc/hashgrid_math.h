// Multi-resolution hash grid: lattice index, forward and backward of one (point, level).
#pragma once
#include <cmath>

#include "common.h"

namespace stk {

constexpr int MAX_LEVELS = 32;

// geometry.GridSpec, passed by value to kernels.
struct GridLevels {
  int L, C;
  float shift;
  float scale[MAX_LEVELS];
  int verts[MAX_LEVELS];
  bool dense[MAX_LEVELS];  // verts^D <= rows: stored without hashing
  int offset[MAX_LEVELS + 1];
};

// Row (within the level) of lattice corner c: dense where the lattice fits the level's rows, else hashed
// (then rows is 2^log2_hashmap_size, so the modulo is a mask). Dense: in the ngp layout the index is
// already < rows; in the tcnn layout a far-edge corner (c == verts) wraps as tcnn's `index % rows` does,
// and one subtraction is that modulo: c <= verts gives idx <= verts * (verts^D - 1) / (verts - 1) < 2 rows.
template <int D>
HD uint32_t grid_index(const uint32_t* c, const GridLevels& g, int level) {
  const uint32_t v = (uint32_t)g.verts[level];
  const uint32_t rows = (uint32_t)(g.offset[level + 1] - g.offset[level]);
  if (g.dense[level]) {
    uint32_t idx = c[0], stride = 1;
    for (int d = 1; d < D; ++d) {
      stride *= v;
      idx += c[d] * stride;
    }
    return idx < rows ? idx : idx - rows;
  }
  const uint32_t primes[3] = {1u, 2654435761u, 805459861u};
  uint32_t idx = c[0] * primes[0];
  for (int d = 1; d < D; ++d) idx ^= c[d] * primes[d];
  return idx & (rows - 1u);
}

// Lattice cell of x at this level: base corner and fractional position.
template <int D>
HD void grid_locate(const float* x, const GridLevels& g, int level, uint32_t* base, float* frac) {
  for (int d = 0; d < D; ++d) {
    const float pos = x[d] * g.scale[level] + g.shift;
    const float fl = floorf(pos);
    frac[d] = pos - fl;
    base[d] = (uint32_t)fl;
  }
}

template <int D>
HD float corner_weight(int corner, const float* frac) {
  float w = 1.0f;
  for (int d = 0; d < D; ++d) w = w * (((corner >> d) & 1) ? frac[d] : 1.0f - frac[d]);
  return w;
}

template <int D>
HD int64_t corner_row(int corner, const uint32_t* base, const GridLevels& g, int level) {
  uint32_t c[D];
  for (int d = 0; d < D; ++d) c[d] = base[d] + ((corner >> d) & 1);
  return (int64_t)g.offset[level] + grid_index<D>(c, g, level);
}

// The 2^D corners of x at this level: table rows and interpolation weights (for the table gradient).
template <int D>
HD void hash_level_corners(const float* x, const GridLevels& g, int level, int64_t* rows, float* weights) {
  uint32_t base[D];
  float frac[D];
  grid_locate<D>(x, g, level, base, frac);
  for (int corner = 0; corner < (1 << D); ++corner) {
    weights[corner] = corner_weight<D>(corner, frac);
    rows[corner] = corner_row<D>(corner, base, g, level);
  }
}

// out[0..C) = interpolated features of x at this level.
template <int D, typename scalar_t>
HD void hash_level_forward(const float* x, const scalar_t* emb, const GridLevels& g, int level, float* out) {
  uint32_t base[D];
  float frac[D];
  grid_locate<D>(x, g, level, base, frac);
  for (int c = 0; c < g.C; ++c) out[c] = 0.0f;
  for (int corner = 0; corner < (1 << D); ++corner) {
    const float w = corner_weight<D>(corner, frac);
    const int64_t row = corner_row<D>(corner, base, g, level);
    for (int c = 0; c < g.C; ++c) out[c] = out[c] + w * static_cast<float>(emb[row * g.C + c]);
  }
}

// d(sum_c grad[c] * out[c]) / dx for this level, added into gx[0..D).
template <int D, typename scalar_t>
HD void hash_level_input_grad(const float* x, const scalar_t* emb, const GridLevels& g, int level,
                              const float* grad, float* gx) {
  uint32_t base[D];
  float frac[D];
  grid_locate<D>(x, g, level, base, frac);
  for (int corner = 0; corner < (1 << D); ++corner) {
    const int64_t row = corner_row<D>(corner, base, g, level);
    float dot = 0.0f;
    for (int c = 0; c < g.C; ++c) dot += grad[c] * static_cast<float>(emb[row * g.C + c]);
    for (int d = 0; d < D; ++d) {
      float dw = ((corner >> d) & 1) ? 1.0f : -1.0f;
      for (int k = 0; k < D; ++k)
        if (k != d) dw *= ((corner >> k) & 1) ? frac[k] : 1.0f - frac[k];
      gx[d] += g.scale[level] * dw * dot;
    }
  }
}

}  // namespace stk
