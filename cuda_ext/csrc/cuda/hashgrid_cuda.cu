// CUDA hash grid: one thread per (point, level) (blockIdx.y = level, so a block reads one level's table);
// table gradient accumulated in float32 (also for float16 tables): per block in shared memory for the
// levels whose rows fit there, by global atomicAdd for the others.
#include <ATen/Dispatch.h>

#include <algorithm>

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

constexpr int SHARED_THREADS = 512;

// Levels [level0, level0 + gridDim.y): one thread per (point, level), atomics straight into global memory.
template <int D>
__global__ void table_grad_kernel(int64_t N, const float* grad, const float* x, GridLevels g, int level0,
                                  float* gemb) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int l = level0 + blockIdx.y;
  if (i >= N) return;
  int64_t rows[1 << D];
  float w[1 << D];
  hash_level_corners<D>(x + D * i, g, l, rows, w);
  const float* gr = grad + (i * g.L + l) * g.C;
  for (int k = 0; k < (1 << D); ++k)
    for (int c = 0; c < g.C; ++c) atomicAdd(gemb + rows[k] * g.C + c, w[k] * gr[c]);
}

// Levels [0, gridDim.y): block (b, l) sums the gradient of points [b*chunk, (b+1)*chunk) for level l into a
// shared-memory copy of that level's rows, then adds it to global memory once. Why: a million points hit
// each level's few thousand (coarse) to 2^14 (hashed) rows, so global atomics contend in L2; shared
// atomics are cheap and the flush is coalesced, one per row and block.
template <int D>
__global__ void table_grad_shared_kernel(int64_t N, int64_t chunk, const float* grad, const float* x, GridLevels g,
                                         float* gemb) {
  extern __shared__ float acc[];  // [rows of level l * C]
  const int l = blockIdx.y;
  const int64_t first = g.offset[l], n = ((int64_t)g.offset[l + 1] - first) * g.C;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc[j] = 0.0f;
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = begin + chunk < N ? begin + chunk : N;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    int64_t rows[1 << D];
    float w[1 << D], gr[MAX_C];
    hash_level_corners<D>(x + D * i, g, l, rows, w);
    for (int c = 0; c < g.C; ++c) gr[c] = grad[(i * g.L + l) * g.C + c];
    for (int k = 0; k < (1 << D); ++k)
      for (int c = 0; c < g.C; ++c) atomicAdd(acc + (rows[k] - first) * g.C + c, w[k] * gr[c]);
  }
  __syncthreads();
  float* out = gemb + first * g.C;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    if (acc[j] != 0.0f) atomicAdd(out + j, acc[j]);
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
  const bool two_d = x.size(1) == 2;
  const float *gp = grad_f.data_ptr<float>(), *xp = x.data_ptr<float>();
  float* ge = gemb.data_ptr<float>();
  // Shared-memory levels: a prefix (rows never shrink with the level) whose rows fit the opt-in shared
  // memory and where each block's updates (chunk * 2^D) outnumber its flush (rows); ~2 blocks per SM.
  int dev = 0, sms = 0, smem_max = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  const int64_t per_level = std::max<int64_t>(1, (2 * (int64_t)sms + g.L - 1) / g.L);
  const int64_t chunk = (N + per_level - 1) / per_level, blocks_x = (N + chunk - 1) / chunk;
  int shared_levels = 0;
  size_t smem = 0;
  while (shared_levels < g.L) {
    const int64_t rows = (int64_t)g.offset[shared_levels + 1] - g.offset[shared_levels];
    const size_t bytes = (size_t)rows * g.C * sizeof(float);
    if (bytes > (size_t)smem_max || chunk * (1 << x.size(1)) < rows) break;
    smem = std::max(smem, bytes);
    ++shared_levels;
  }
  if (shared_levels) {
    const dim3 grid((unsigned)blocks_x, shared_levels);
    if (two_d) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(table_grad_shared_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)smem));
      table_grad_shared_kernel<2><<<grid, SHARED_THREADS, smem, stream()>>>(N, chunk, gp, xp, g, ge);
    } else {
      C10_CUDA_CHECK(cudaFuncSetAttribute(table_grad_shared_kernel<3>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)smem));
      table_grad_shared_kernel<3><<<grid, SHARED_THREADS, smem, stream()>>>(N, chunk, gp, xp, g, ge);
    }
    STK_CHECK_LAUNCH();
  }
  if (shared_levels < g.L) {
    const dim3 grid(blocks_for(N), g.L - shared_levels);
    if (two_d)
      table_grad_kernel<2><<<grid, THREADS, 0, stream()>>>(N, gp, xp, g, shared_levels, ge);
    else
      table_grad_kernel<3><<<grid, THREADS, 0, stream()>>>(N, gp, xp, g, shared_levels, ge);
    STK_CHECK_LAUNCH();
  }
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
