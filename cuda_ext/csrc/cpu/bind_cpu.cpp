#include <torch/extension.h>

#include "ops.h"

namespace stk::cpu {
// CPU-only ops (hashgrid_cpu.cpp): the tri-plane encoder's three 2D grids in one call. The Python side uses
// them when the module has them (cuda_ext/hashgrid.py), so an older build keeps working.
Tensor tri_plane_encode_forward(Tensor x, std::vector<Tensor> embs, Tensor planes, Tensor scales, Tensor verts,
                                Tensor offsets, double shift);
std::vector<Tensor> tri_plane_encode_backward(Tensor grad, Tensor x, std::vector<Tensor> embs, Tensor planes,
                                              Tensor scales, Tensor verts, Tensor offsets, double shift);
}  // namespace stk::cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  STK_BIND(m, stk::cpu)
  // hash_encode_backward reads its gradient through its strides: no need to make it contiguous first.
  m.attr("STRIDED_HASH_GRAD") = true;
  m.def("tri_plane_encode_forward", &stk::cpu::tri_plane_encode_forward);
  m.def("tri_plane_encode_backward", &stk::cpu::tri_plane_encode_backward);
}
