// The per-element math of mindspore_accum: the single source of truth.
//
// Every kernel (CPU, CUDA, and the CUDA source run on the host through the shim) calls these
// functions; nothing else in the project restates the formulas. All arithmetic is float32.
#pragma once

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

// ---- the two operations ----

// accumulate: acc += scale * grad
MSACCUM_HD float accumulate_value(float acc, float grad, float scale) { return acc + scale * grad; }

// Hyper-parameters of one momentum_flush call for one tensor.
struct MomentumArgs {
  float lr;
  float momentum;
  float grad_scale;    // 1 / (micro-batches in the window * loss scale)
  float weight_decay;  // coupled L2 on the unscaled gradient, as nn.Momentum
};

// momentum_flush for one element. `summed_grad` is acc + grad (or whichever of them exists).
//   g = summed_grad * grad_scale + weight_decay * param
//   v = momentum * v + g
//   param -= lr * (g + momentum * v)   (nesterov)   |   lr * v   (plain)
// The caller then stores 0 into the accumulator.
template <bool kNesterov>
MSACCUM_HD void momentum_value(float& param, float& moment, float summed_grad, const MomentumArgs& a) {
  const float g = summed_grad * a.grad_scale + a.weight_decay * param;
  const float v = a.momentum * moment + g;
  moment = v;
  param = kNesterov ? param - a.lr * (g + a.momentum * v) : param - a.lr * v;
}

// ---- sum of squares: the window-end check (non-finite values, global norm for clipping) ----

// One element's contribution: its square in float32, like the rest of the math. NaN and inf
// propagate to the sum, and so does overflow (|x| > ~1.8e19): such a window counts as non-finite.
// Kernels add the squares in float32 over runs of at most a few hundred elements and add the
// runs' sums in double, so the result's error stays near float32 rounding of the total
// whatever the tensor sizes.
MSACCUM_HD float square_value(float x) { return x * x; }

}  // namespace msaccum
