// CPU hash grid: points in parallel for the forward and the input gradient; levels in parallel for the
// table gradient (each level owns its own rows, so no atomics and a deterministic sum).
#include <ATen/Parallel.h>

#include "ops.h"

namespace stk::cpu {

namespace {
template <int D>
void forward_impl(const float* x, const float* emb, const GridLevels& g, int64_t N, float* out) {
  // Level-outer within a chunk of points: one level's table stays in cache while the chunk reads it.
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int l = 0; l < g.L; ++l)
      for (int64_t i = b; i < e; ++i) hash_level_forward<D, float>(x + D * i, emb, g, l, out + (i * g.L + l) * g.C);
  });
}

template <int D>
void backward_impl(const float* grad, const float* x, const float* emb, const GridLevels& g, int64_t N,
                   float* gemb, float* gx) {
  at::parallel_for(0, g.L, 1, [&](int64_t lb, int64_t le) {
    int64_t rows[1 << D];
    float w[1 << D];
    for (int64_t l = lb; l < le; ++l)
      for (int64_t i = 0; i < N; ++i) {
        hash_level_corners<D>(x + D * i, g, (int)l, rows, w);
        const float* gr = grad + (i * g.L + l) * g.C;
        for (int k = 0; k < (1 << D); ++k)
          for (int c = 0; c < g.C; ++c) gemb[rows[k] * g.C + c] += w[k] * gr[c];
      }
  });
  if (!gx) return;
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int l = 0; l < g.L; ++l)
      for (int64_t i = b; i < e; ++i)
        hash_level_input_grad<D, float>(x + D * i, emb, g, l, grad + (i * g.L + l) * g.C, gx + D * i);
  });
}
}  // namespace

Tensor hash_encode_forward(Tensor x, Tensor emb, Tensor scales, Tensor verts, Tensor offsets, double shift) {
  TORCH_CHECK(emb.scalar_type() == at::kFloat, "CPU hash grid tables must be float32");
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)emb.size(1), (int)x.size(1));
  const int64_t N = x.size(0);
  auto out = at::empty({N, (int64_t)g.L * g.C}, x.options());
  if (x.size(1) == 2)
    forward_impl<2>(x.data_ptr<float>(), emb.data_ptr<float>(), g, N, out.data_ptr<float>());
  else
    forward_impl<3>(x.data_ptr<float>(), emb.data_ptr<float>(), g, N, out.data_ptr<float>());
  return out;
}

std::vector<Tensor> hash_encode_backward(Tensor grad, Tensor x, Tensor emb, Tensor scales, Tensor verts,
                                         Tensor offsets, double shift, bool need_input_grad) {
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)emb.size(1), (int)x.size(1));
  const int64_t N = x.size(0);
  auto gemb = at::zeros(emb.sizes(), emb.options().dtype(at::kFloat));
  auto gx = need_input_grad ? at::zeros_like(x) : at::empty({0}, x.options());
  float* pgx = need_input_grad ? gx.data_ptr<float>() : nullptr;
  if (x.size(1) == 2)
    backward_impl<2>(grad.data_ptr<float>(), x.data_ptr<float>(), emb.data_ptr<float>(), g, N,
                     gemb.data_ptr<float>(), pgx);
  else
    backward_impl<3>(grad.data_ptr<float>(), x.data_ptr<float>(), emb.data_ptr<float>(), g, N,
                     gemb.data_ptr<float>(), pgx);
  return {gemb, gx};
}

}  // namespace stk::cpu
