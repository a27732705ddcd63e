// CPU hash grid. The float operations are those of hashgrid_math.h, in the same order (results match the
// CUDA build and the reference bit for bit), rearranged for a CPU:
// - points go in blocks of BLOCK; a block's coordinates are copied once into one array per axis, then for
//   each level the corners' rows and weights of the whole block are computed in loops the compiler turns
//   into SIMD (locate), before the table is read or written row by row (gather / scatter);
// - dense and hashed levels are separate loops; level_dim is a template argument;
// - those loops are compiled twice, plain x86-64 and AVX2, and the AVX2 copy runs where the CPU has it
//   (the build itself stays portable: no -march);
// - forward: each thread takes a range of points; table gradient: (grid, level) units in parallel, each
//   owned by one thread: no atomics, and each row sums in point order (deterministic, whatever the thread
//   count). A gradient is read through its strides (an expanded or sliced one is not copied first).
// The tri-plane op encodes three 2D grids at once from x [N, 3] and writes the concatenated output directly.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "isa.h"
#include "ops.h"

namespace stk::cpu {

namespace {
constexpr int BLOCK = 256;
// Forward over several grids: each grid in turn over SUPER points, so one grid's tables stay in cache while
// the super-block's output rows (SUPER * width floats) do too.
constexpr int64_t SUPER = 4096;
constexpr int MAX_GRIDS = 3;
constexpr uint32_t PRIMES[3] = {1u, 2654435761u, 805459861u};

// One level's constants (GridLevels, per level).
struct Level {
  float scale, shift;
  uint32_t verts, rows;
  int64_t offset;
  bool dense;
};

inline Level level_of(const GridLevels& g, int l) {
  return {g.scale[l], g.shift, (uint32_t)g.verts[l], (uint32_t)(g.offset[l + 1] - g.offset[l]), g.offset[l],
          g.dense[l]};
}

// One grid of a call: where it reads point i's coordinates (x[i * stride + dims[d]], clamped to [0, 1] when
// asked: the tri-plane op clamps here what the wrappers otherwise clamp before the call, NaN kept), its table
// (and table gradient), and its first column in the output row.
template <int D>
struct Grid {
  const float* x;
  int64_t stride;
  int dims[D];
  bool clamp;
  const float* emb;
  float* gemb;
  int64_t col;
};

// Per-thread scratch of one block: coordinates per axis, then each corner's row (within the level) and weight.
template <int D>
struct Scratch {
  alignas(64) float p[D][BLOCK];
  alignas(64) uint32_t row[1 << D][BLOCK];
  alignas(64) float w[1 << D][BLOCK];
};

template <int D>
STK_INLINE void stage(const Grid<D>& gr, int64_t b, int n, Scratch<D>& s) {
  for (int d = 0; d < D; ++d) {
    const float* src = gr.x + b * gr.stride + gr.dims[d];
    float* dst = s.p[d];
    if (gr.clamp)
      for (int i = 0; i < n; ++i) {
        const float v = src[i * gr.stride];
        dst[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
      }
    else
      for (int i = 0; i < n; ++i) dst[i] = src[i * gr.stride];
  }
}

// grid_locate + corner_weight + corner_row of hashgrid_math.h for the 2^D corners of n staged points.
// floorf is written as a truncation and a correction (exact for |v| < 2^31) so that the loop vectorizes
// (the portable build has no SSE4.1 round instruction, and floorf would stay a libm call).
template <int D, bool DENSE>
STK_INLINE void locate(const Level& lv, int n, Scratch<D>& s) {
  const float scale = lv.scale, shift = lv.shift;
  const uint32_t verts = lv.verts, rows = lv.rows, mask = lv.rows - 1u;
  for (int i = 0; i < n; ++i) {
    uint32_t base[D];
    float frac[D];
#pragma GCC unroll 4
    for (int d = 0; d < D; ++d) {
      const float pos = s.p[d][i] * scale + shift;
      const float t = (float)(int32_t)pos;
      const float fl = t - (t > pos ? 1.0f : 0.0f);
      frac[d] = pos - fl;
      base[d] = (uint32_t)(int32_t)fl;
    }
#pragma GCC unroll 8
    for (int k = 0; k < (1 << D); ++k) {
      uint32_t idx;
      if (DENSE) {
        idx = base[0] + (uint32_t)(k & 1);
        uint32_t stride = 1;
#pragma GCC unroll 4
        for (int d = 1; d < D; ++d) {
          stride *= verts;
          idx += (base[d] + (uint32_t)((k >> d) & 1)) * stride;
        }
        idx -= idx < rows ? 0u : rows;
      } else {
        idx = (base[0] + (uint32_t)(k & 1)) * PRIMES[0];
#pragma GCC unroll 4
        for (int d = 1; d < D; ++d) idx ^= (base[d] + (uint32_t)((k >> d) & 1)) * PRIMES[d];
        idx &= mask;
      }
      float wk = 1.0f;
#pragma GCC unroll 4
      for (int d = 0; d < D; ++d) wk = wk * (((k >> d) & 1) ? frac[d] : 1.0f - frac[d]);
      s.row[k][i] = idx;
      s.w[k][i] = wk;
    }
  }
}

// out[(b + i) * width + c] = sum over corners (in corner order) of w * table row.
template <int D, int C>
STK_INLINE void gather(const Scratch<D>& s, int n, const float* emb, float* out, int64_t width) {
  for (int i = 0; i < n; ++i) {
    float acc[C];
    for (int c = 0; c < C; ++c) acc[c] = 0.0f;
    for (int k = 0; k < (1 << D); ++k) {
      const float* e = emb + (int64_t)s.row[k][i] * C;
      const float wk = s.w[k][i];
      for (int c = 0; c < C; ++c) acc[c] = acc[c] + wk * e[c];
    }
    for (int c = 0; c < C; ++c) out[i * width + c] = acc[c];
  }
}

// gemb row += w * grad, point by point in order (grad of point i, channel c: grad[i * gs0 + c * gs1]).
template <int D, int C>
STK_INLINE void scatter(const Scratch<D>& s, int n, const float* grad, int64_t gs0, int64_t gs1, float* gemb) {
  for (int i = 0; i < n; ++i) {
    float gr[C];
    for (int c = 0; c < C; ++c) gr[c] = grad[i * gs0 + c * gs1];
    for (int k = 0; k < (1 << D); ++k) {
      float* e = gemb + (int64_t)s.row[k][i] * C;
      const float wk = s.w[k][i];
      for (int c = 0; c < C; ++c) e[c] += wk * gr[c];
    }
  }
}

// Forward of points [b0, e0) of every grid: per super-block, grid by grid, block by block, level by level.
template <int D, int C>
STK_INLINE void forward_range(const Grid<D>* grids, int n_grids, const GridLevels& g, int64_t b0, int64_t e0,
                              float* out, int64_t width) {
  Scratch<D> s;
  for (int64_t sb = b0; sb < e0; sb += SUPER) {
    const int64_t se = std::min(e0, sb + SUPER);
    for (int gi = 0; gi < n_grids; ++gi) {
      const Grid<D>& gr = grids[gi];
      for (int64_t b = sb; b < se; b += BLOCK) {
        const int n = (int)std::min<int64_t>(BLOCK, se - b);
        stage<D>(gr, b, n, s);
        for (int l = 0; l < g.L; ++l) {
          const Level lv = level_of(g, l);
          if (lv.dense)
            locate<D, true>(lv, n, s);
          else
            locate<D, false>(lv, n, s);
          gather<D, C>(s, n, gr.emb + lv.offset * C, out + b * width + gr.col + l * C, width);
        }
      }
    }
  }
}

// Table gradient of units [u0, u1) (unit = grid * L + level) over all N points.
template <int D, int C>
STK_INLINE void table_grad_range(const Grid<D>* grids, const GridLevels& g, int64_t N, const float* grad,
                                 int64_t gs0, int64_t gs1, int64_t u0, int64_t u1) {
  Scratch<D> s;
  for (int64_t u = u0; u < u1; ++u) {
    const Grid<D>& gr = grids[u / g.L];
    const int l = (int)(u % g.L);
    const Level lv = level_of(g, l);
    for (int64_t b = 0; b < N; b += BLOCK) {
      const int n = (int)std::min<int64_t>(BLOCK, N - b);
      stage<D>(gr, b, n, s);
      if (lv.dense)
        locate<D, true>(lv, n, s);
      else
        locate<D, false>(lv, n, s);
      scatter<D, C>(s, n, grad + b * gs0 + (gr.col + l * C) * gs1, gs0, gs1, gr.gemb + lv.offset * C);
    }
  }
}

// The same two loops compiled for plain x86-64 and for AVX2 (gcc's target attribute; no -march needed).
template <int D, int C>
void forward_range_base(const Grid<D>* grids, int n_grids, const GridLevels& g, int64_t b0, int64_t e0, float* out,
                        int64_t width) {
  forward_range<D, C>(grids, n_grids, g, b0, e0, out, width);
}
template <int D, int C>
void table_grad_range_base(const Grid<D>* grids, const GridLevels& g, int64_t N, const float* grad, int64_t gs0,
                           int64_t gs1, int64_t u0, int64_t u1) {
  table_grad_range<D, C>(grids, g, N, grad, gs0, gs1, u0, u1);
}
#if STK_HAVE_AVX2_CLONE
template <int D, int C>
__attribute__((target("avx2"))) void forward_range_avx2(const Grid<D>* grids, int n_grids, const GridLevels& g,
                                                         int64_t b0, int64_t e0, float* out, int64_t width) {
  forward_range<D, C>(grids, n_grids, g, b0, e0, out, width);
}
template <int D, int C>
__attribute__((target("avx2"))) void table_grad_range_avx2(const Grid<D>* grids, const GridLevels& g, int64_t N,
                                                            const float* grad, int64_t gs0, int64_t gs1, int64_t u0,
                                                            int64_t u1) {
  table_grad_range<D, C>(grids, g, N, grad, gs0, gs1, u0, u1);
}
#endif

template <int D, int C>
void forward_grids(const Grid<D>* grids, int n_grids, const GridLevels& g, int64_t N, float* out, int64_t width) {
  const bool avx2 = use_avx2();
  at::parallel_for(0, N, BLOCK, [&](int64_t b0, int64_t e0) {
#if STK_HAVE_AVX2_CLONE
    if (avx2) return forward_range_avx2<D, C>(grids, n_grids, g, b0, e0, out, width);
#endif
    forward_range_base<D, C>(grids, n_grids, g, b0, e0, out, width);
  });
}

template <int D, int C>
void table_grad_grids(const Grid<D>* grids, int n_grids, const GridLevels& g, int64_t N, const float* grad,
                      int64_t gs0, int64_t gs1) {
  const bool avx2 = use_avx2();
  at::parallel_for(0, (int64_t)n_grids * g.L, 1, [&](int64_t u0, int64_t u1) {
#if STK_HAVE_AVX2_CLONE
    if (avx2) return table_grad_range_avx2<D, C>(grids, g, N, grad, gs0, gs1, u0, u1);
#endif
    table_grad_range_base<D, C>(grids, g, N, grad, gs0, gs1, u0, u1);
  });
}

// C (level_dim) as a template argument: 1, 2, 4 or 8 (geometry.make_grid_spec allows no other).
template <typename F>
void with_channels(int C, F&& f) {
  switch (C) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: TORCH_CHECK(false, "level_dim must be 1, 2, 4 or 8, got ", C);
  }
}

template <int D>
Grid<D> plain_grid(const Tensor& x, const Tensor& emb, float* gemb) {
  Grid<D> gr{};
  gr.x = x.data_ptr<float>();
  gr.stride = D;
  for (int d = 0; d < D; ++d) gr.dims[d] = d;
  gr.clamp = false;
  gr.emb = emb.data_ptr<float>();
  gr.gemb = gemb;
  gr.col = 0;
  return gr;
}

// The input gradient (only when x requires it): hashgrid_math.h's per-level function, in blocks of points.
template <int D>
void input_grad(const float* grad, int64_t gs0, int64_t gs1, const float* x, const float* emb, const GridLevels& g,
                int64_t N, float* gx) {
  at::parallel_for(0, N, BLOCK, [&](int64_t b0, int64_t e0) {
    float gr[8];
    for (int64_t b = b0; b < e0; b += BLOCK) {
      const int64_t e = std::min<int64_t>(e0, b + BLOCK);
      for (int l = 0; l < g.L; ++l)
        for (int64_t i = b; i < e; ++i) {
          for (int c = 0; c < g.C; ++c) gr[c] = grad[i * gs0 + (l * g.C + c) * gs1];
          hash_level_input_grad<D, float>(x + D * i, emb, g, l, gr, gx + D * i);
        }
    }
  });
}

void check_grad(const Tensor& grad, int64_t N, int64_t width) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 2 && grad.size(0) == N && grad.size(1) == width,
              "grad must be float32 [", N, ", ", width, "]");
}

template <int D>
void plain_forward(const Tensor& x, const Tensor& emb, const GridLevels& g, Tensor& out) {
  const Grid<D> gr = plain_grid<D>(x, emb, nullptr);
  with_channels(g.C, [&](auto C) {
    forward_grids<D, decltype(C)::value>(&gr, 1, g, x.size(0), out.data_ptr<float>(), (int64_t)g.L * g.C);
  });
}

template <int D>
void plain_backward(const Tensor& grad, const Tensor& x, const Tensor& emb, const GridLevels& g, Tensor& gemb,
                    float* gx) {
  const Grid<D> gr = plain_grid<D>(x, emb, gemb.data_ptr<float>());
  const float* gp = grad.data_ptr<float>();
  with_channels(g.C, [&](auto C) {
    table_grad_grids<D, decltype(C)::value>(&gr, 1, g, x.size(0), gp, grad.stride(0), grad.stride(1));
  });
  if (gx)
    input_grad<D>(gp, grad.stride(0), grad.stride(1), x.data_ptr<float>(), emb.data_ptr<float>(), g, x.size(0), gx);
}

// The tri-plane's grids: plane p reads dims planes[p, 0], planes[p, 1] of x [N, 3], clamped to [0, 1].
std::vector<Grid<2>> plane_grids(const Tensor& x, const std::vector<Tensor>& embs, const Tensor& planes,
                                 const GridLevels& g, const std::vector<Tensor>& gembs) {
  const int P = (int)embs.size();
  TORCH_CHECK(P >= 1 && P <= MAX_GRIDS && planes.numel() == 2 * P && planes.scalar_type() == at::kInt,
              "need 1-3 planes and int32 plane dims [P, 2]");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be contiguous float32 [N, 3]");
  const Tensor dims = planes.contiguous();
  const int* pd = dims.data_ptr<int>();
  std::vector<Grid<2>> grids(P);
  for (int p = 0; p < P; ++p) {
    TORCH_CHECK(embs[p].scalar_type() == at::kFloat && embs[p].is_contiguous() && embs[p].dim() == 2 &&
                    embs[p].size(0) == g.offset[g.L] && embs[p].size(1) == g.C,
                "plane tables must be contiguous float32 [rows, C] of one spec");
    TORCH_CHECK(0 <= pd[2 * p] && pd[2 * p] < 3 && 0 <= pd[2 * p + 1] && pd[2 * p + 1] < 3, "plane dims in [0, 3)");
    grids[p] = {x.data_ptr<float>(), 3, {pd[2 * p], pd[2 * p + 1]}, true, embs[p].data_ptr<float>(),
                gembs.empty() ? nullptr : gembs[p].data_ptr<float>(), (int64_t)p * g.L * g.C};
  }
  return grids;
}
}  // namespace

Tensor hash_encode_forward(Tensor x, Tensor emb, Tensor scales, Tensor verts, Tensor offsets, double shift) {
  TORCH_CHECK(emb.scalar_type() == at::kFloat, "CPU hash grid tables must be float32");
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)emb.size(1), (int)x.size(1));
  auto out = at::empty({x.size(0), (int64_t)g.L * g.C}, x.options());
  if (x.size(1) == 2)
    plain_forward<2>(x, emb, g, out);
  else
    plain_forward<3>(x, emb, g, out);
  return out;
}

std::vector<Tensor> hash_encode_backward(Tensor grad, Tensor x, Tensor emb, Tensor scales, Tensor verts,
                                         Tensor offsets, double shift, bool need_input_grad) {
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)emb.size(1), (int)x.size(1));
  check_grad(grad, x.size(0), (int64_t)g.L * g.C);
  auto gemb = at::zeros(emb.sizes(), emb.options().dtype(at::kFloat));
  auto gx = need_input_grad ? at::zeros_like(x) : at::empty({0}, x.options());
  float* pgx = need_input_grad ? gx.data_ptr<float>() : nullptr;
  if (x.size(1) == 2)
    plain_backward<2>(grad, x, emb, g, gemb, pgx);
  else
    plain_backward<3>(grad, x, emb, g, gemb, pgx);
  return {gemb, gx};
}

Tensor tri_plane_encode_forward(Tensor x, std::vector<Tensor> embs, Tensor planes, Tensor scales, Tensor verts,
                                Tensor offsets, double shift) {
  TORCH_CHECK(!embs.empty(), "no plane tables");
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)embs[0].size(1), 2);
  const std::vector<Grid<2>> grids = plane_grids(x, embs, planes, g, {});
  const int64_t width = (int64_t)grids.size() * g.L * g.C;
  auto out = at::empty({x.size(0), width}, x.options());
  with_channels(g.C, [&](auto C) {
    forward_grids<2, decltype(C)::value>(grids.data(), (int)grids.size(), g, x.size(0), out.data_ptr<float>(),
                                         width);
  });
  return out;
}

std::vector<Tensor> tri_plane_encode_backward(Tensor grad, Tensor x, std::vector<Tensor> embs, Tensor planes,
                                              Tensor scales, Tensor verts, Tensor offsets, double shift) {
  TORCH_CHECK(!embs.empty(), "no plane tables");
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)embs[0].size(1), 2);
  std::vector<Tensor> gembs;
  for (const Tensor& e : embs) gembs.push_back(at::zeros(e.sizes(), e.options()));
  const std::vector<Grid<2>> grids = plane_grids(x, embs, planes, g, gembs);
  check_grad(grad, x.size(0), (int64_t)grids.size() * g.L * g.C);
  with_channels(g.C, [&](auto C) {
    table_grad_grids<2, decltype(C)::value>(grids.data(), (int)grids.size(), g, x.size(0), grad.data_ptr<float>(),
                                            grad.stride(0), grad.stride(1));
  });
  return gembs;
}

}  // namespace stk::cpu
