// The op table both extensions expose (same names and signatures; bind_cpu.cpp / bind_cuda.cpp).
// Inputs are validated and made contiguous by the Python wrappers (cuda_ext/raymarching.py, hashgrid.py).
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "hashgrid_math.h"

namespace stk {

using at::Tensor;

// Bump with cuda_ext/loader.py ABI_VERSION on any signature change.
constexpr int ABI_VERSION = 1;

inline GridLevels unpack_levels(const Tensor& scales, const Tensor& verts, const Tensor& offsets, double shift,
                                int C, int D) {
  GridLevels g{};
  g.L = (int)scales.size(0);
  TORCH_CHECK(g.L <= MAX_LEVELS, "at most ", MAX_LEVELS, " levels");
  g.C = C;
  g.shift = (float)shift;
  const float* s = scales.data_ptr<float>();
  const int* v = verts.data_ptr<int>();
  const int* o = offsets.data_ptr<int>();
  for (int l = 0; l < g.L; ++l) {
    g.scale[l] = s[l];
    g.verts[l] = v[l];
  }
  for (int l = 0; l <= g.L; ++l) g.offset[l] = o[l];
  for (int l = 0; l < g.L; ++l) {
    const int64_t rows = o[l + 1] - o[l];
    int64_t cells = 1;
    for (int d = 0; d < D; ++d) cells *= v[l];
    g.dense[l] = cells <= rows;
    // hashed levels use a mask for the modulo: their row count must be a power of two
    TORCH_CHECK(g.dense[l] || (rows & (rows - 1)) == 0, "hashed level ", l, " needs a power-of-two row count");
  }
  return g;
}

#define STK_OPS(NS)                                                                                                \
  namespace NS {                                                                                                   \
  std::vector<Tensor> near_far_from_aabb(Tensor rays_o, Tensor rays_d, Tensor aabb, double min_near);            \
  Tensor morton3D(Tensor coords);                                                                                  \
  Tensor morton3D_invert(Tensor idx);                                                                              \
  Tensor packbits(Tensor grid, double thresh);                                                                     \
  std::vector<Tensor> march_rays_train(Tensor rays_o, Tensor rays_d, Tensor bitfield, Tensor nears, Tensor fars,  \
                                       Tensor noise, Tensor spec, int64_t H, int64_t C, int64_t max_samples);       \
  std::vector<Tensor> march_rays(int64_t n_alive, int64_t n_step, Tensor rays_alive, Tensor rays_t, Tensor rays_o, \
                                 Tensor rays_d, Tensor fars, Tensor bitfield, Tensor noise, Tensor spec, int64_t H, \
                                 int64_t C);                                                                        \
  std::vector<Tensor> composite_rays_train_forward(Tensor sigmas, Tensor rgbs, Tensor ts, Tensor rays,            \
                                                   Tensor extras, double T_thresh);                                \
  std::vector<Tensor> composite_rays_train_backward(Tensor g_weights, Tensor g_ws, Tensor g_depth, Tensor g_image, \
                                                    Tensor g_extras, Tensor sigmas, Tensor rgbs, Tensor ts,         \
                                                    Tensor rays, Tensor extras, double T_thresh);                  \
  void composite_rays(int64_t n_alive, int64_t n_step, Tensor rays_alive, Tensor rays_t, Tensor sigmas,            \
                      Tensor rgbs, Tensor ts, Tensor ws, Tensor depth, Tensor image, Tensor extras,                 \
                      Tensor extras_sum, double T_thresh);                                                          \
  Tensor hash_encode_forward(Tensor x, Tensor emb, Tensor scales, Tensor verts, Tensor offsets, double shift);    \
  std::vector<Tensor> hash_encode_backward(Tensor grad, Tensor x, Tensor emb, Tensor scales, Tensor verts,        \
                                           Tensor offsets, double shift, bool need_input_grad);                    \
  }

STK_OPS(cpu)
#ifdef SYNCTALK_WITH_CUDA
STK_OPS(cuda)
#endif

// One binding list for both modules.
#define STK_BIND(m, NS)                                                                                  \
  m.attr("ABI_VERSION") = stk::ABI_VERSION;                                                                   \
  m.def("near_far_from_aabb", &NS::near_far_from_aabb);                                                  \
  m.def("morton3D", &NS::morton3D);                                                                      \
  m.def("morton3D_invert", &NS::morton3D_invert);                                                        \
  m.def("packbits", &NS::packbits);                                                                      \
  m.def("march_rays_train", &NS::march_rays_train);                                                      \
  m.def("march_rays", &NS::march_rays);                                                                  \
  m.def("composite_rays_train_forward", &NS::composite_rays_train_forward);                              \
  m.def("composite_rays_train_backward", &NS::composite_rays_train_backward);                            \
  m.def("composite_rays", &NS::composite_rays);                                                          \
  m.def("hash_encode_forward", &NS::hash_encode_forward);                                                \
  m.def("hash_encode_backward", &NS::hash_encode_backward);

}  // namespace stk
