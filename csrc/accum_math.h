// The per-element math of mindspore_accum: the single source of truth.
//
// Every kernel (CPU, CUDA, and the CUDA source run on the host through the shim) calls these
// functions; nothing else in the project restates the formulas. All arithmetic is float32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(MSACCUM_HOST_SHIM)
#define MSACCUM_HD __host__ __device__ __forceinline__
#else
#define MSACCUM_HD inline __attribute__((always_inline))
#endif

namespace msaccum {

// ---- gradient widening (exact: every float16/bfloat16 value is representable in float32) ----

MSACCUM_HD float bf16_bits_to_float(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float out;
  memcpy(&out, &word, sizeof(out));
  return out;
}

MSACCUM_HD float half_bits_to_float(uint16_t bits) {
  // IEEE binary16 -> binary32, including subnormals, inf and nan (payload kept).
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t word;
  if (exponent == 0x1fu) {
    word = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    word = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    word = sign;
  } else {  // subnormal: normalise
    exponent = 113u;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    word = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float out;
  memcpy(&out, &word, sizeof(out));
  return out;
}

// ---- the operations ----

// accumulate: acc += scale * grad
MSACCUM_HD float accumulate_value(float acc, float grad, float scale) { return acc + scale * grad; }

// accumulate with overwrite (the first micro-batch of a window): acc = scale * grad. The previous
// accumulator is never read, so whatever it held (NaN, inf, garbage) cannot reach the result.
MSACCUM_HD float assign_value(float grad, float scale) { return scale * grad; }

// The gradient the update kernels apply, from the window's accumulator and/or the last
// micro-batch's gradient (a kernel is given either or both; kHasAcc/kHasGrad say which).
template <bool kHasAcc, bool kHasGrad>
MSACCUM_HD float summed_grad(float acc, float grad) {
  float summed = 0.0f;
  if (kHasAcc) summed = acc;
  if (kHasGrad) summed = kHasAcc ? summed + grad : grad;
  return summed;
}

// grad_scale (both updates) = 1 / (items * loss scale) * clip factor: items is what the window's
// gradients are a sum over (micro-batches, or samples/tokens with a per-item loss contract), the
// clip factor is 1 or max_norm / global norm (the caller computes it from sum_of_squares).

// Hyper-parameters of one momentum_update call for one tensor.
struct MomentumArgs {
  float lr;
  float momentum;
  float grad_scale;    // 1 / (items * loss scale) * clip factor (above)
  float weight_decay;  // coupled L2 on the unscaled gradient, as nn.Momentum
};

// momentum_update for one element. `summed_grad` is acc + grad (or whichever of them exists).
//   g = summed_grad * grad_scale + weight_decay * param
//   v = momentum * v + g
//   param -= lr * (g + momentum * v)   (nesterov)   |   lr * v   (plain)
// A kernel given an accumulator then stores 0 into it.
template <bool kNesterov>
MSACCUM_HD void momentum_value(float& param, float& moment, float summed_grad, const MomentumArgs& a) {
  const float g = summed_grad * a.grad_scale + a.weight_decay * param;
  const float v = a.momentum * moment + g;
  moment = v;
  param = kNesterov ? param - a.lr * (g + a.momentum * v) : param - a.lr * v;
}

// Hyper-parameters of one adamw_update call for one tensor. The bias corrections are
// 1 - beta1^t and 1 - beta2^t (torch.optim.AdamW, mint.optim.AdamW), computed by the caller, or
// exactly 1 without bias correction (nn.AdamWeightDecay).
struct AdamWArgs {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float grad_scale;        // 1 / (items * loss scale) * clip factor (above)
  float bias_correction1;  // 1 - beta1^t, or 1
  float bias_correction2;  // 1 - beta2^t, or 1
  float weight_decay;      // decoupled: param -= lr * weight_decay * param (on the old param)
};

// adamw_update for one element. `summed_grad` is acc + grad (or whichever of them exists).
//   g = summed_grad * grad_scale
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   u = (m / bias_correction1) / (sqrt(v) / sqrt(bias_correction2) + eps)
//   param = param - lr * weight_decay * param - lr * u
// A kernel given an accumulator then stores 0 into it.
MSACCUM_HD void adamw_value(float& param, float& exp_avg, float& exp_avg_sq, float summed_grad, const AdamWArgs& a) {
  const float g = summed_grad * a.grad_scale;
  const float m = a.beta1 * exp_avg + (1.0f - a.beta1) * g;
  const float v = a.beta2 * exp_avg_sq + (1.0f - a.beta2) * g * g;
  exp_avg = m;
  exp_avg_sq = v;
  const float u = (m / a.bias_correction1) / (sqrtf(v) / sqrtf(a.bias_correction2) + a.eps);
  param = param - a.lr * a.weight_decay * param - a.lr * u;
}

// ---- the layer-wise adaptive updates (LAMB, LARS): two passes per window ----
//
// Their step depends on per-tensor norms, so a window end is two passes over the tensors: the
// first computes what the norms need (and, for LAMB, the new moments), the kernels add each
// tensor's squares as sum_of_squares does (float32 runs, double sums), the second applies the
// step with the tensor's ratio.

// Hyper-parameters of one lamb_update call for one tensor (the bias corrections as AdamWArgs).
struct LambArgs {
  float beta1;
  float beta2;
  float eps;
  float grad_scale;        // 1 / (items * loss scale) * clip factor (above)
  float bias_correction1;  // 1 - beta1^t
  float bias_correction2;  // 1 - beta2^t
  float weight_decay;      // lambda, inside the direction u (LAMB's decoupled decay)
};

// LAMB's direction from the new moments: u = m_hat / (sqrt(v_hat) + eps) + weight_decay * param.
MSACCUM_HD float lamb_direction(float param, float m, float v, const LambArgs& a) {
  return (m / a.bias_correction1) / (sqrtf(v / a.bias_correction2) + a.eps) + a.weight_decay * param;
}

// LAMB pass 1 for one element: the moments from g = summed_grad * grad_scale, then u (returned;
// the kernels add param^2 and u^2 of the tensor).
//   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
MSACCUM_HD float lamb_moments(float param, float& exp_avg, float& exp_avg_sq, float summed_grad, const LambArgs& a) {
  const float g = summed_grad * a.grad_scale;
  const float m = a.beta1 * exp_avg + (1.0f - a.beta1) * g;
  const float v = a.beta2 * exp_avg_sq + (1.0f - a.beta2) * g * g;
  exp_avg = m;
  exp_avg_sq = v;
  return lamb_direction(param, m, v, a);
}

// LAMB's trust ratio of a tensor: r = ||w|| / ||u||, 1 if either norm is 0 (You et al. 2019;
// nn.Lamb also clips r to [0, 10], which this does not).
MSACCUM_HD float lamb_ratio(float w_norm, float u_norm) {
  return (w_norm > 0.0f && u_norm > 0.0f) ? w_norm / u_norm : 1.0f;
}

// LAMB pass 2 for one element: param -= lr * r * u, u recomputed from the pass-1 moments.
MSACCUM_HD void lamb_apply(float& param, float exp_avg, float exp_avg_sq, float lr_ratio, const LambArgs& a) {
  param = param - lr_ratio * lamb_direction(param, exp_avg, exp_avg_sq, a);
}

// LARS's trust ratio of a tensor (nn.LARS, You et al. 2017), g the mean gradient:
//   trust = coefficient * ||w|| / (||g|| + weight_decay * ||w|| + epsilon), 1 if ||w|| or ||g|| is 0.
MSACCUM_HD float lars_trust(float w_norm, float g_norm, float coefficient, float weight_decay, float epsilon) {
  return (w_norm > 0.0f && g_norm > 0.0f) ? coefficient * w_norm / (g_norm + weight_decay * w_norm + epsilon)
                                          : 1.0f;
}

// Hyper-parameters of the LARS step (pass 2) for one tensor.
struct LarsArgs {
  float lr;
  float momentum;
  float grad_scale;    // 1 / (items * loss scale) * clip factor (above)
  float weight_decay;  // lambda where the tensor takes LARS, else 0
  float trust;         // lars_trust(...) where the tensor takes LARS, else 1
};

// LARS pass 2 for one element:
//   g = summed_grad * grad_scale;  d = trust * (g + weight_decay * param);  v = momentum * v + d;  param -= lr * v
MSACCUM_HD void lars_value(float& param, float& moment, float summed_grad, const LarsArgs& a) {
  const float g = summed_grad * a.grad_scale;
  const float d = a.trust * (g + a.weight_decay * param);
  const float v = a.momentum * moment + d;
  moment = v;
  param = param - a.lr * v;
}

// ---- sum of squares: the window-end check (non-finite values, global norm for clipping) ----

// One element's contribution: its square in float32, like the rest of the math. NaN and inf
// propagate to the sum, and so does overflow (|x| > ~1.8e19): such a window counts as non-finite.
// Kernels add the squares in float32 over runs of at most a few hundred elements and add the
// runs' sums in double, so the result's error stays near float32 rounding of the total
// whatever the tensor sizes.
MSACCUM_HD float square_value(float x) { return x * x; }

}  // namespace msaccum
