// CUDA hash grid: one thread per (point, level) (blockIdx.y = level, so a block reads one level's table);
// table gradient by atomicAdd into a float32 buffer (also for float16 tables).
#include <ATen/Dispatch.h>

#include "cuda/launch.cuh"
#include "ops.h"

namespace stk::cuda {

namespace {

constexpr int MAX_C = 8;

template <int D, typename scalar_t>
__global__ void forward_kernel(int64_t N, const float* x, const scalar_t* emb, GridLevels g, scalar_t* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= N) return;
  float acc[MAX_C];
  hash_level_forward<D, scalar_t>(x + D * i, emb, g, l, acc);
  for (int c = 0; c < g.C; ++c) out[(i * g.L + l) * g.C + c] = static_cast<scalar_t>(acc[c]);
}

template <int D>
__global__ void table_grad_kernel(int64_t N, const float* grad, const float* x, GridLevels g, float* gemb) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= N) return;
  int64_t rows[1 << D];
  float w[1 << D];
  hash_level_corners<D>(x + D * i, g, l, rows, w);
  const float* gr = grad + (i * g.L + l) * g.C;
  for (int k = 0; k < (1 << D); ++k)
    for (int c = 0; c < g.C; ++c) atomicAdd(gemb + rows[k] * g.C + c, w[k] * gr[c]);
}

template <int D, typename scalar_t>
__global__ void input_grad_kernel(int64_t N, const float* grad, const float* x, const scalar_t* emb, GridLevels g,
                                  float* gx) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N) return;
  float acc[D] = {};
  for (int l = 0; l < g.L; ++l)
    hash_level_input_grad<D, scalar_t>(x + D * i, emb, g, l, grad + (i * g.L + l) * g.C, acc);
  for (int d = 0; d < D; ++d) gx[D * i + d] = acc[d];
}

}  // namespace

Tensor hash_encode_forward(Tensor x, Tensor emb, Tensor scales, Tensor verts, Tensor offsets, double shift) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)emb.size(1), (int)x.size(1));
  TORCH_CHECK(g.C <= MAX_C, "level_dim must be <= ", MAX_C);
  const int64_t N = x.size(0);
  auto out = at::empty({N, (int64_t)g.L * g.C}, emb.options());
  if (!N || !g.L) return out;
  const dim3 grid(blocks_for(N), g.L);
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(emb.scalar_type(), "hash_encode_forward", [&] {
    if (x.size(1) == 2)
      forward_kernel<2, scalar_t><<<grid, THREADS, 0, stream()>>>(N, x.data_ptr<float>(), emb.data_ptr<scalar_t>(),
                                                                  g, out.data_ptr<scalar_t>());
    else
      forward_kernel<3, scalar_t><<<grid, THREADS, 0, stream()>>>(N, x.data_ptr<float>(), emb.data_ptr<scalar_t>(),
                                                                  g, out.data_ptr<scalar_t>());
  });
  STK_CHECK_LAUNCH();
  return out;
}

std::vector<Tensor> hash_encode_backward(Tensor grad, Tensor x, Tensor emb, Tensor scales, Tensor verts,
                                         Tensor offsets, double shift, bool need_input_grad) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GridLevels g = unpack_levels(scales, verts, offsets, shift, (int)emb.size(1), (int)x.size(1));
  const int64_t N = x.size(0);
  auto grad_f = grad.to(at::kFloat).contiguous();
  auto gemb = at::zeros(emb.sizes(), emb.options().dtype(at::kFloat));
  auto gx = need_input_grad ? at::zeros_like(x) : at::empty({0}, x.options());
  if (!N || !g.L) return {gemb, gx};
  const dim3 grid(blocks_for(N), g.L);
  if (x.size(1) == 2)
    table_grad_kernel<2><<<grid, THREADS, 0, stream()>>>(N, grad_f.data_ptr<float>(), x.data_ptr<float>(), g,
                                                         gemb.data_ptr<float>());
  else
    table_grad_kernel<3><<<grid, THREADS, 0, stream()>>>(N, grad_f.data_ptr<float>(), x.data_ptr<float>(), g,
                                                         gemb.data_ptr<float>());
  STK_CHECK_LAUNCH();
  if (need_input_grad) {
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(emb.scalar_type(), "hash_encode_input_grad", [&] {
      if (x.size(1) == 2)
        input_grad_kernel<2, scalar_t><<<blocks_for(N), THREADS, 0, stream()>>>(
            N, grad_f.data_ptr<float>(), x.data_ptr<float>(), emb.data_ptr<scalar_t>(), g, gx.data_ptr<float>());
      else
        input_grad_kernel<3, scalar_t><<<blocks_for(N), THREADS, 0, stream()>>>(
            N, grad_f.data_ptr<float>(), x.data_ptr<float>(), emb.data_ptr<scalar_t>(), g, gx.data_ptr<float>());
    });
    STK_CHECK_LAUNCH();
  }
  return {gemb, gx};
}

}  // namespace stk::cuda
