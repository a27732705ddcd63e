// Front-to-back compositing of one ray (training, with its backward) or one slot (inference).
// alpha = 1 - exp(-sigma * dt), w = alpha * T, T *= exp(-sigma * dt); stop after T < T_thresh.
#pragma once
#include <cmath>

#include "common.h"

namespace stk {

// Forward of one training ray: samples [off, off + cnt). Outputs are this ray's rows (zeroed by caller).
HD void composite_train_ray(const float* sigmas, const float* rgbs, const float* ts, const float* extras, int E,
                            int off, int cnt, float T_thresh, float* weights, float* ws, float* depth, float* image,
                            float* extras_sum) {
  float T = 1.0f;
  for (int j = 0; j < cnt; ++j) {
    const int s = off + j;
    const float e = expf(-(sigmas[s] * ts[2 * s + 1]));
    const float w = (1.0f - e) * T;
    weights[s] = w;
    *ws += w;
    *depth += w * ts[2 * s];
    for (int c = 0; c < 3; ++c) image[c] += w * rgbs[3 * s + c];
    for (int c = 0; c < E; ++c) extras_sum[c] += w * extras[(int64_t)s * E + c];
    T *= e;
    if (T < T_thresh) break;
  }
}

// Backward of one training ray. g_* are the upstream gradients (this ray's rows, g_weights per sample).
// With v_i = dL/dw_i: dL/dsigma_i = dt_i * (T_{i+1} v_i - sum_{k>i} w_k v_k).
HD void composite_train_ray_backward(const float* g_weights, float g_ws, float g_depth, const float* g_image,
                                     const float* g_extras, const float* sigmas, const float* rgbs, const float* ts,
                                     const float* extras, int E, int off, int cnt, float T_thresh, float* g_sigmas,
                                     float* g_rgbs, float* g_extras_out) {
  float T = 1.0f, total = 0.0f;
  int used = 0;
  for (int j = 0; j < cnt; ++j) {
    const int s = off + j;
    const float e = expf(-(sigmas[s] * ts[2 * s + 1]));
    const float w = (1.0f - e) * T;
    float v = g_weights[s] + g_ws + g_depth * ts[2 * s];
    for (int c = 0; c < 3; ++c) v += g_image[c] * rgbs[3 * s + c];
    for (int c = 0; c < E; ++c) v += g_extras[c] * extras[(int64_t)s * E + c];
    total += w * v;
    T *= e;
    ++used;
    if (T < T_thresh) break;
  }
  T = 1.0f;
  float prefix = 0.0f;
  for (int j = 0; j < used; ++j) {
    const int s = off + j;
    const float dt = ts[2 * s + 1];
    const float e = expf(-(sigmas[s] * dt));
    const float w = (1.0f - e) * T;
    float v = g_weights[s] + g_ws + g_depth * ts[2 * s];
    for (int c = 0; c < 3; ++c) {
      v += g_image[c] * rgbs[3 * s + c];
      g_rgbs[3 * s + c] = w * g_image[c];
    }
    for (int c = 0; c < E; ++c) {
      v += g_extras[c] * extras[(int64_t)s * E + c];
      g_extras_out[(int64_t)s * E + c] = w * g_extras[c];
    }
    prefix += w * v;
    T *= e;
    g_sigmas[s] = dt * (T * v - (total - prefix));
  }
}

// Inference: composite slot n (n_step samples) into its ray's accumulators; marks dead rays -1.
HD void composite_infer_slot(int n, int n_step, int* rays_alive, float* rays_t, const float* sigmas,
                             const float* rgbs, const float* ts, const float* extras, int E, float T_thresh,
                             float* ws, float* depth, float* image, float* extras_sum) {
  const int id = rays_alive[n];
  if (id < 0) return;
  float T = 1.0f - ws[id];
  float t_next = rays_t[n];
  bool dead = false;
  for (int j = 0; j < n_step; ++j) {
    const int64_t s = (int64_t)n * n_step + j;
    const float dt = ts[2 * s + 1];
    if (dt == 0.0f) {
      dead = true;
      break;
    }
    const float e = expf(-(sigmas[s] * dt));
    const float w = (1.0f - e) * T;
    ws[id] += w;
    depth[id] += w * ts[2 * s];
    for (int c = 0; c < 3; ++c) image[3 * (int64_t)id + c] += w * rgbs[3 * s + c];
    for (int c = 0; c < E; ++c) extras_sum[(int64_t)id * E + c] += w * extras[s * E + c];
    T *= e;
    t_next = ts[2 * s] + dt;
    if (T < T_thresh) {
      dead = true;
      break;
    }
  }
  if (dead)
    rays_alive[n] = -1;
  else
    rays_t[n] = t_next;
}

}  // namespace stk
