// CUDA ray marching and compositing: one thread per ray (or slot) around the shared math.
#include "composite_math.h"
#include "cuda/launch.cuh"
#include "march_math.h"
#include "ops.h"

namespace stk::cuda {

namespace {

const float* ptr_or_null(const Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

__global__ void near_far_kernel(int64_t N, const float* o, const float* d, float b0, float b1, float b2, float b3,
                                float b4, float b5, float min_near, float* nears, float* fars) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float box[6] = {b0, b1, b2, b3, b4, b5};
  near_far(o + 3 * i, d + 3 * i, box, min_near, nears[i], fars[i]);
}

__global__ void morton_kernel(int64_t N, const int* c, int* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < N) out[i] = (int)morton3D(c[3 * i], c[3 * i + 1], c[3 * i + 2]);
}

__global__ void morton_invert_kernel(int64_t N, const int* m, int* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N) return;
  for (int k = 0; k < 3; ++k) out[3 * i + k] = (int)compact_bits((uint32_t)m[i] >> k);
}

__global__ void packbits_kernel(int64_t nbytes, const float* g, float th, uint8_t* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= nbytes) return;
  uint8_t bits = 0;
  for (int j = 0; j < 8; ++j) bits |= (uint8_t)((g[8 * i + j] > th) << j);
  out[i] = bits;
}

__global__ void march_train_kernel(MarchConsts k, int64_t N, const float* o, const float* d, const float* nears,
                                   const float* fars, const float* noise, const uint8_t* bf, const int64_t* offsets,
                                   int64_t* counts, float* xyzs, float* dirs, float* ts) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float t0 = perturbed_start(k, nears[i], noise, (int)i);
  if (offsets == nullptr) {
    counts[i] = march_ray(k, bf, o + 3 * i, d + 3 * i, t0, fars[i], k.max_samples, nullptr, nullptr, nullptr);
  } else {
    const int64_t s = offsets[i];
    march_ray(k, bf, o + 3 * i, d + 3 * i, t0, fars[i], k.max_samples, xyzs + 3 * s, dirs + 3 * s, ts + 2 * s);
  }
}

__global__ void march_infer_kernel(MarchConsts k, int64_t n_alive, int n_step, const int* alive, const float* rays_t,
                                   const float* o, const float* d, const float* fars, const float* noise,
                                   const uint8_t* bf, float* xyzs, float* dirs, float* ts) {
  const int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (n >= n_alive) return;
  const int id = alive[n];
  if (id < 0) return;
  const int64_t s = n * n_step;
  march_ray(k, bf, o + 3 * (int64_t)id, d + 3 * (int64_t)id, perturbed_start(k, rays_t[n], noise, (int)n), fars[id],
            n_step, xyzs + 3 * s, dirs + 3 * s, ts + 2 * s);
}

__global__ void composite_train_kernel(int64_t N, const float* s, const float* c, const float* t, const float* ex,
                                       int E, const int* rays, float T_thresh, float* w, float* ws, float* depth,
                                       float* image, float* extras_sum) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N) return;
  composite_train_ray(s, c, t, ex, E, rays[2 * i], rays[2 * i + 1], T_thresh, w, ws + i, depth + i, image + 3 * i,
                      extras_sum + E * i);
}

__global__ void composite_train_backward_kernel(int64_t N, const float* gw, const float* gws, const float* gd,
                                                const float* gi, const float* gex, const float* s, const float* c,
                                                const float* t, const float* ex, int E, const int* rays,
                                                float T_thresh, float* gs, float* gc, float* ge) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N) return;
  composite_train_ray_backward(gw, gws[i], gd[i], gi + 3 * i, gex + E * i, s, c, t, ex, E, rays[2 * i],
                               rays[2 * i + 1], T_thresh, gs, gc, ge);
}

__global__ void composite_infer_kernel(int64_t n_alive, int n_step, int* alive, float* rays_t, const float* s,
                                       const float* c, const float* t, const float* ex, int E, float T_thresh,
                                       float* ws, float* depth, float* image, float* extras_sum) {
  const int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (n >= n_alive) return;
  composite_infer_slot((int)n, n_step, alive, rays_t, s, c, t, ex, E, T_thresh, ws, depth, image, extras_sum);
}

}  // namespace

std::vector<Tensor> near_far_from_aabb(Tensor rays_o, Tensor rays_d, Tensor aabb, double min_near) {
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const int64_t N = rays_o.size(0);
  auto nears = at::empty({N}, rays_o.options()), fars = at::empty({N}, rays_o.options());
  const float* b = aabb.data_ptr<float>();  // host tensor
  if (N) {
    near_far_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(N, rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                                                            b[0], b[1], b[2], b[3], b[4], b[5], (float)min_near,
                                                            nears.data_ptr<float>(), fars.data_ptr<float>());
    STK_CHECK_LAUNCH();
  }
  return {nears, fars};
}

Tensor morton3D(Tensor coords) {
  const c10::cuda::CUDAGuard guard(coords.device());
  const int64_t N = coords.size(0);
  auto out = at::empty({N}, coords.options());
  if (N) {
    morton_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(N, coords.data_ptr<int>(), out.data_ptr<int>());
    STK_CHECK_LAUNCH();
  }
  return out;
}

Tensor morton3D_invert(Tensor idx) {
  const c10::cuda::CUDAGuard guard(idx.device());
  const int64_t N = idx.size(0);
  auto out = at::empty({N, 3}, idx.options());
  if (N) {
    morton_invert_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(N, idx.data_ptr<int>(), out.data_ptr<int>());
    STK_CHECK_LAUNCH();
  }
  return out;
}

Tensor packbits(Tensor grid, double thresh) {
  const c10::cuda::CUDAGuard guard(grid.device());
  const int64_t nbytes = grid.numel() / 8;
  auto out = at::empty({nbytes}, grid.options().dtype(at::kByte));
  if (nbytes) {
    packbits_kernel<<<blocks_for(nbytes), THREADS, 0, stream()>>>(nbytes, grid.data_ptr<float>(), (float)thresh,
                                                                 out.data_ptr<uint8_t>());
    STK_CHECK_LAUNCH();
  }
  return out;
}

std::vector<Tensor> march_rays_train(Tensor rays_o, Tensor rays_d, Tensor bitfield, Tensor nears, Tensor fars,
                                     Tensor noise, Tensor spec, int64_t H, int64_t C, int64_t max_samples) {
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const MarchConsts k = unpack_march(spec.data_ptr<float>(), (int)H, (int)C, (int)max_samples);
  const int64_t N = rays_o.size(0);
  auto counts = at::zeros({N}, rays_o.options().dtype(at::kLong));
  const float *o = rays_o.data_ptr<float>(), *d = rays_d.data_ptr<float>(), *nz = ptr_or_null(noise);
  const uint8_t* bf = bitfield.data_ptr<uint8_t>();
  if (N) {
    march_train_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(k, N, o, d, nears.data_ptr<float>(),
                                                               fars.data_ptr<float>(), nz, bf, nullptr,
                                                               counts.data_ptr<int64_t>(), nullptr, nullptr, nullptr);
    STK_CHECK_LAUNCH();
  }
  auto offsets = counts.cumsum(0) - counts;
  const int64_t M = N ? counts.sum().item<int64_t>() : 0;  // one sync: the output size
  auto xyzs = at::empty({M, 3}, rays_o.options()), dirs = at::empty({M, 3}, rays_o.options());
  auto ts = at::empty({M, 2}, rays_o.options());
  if (M) {
    march_train_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(
        k, N, o, d, nears.data_ptr<float>(), fars.data_ptr<float>(), nz, bf, offsets.data_ptr<int64_t>(),
        counts.data_ptr<int64_t>(), xyzs.data_ptr<float>(), dirs.data_ptr<float>(), ts.data_ptr<float>());
    STK_CHECK_LAUNCH();
  }
  return {xyzs, dirs, ts, at::stack({offsets, counts}, 1).to(at::kInt)};
}

std::vector<Tensor> march_rays(int64_t n_alive, int64_t n_step, Tensor rays_alive, Tensor rays_t, Tensor rays_o,
                               Tensor rays_d, Tensor fars, Tensor bitfield, Tensor noise, Tensor spec, int64_t H,
                               int64_t C) {
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const MarchConsts k = unpack_march(spec.data_ptr<float>(), (int)H, (int)C, (int)n_step);
  auto xyzs = at::zeros({n_alive * n_step, 3}, rays_o.options());
  auto dirs = at::zeros({n_alive * n_step, 3}, rays_o.options());
  auto ts = at::zeros({n_alive * n_step, 2}, rays_o.options());
  if (n_alive) {
    march_infer_kernel<<<blocks_for(n_alive), THREADS, 0, stream()>>>(
        k, n_alive, (int)n_step, rays_alive.data_ptr<int>(), rays_t.data_ptr<float>(), rays_o.data_ptr<float>(),
        rays_d.data_ptr<float>(), fars.data_ptr<float>(), ptr_or_null(noise), bitfield.data_ptr<uint8_t>(),
        xyzs.data_ptr<float>(), dirs.data_ptr<float>(), ts.data_ptr<float>());
    STK_CHECK_LAUNCH();
  }
  return {xyzs, dirs, ts};
}

std::vector<Tensor> composite_rays_train_forward(Tensor sigmas, Tensor rgbs, Tensor ts, Tensor rays, Tensor extras,
                                                 double T_thresh) {
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const int64_t N = rays.size(0), M = sigmas.size(0), E = extras.size(1);
  auto weights = at::zeros({M}, sigmas.options()), ws = at::zeros({N}, sigmas.options());
  auto depth = at::zeros({N}, sigmas.options()), image = at::zeros({N, 3}, sigmas.options());
  auto extras_sum = at::zeros({N, E}, sigmas.options());
  if (N) {
    composite_train_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(
        N, sigmas.data_ptr<float>(), rgbs.data_ptr<float>(), ts.data_ptr<float>(), extras.data_ptr<float>(), (int)E,
        rays.data_ptr<int>(), (float)T_thresh, weights.data_ptr<float>(), ws.data_ptr<float>(),
        depth.data_ptr<float>(), image.data_ptr<float>(), extras_sum.data_ptr<float>());
    STK_CHECK_LAUNCH();
  }
  return {weights, ws, depth, image, extras_sum};
}

std::vector<Tensor> composite_rays_train_backward(Tensor g_weights, Tensor g_ws, Tensor g_depth, Tensor g_image,
                                                  Tensor g_extras, Tensor sigmas, Tensor rgbs, Tensor ts, Tensor rays,
                                                  Tensor extras, double T_thresh) {
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const int64_t N = rays.size(0), E = extras.size(1);
  auto gs = at::zeros_like(sigmas), gc = at::zeros_like(rgbs), ge = at::zeros_like(extras);
  if (N) {
    composite_train_backward_kernel<<<blocks_for(N), THREADS, 0, stream()>>>(
        N, g_weights.data_ptr<float>(), g_ws.data_ptr<float>(), g_depth.data_ptr<float>(),
        g_image.data_ptr<float>(), g_extras.data_ptr<float>(), sigmas.data_ptr<float>(), rgbs.data_ptr<float>(),
        ts.data_ptr<float>(), extras.data_ptr<float>(), (int)E, rays.data_ptr<int>(), (float)T_thresh,
        gs.data_ptr<float>(), gc.data_ptr<float>(), ge.data_ptr<float>());
    STK_CHECK_LAUNCH();
  }
  return {gs, gc, ge};
}

void composite_rays(int64_t n_alive, int64_t n_step, Tensor rays_alive, Tensor rays_t, Tensor sigmas, Tensor rgbs,
                    Tensor ts, Tensor ws, Tensor depth, Tensor image, Tensor extras, Tensor extras_sum,
                    double T_thresh) {
  const c10::cuda::CUDAGuard guard(sigmas.device());
  if (!n_alive) return;
  composite_infer_kernel<<<blocks_for(n_alive), THREADS, 0, stream()>>>(
      n_alive, (int)n_step, rays_alive.data_ptr<int>(), rays_t.data_ptr<float>(), sigmas.data_ptr<float>(),
      rgbs.data_ptr<float>(), ts.data_ptr<float>(), extras.data_ptr<float>(), (int)extras.size(1), (float)T_thresh,
      ws.data_ptr<float>(), depth.data_ptr<float>(), image.data_ptr<float>(), extras_sum.data_ptr<float>());
  STK_CHECK_LAUNCH();
}

}  // namespace stk::cuda
