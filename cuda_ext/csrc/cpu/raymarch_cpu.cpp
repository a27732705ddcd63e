// CPU ray marching and compositing: loops over rays on ATen's (OpenMP) thread pool around the shared math.
#include <ATen/Parallel.h>

#include "composite_math.h"
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

std::vector<Tensor> march_rays_train(Tensor rays_o, Tensor rays_d, Tensor bitfield, Tensor nears, Tensor fars,
                                     Tensor noise, Tensor spec, int64_t H, int64_t C, int64_t max_samples) {
  const MarchConsts k = unpack_march(spec.data_ptr<float>(), (int)H, (int)C, (int)max_samples);
  const int64_t N = rays_o.size(0);
  const float *o = rays_o.data_ptr<float>(), *d = rays_d.data_ptr<float>();
  const float *pn = nears.data_ptr<float>(), *pf = fars.data_ptr<float>(), *nz = ptr_or_null(noise);
  const uint8_t* bf = bitfield.data_ptr<uint8_t>();
  auto counts = at::empty({N}, rays_o.options().dtype(at::kLong));
  int64_t* cnt = counts.data_ptr<int64_t>();
  // Pass 1 counts, pass 2 writes at the exclusive prefix sum: the output is dense and ray-major.
  at::parallel_for(0, N, GRAIN, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      cnt[i] = march_ray(k, bf, o + 3 * i, d + 3 * i, perturbed_start(k, pn[i], nz, (int)i), pf[i], k.max_samples,
                         nullptr, nullptr, nullptr);
  });
  auto offsets = counts.cumsum(0) - counts;
  const int64_t M = N ? counts.sum().item<int64_t>() : 0;
  auto xyzs = at::empty({M, 3}, rays_o.options()), dirs = at::empty({M, 3}, rays_o.options());
  auto ts = at::empty({M, 2}, rays_o.options());
  const int64_t* off = offsets.data_ptr<int64_t>();
  float *px = xyzs.data_ptr<float>(), *pd = dirs.data_ptr<float>(), *pt = ts.data_ptr<float>();
  at::parallel_for(0, N, GRAIN, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      march_ray(k, bf, o + 3 * i, d + 3 * i, perturbed_start(k, pn[i], nz, (int)i), pf[i], k.max_samples,
                px + 3 * off[i], pd + 3 * off[i], pt + 2 * off[i]);
  });
  auto rays = at::stack({offsets, counts}, 1).to(at::kInt);
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
  at::parallel_for(0, n_alive, GRAIN, [&](int64_t b, int64_t e) {
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
