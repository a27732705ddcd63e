// CPU ray marching and compositing: loops over rays on ATen's (OpenMP) thread pool around the shared math.
#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "composite_math.h"
#include "isa.h"
#include "march_lanes.h"
#include "march_math.h"
#include "ops.h"

namespace stk::cpu {

namespace {
constexpr int64_t GRAIN = 256;
const float* ptr_or_null(const Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
}  // namespace

std::vector<Tensor> near_far_from_aabb(Tensor rays_o, Tensor rays_d, Tensor aabb, double min_near) {
  const int64_t N = rays_o.size(0);
  auto nears = at::empty({N}, rays_o.options()), fars = at::empty({N}, rays_o.options());
  const float *o = rays_o.data_ptr<float>(), *d = rays_d.data_ptr<float>(), *box = aabb.data_ptr<float>();
  float *pn = nears.data_ptr<float>(), *pf = fars.data_ptr<float>();
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) near_far(o + 3 * i, d + 3 * i, box, (float)min_near, pn[i], pf[i]);
  });
  return {nears, fars};
}

Tensor morton3D(Tensor coords) {
  const int64_t N = coords.size(0);
  auto out = at::empty({N}, coords.options());
  const int* c = coords.data_ptr<int>();
  int* o = out.data_ptr<int>();
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) o[i] = (int)stk::morton3D(c[3 * i], c[3 * i + 1], c[3 * i + 2]);
  });
  return out;
}

Tensor morton3D_invert(Tensor idx) {
  const int64_t N = idx.size(0);
  auto out = at::empty({N, 3}, idx.options());
  const int* m = idx.data_ptr<int>();
  int* o = out.data_ptr<int>();
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      for (int k = 0; k < 3; ++k) o[3 * i + k] = (int)compact_bits((uint32_t)m[i] >> k);
  });
  return out;
}

Tensor packbits(Tensor grid, double thresh) {
  const int64_t nbytes = grid.numel() / 8;
  auto out = at::empty({nbytes}, grid.options().dtype(at::kByte));
  const float* g = grid.data_ptr<float>();
  uint8_t* o = out.data_ptr<uint8_t>();
  const float th = (float)thresh;
  at::parallel_for(0, nbytes, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint8_t bits = 0;
      for (int j = 0; j < 8; ++j) bits |= (uint8_t)((g[8 * i + j] > th) << j);
      o[i] = bits;
    }
  });
  return out;
}

namespace {
constexpr int64_t MARCH_CHUNK = 512;  // rays per chunk of march_rays_train's one marching pass

// march_ray of march_math.h (same loop, same steps), keeping each sample's (t, dt) in buf: the sample
// position is clamp(o + t * d), recomputed from t when the samples are written out.
// ONE_CASCADE: k.C == 1 seen by the compiler, which then drops march_step's cascade choice (always 0).
template <bool ONE_CASCADE>
int march_ray_ts(const MarchConsts& consts, const uint8_t* bitfield, const float* o, const float* d, float t,
                 float far, int max_count, std::vector<float>& buf) {
  MarchConsts k = consts;
  if (ONE_CASCADE) k.C = 1;
  const float rd[3] = {safe_rcp(d[0]), safe_rcp(d[1]), safe_rcp(d[2])};
  float x[3], dt;
  int count = 0;
  while (t < far && count < max_count) {
    if (march_step(k, bitfield, o, d, rd, t, x, dt)) {
      buf.push_back(t);
      buf.push_back(dt);
      ++count;
      t = t + dt;
    }
  }
  return count;
}
}  // namespace

std::vector<Tensor> march_rays_train(Tensor rays_o, Tensor rays_d, Tensor bitfield, Tensor nears, Tensor fars,
                                     Tensor noise, Tensor spec, int64_t H, int64_t C, int64_t max_samples) {
  const MarchConsts k = unpack_march(spec.data_ptr<float>(), (int)H, (int)C, (int)max_samples);
  const int64_t N = rays_o.size(0);
  const float *o = rays_o.data_ptr<float>(), *d = rays_d.data_ptr<float>();
  const float *pn = nears.data_ptr<float>(), *pf = fars.data_ptr<float>(), *nz = ptr_or_null(noise);
  const uint8_t* bf = bitfield.data_ptr<uint8_t>();
  auto rays = at::empty({N, 2}, rays_o.options().dtype(at::kInt));
  int* pr = rays.data_ptr<int>();
  // One marching pass: each chunk of rays keeps its samples' (t, dt) in its own buffer (ray i's from
  // first[i] on) and each ray's count in rays[:, 1]; then offsets are the exclusive prefix sum of the counts,
  // and each chunk writes its samples out at its rays' offsets: the output is dense and ray-major, as before
  // (the marching used to run twice, once to count and once to write). Where the CPU has AVX2, a chunk's rays
  // are marched eight at a time (march_lanes.h), which needs the bitfield in whole 32-bit words.
  const int64_t n_chunks = (N + MARCH_CHUNK - 1) / MARCH_CHUNK;
  std::vector<std::vector<float>> bufs(n_chunks);
  std::vector<int64_t> first(N);
  const bool eight_lanes = use_avx2() && bitfield.numel() % 4 == 0;
  at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<float>& buf = bufs[c];
      buf.reserve(2 * 8 * MARCH_CHUNK);
      const int64_t b = c * MARCH_CHUNK, e = std::min(N, b + MARCH_CHUNK);
#if STK_HAVE_AVX2_CLONE
      if (eight_lanes) {
        lanes::TrainRays rays(k, o, d, pn, pf, nz, b, e, pr, first.data(), buf);
        (k.C == 1 ? lanes::march<true, lanes::TrainRays> : lanes::march<false, lanes::TrainRays>)(k, bf, rays);
        continue;
      }
#endif
      for (int64_t i = b; i < e; ++i) {
        first[i] = (int64_t)(buf.size() / 2);
        pr[2 * i + 1] = (k.C == 1 ? march_ray_ts<true> : march_ray_ts<false>)(
            k, bf, o + 3 * i, d + 3 * i, perturbed_start(k, pn[i], nz, (int)i), pf[i], k.max_samples, buf);
      }
    }
  });
  int64_t M = 0;
  for (int64_t i = 0; i < N; ++i) {
    pr[2 * i] = (int)M;
    M += pr[2 * i + 1];
  }
  TORCH_CHECK(M <= INT32_MAX, "march_rays_train: more than 2^31 samples");
  auto xyzs = at::empty({M, 3}, rays_o.options()), dirs = at::empty({M, 3}, rays_o.options());
  auto ts = at::empty({M, 2}, rays_o.options());
  float *px = xyzs.data_ptr<float>(), *pd = dirs.data_ptr<float>(), *pt = ts.data_ptr<float>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      for (int64_t i = c * MARCH_CHUNK; i < std::min(N, (c + 1) * MARCH_CHUNK); ++i) {
        const float *oi = o + 3 * i, *di = d + 3 * i, *src = bufs[c].data() + 2 * first[i];
        for (int64_t s = pr[2 * i], e = s + pr[2 * i + 1]; s < e; ++s, src += 2) {
          const float t = src[0];
          for (int a = 0; a < 3; ++a) {  // march_step's sample position, the same operations
            px[3 * s + a] = minf(maxf(oi[a] + t * di[a], k.box_lo[a]), k.box_hi[a]);
            pd[3 * s + a] = di[a];
          }
          pt[2 * s] = t;
          pt[2 * s + 1] = src[1];
        }
      }
      std::vector<float>().swap(bufs[c]);
    }
  });
  return {xyzs, dirs, ts, rays};
}

std::vector<Tensor> march_rays(int64_t n_alive, int64_t n_step, Tensor rays_alive, Tensor rays_t, Tensor rays_o,
                               Tensor rays_d, Tensor fars, Tensor bitfield, Tensor noise, Tensor spec, int64_t H,
                               int64_t C) {
  const MarchConsts k = unpack_march(spec.data_ptr<float>(), (int)H, (int)C, (int)n_step);
  auto xyzs = at::zeros({n_alive * n_step, 3}, rays_o.options());
  auto dirs = at::zeros({n_alive * n_step, 3}, rays_o.options());
  auto ts = at::zeros({n_alive * n_step, 2}, rays_o.options());
  const float *o = rays_o.data_ptr<float>(), *d = rays_d.data_ptr<float>(), *pf = fars.data_ptr<float>();
  const float *prt = rays_t.data_ptr<float>(), *nz = ptr_or_null(noise);
  const int* alive = rays_alive.data_ptr<int>();
  const uint8_t* bf = bitfield.data_ptr<uint8_t>();
  float *px = xyzs.data_ptr<float>(), *pd = dirs.data_ptr<float>(), *pt = ts.data_ptr<float>();
  const bool eight_lanes = use_avx2() && bitfield.numel() % 4 == 0;  // see march_rays_train
  at::parallel_for(0, n_alive, GRAIN, [&](int64_t b, int64_t e) {
#if STK_HAVE_AVX2_CLONE
    if (eight_lanes) {
      lanes::RoundRays rays{k, o, d, pf, prt, nz, alive, b, e, (int)n_step, px, pd, pt};
      return (k.C == 1 ? lanes::march<true, lanes::RoundRays> : lanes::march<false, lanes::RoundRays>)(k, bf, rays);
    }
#endif
    for (int64_t n = b; n < e; ++n) {
      const int id = alive[n];
      if (id < 0) continue;
      const int64_t s = n * n_step;
      march_ray(k, bf, o + 3 * (int64_t)id, d + 3 * (int64_t)id, perturbed_start(k, prt[n], nz, (int)n), pf[id],
                (int)n_step, px + 3 * s, pd + 3 * s, pt + 2 * s);
    }
  });
  return {xyzs, dirs, ts};
}

std::vector<Tensor> composite_rays_train_forward(Tensor sigmas, Tensor rgbs, Tensor ts, Tensor rays, Tensor extras,
                                                 double T_thresh) {
  const int64_t N = rays.size(0), M = sigmas.size(0), E = extras.size(1);
  auto weights = at::zeros({M}, sigmas.options()), ws = at::zeros({N}, sigmas.options());
  auto depth = at::zeros({N}, sigmas.options()), image = at::zeros({N, 3}, sigmas.options());
  auto extras_sum = at::zeros({N, E}, sigmas.options());
  const float *s = sigmas.data_ptr<float>(), *c = rgbs.data_ptr<float>(), *t = ts.data_ptr<float>();
  const float* ex = extras.data_ptr<float>();
  const int* r = rays.data_ptr<int>();
  float *pw = weights.data_ptr<float>(), *pws = ws.data_ptr<float>(), *pd = depth.data_ptr<float>();
  float *pi = image.data_ptr<float>(), *pe = extras_sum.data_ptr<float>();
  at::parallel_for(0, N, GRAIN, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      composite_train_ray(s, c, t, ex, (int)E, r[2 * i], r[2 * i + 1], (float)T_thresh, pw, pws + i, pd + i,
                          pi + 3 * i, pe + E * i);
  });
  return {weights, ws, depth, image, extras_sum};
}

std::vector<Tensor> composite_rays_train_backward(Tensor g_weights, Tensor g_ws, Tensor g_depth, Tensor g_image,
                                                  Tensor g_extras, Tensor sigmas, Tensor rgbs, Tensor ts, Tensor rays,
                                                  Tensor extras, double T_thresh) {
  const int64_t N = rays.size(0), E = extras.size(1);
  auto gs = at::zeros_like(sigmas), gc = at::zeros_like(rgbs), ge = at::zeros_like(extras);
  const float *s = sigmas.data_ptr<float>(), *c = rgbs.data_ptr<float>(), *t = ts.data_ptr<float>();
  const float *ex = extras.data_ptr<float>(), *gw = g_weights.data_ptr<float>(), *gws = g_ws.data_ptr<float>();
  const float *gd = g_depth.data_ptr<float>(), *gi = g_image.data_ptr<float>(), *gex = g_extras.data_ptr<float>();
  const int* r = rays.data_ptr<int>();
  float *ps = gs.data_ptr<float>(), *pc = gc.data_ptr<float>(), *pe = ge.data_ptr<float>();
  at::parallel_for(0, N, GRAIN, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      composite_train_ray_backward(gw, gws[i], gd[i], gi + 3 * i, gex + E * i, s, c, t, ex, (int)E, r[2 * i],
                                   r[2 * i + 1], (float)T_thresh, ps, pc, pe);
  });
  return {gs, gc, ge};
}

void composite_rays(int64_t n_alive, int64_t n_step, Tensor rays_alive, Tensor rays_t, Tensor sigmas, Tensor rgbs,
                    Tensor ts, Tensor ws, Tensor depth, Tensor image, Tensor extras, Tensor extras_sum,
                    double T_thresh) {
  const int64_t E = extras.size(1);
  int* alive = rays_alive.data_ptr<int>();
  float* prt = rays_t.data_ptr<float>();
  const float *s = sigmas.data_ptr<float>(), *c = rgbs.data_ptr<float>(), *t = ts.data_ptr<float>();
  const float* ex = extras.data_ptr<float>();
  float *pws = ws.data_ptr<float>(), *pd = depth.data_ptr<float>(), *pi = image.data_ptr<float>();
  float* pe = extras_sum.data_ptr<float>();
  // Alive ids are distinct, so each slot owns its ray's accumulators: no races.
  at::parallel_for(0, n_alive, GRAIN, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      composite_infer_slot((int)n, (int)n_step, alive, prt, s, c, t, ex, (int)E, (float)T_thresh, pws, pd, pi, pe);
  });
}

}  // namespace stk::cpu
