// Span kernels, compiled once per vector ISA (see kernels_{baseline,avx2,avx512}.cpp).
// The inner loops are plain loops over float32 that call accum_math.h; the compiler
// vectorises them for the ISA of the including file. Reduced-precision gradients are widened
// block by block into a float32 buffer in L1 first (the widening is exact).
#pragma once

#include <immintrin.h>

// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized inside _mm512_cvtph_ps (a false positive
// in the header's own temporaries); warnings stay errors everywhere else.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>

#include "../accum_math.h"
#include "cpu_kernels.h"

namespace msaccum {
namespace cpu {
namespace MSACCUM_ISA_NS {

constexpr int64_t kBlock = 1024;  // elements widened at a time: 4 KiB of float32

inline void widen(const void* src, GradType type, int64_t n, float* __restrict dst) {
  const uint16_t* bits = static_cast<const uint16_t*>(src);
  if (type == GradType::kBFloat16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(bits[i]);
    return;
  }
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i))));
#endif
  for (; i < n; ++i) dst[i] = half_bits_to_float(bits[i]);
}

inline void accumulate_f32(float* __restrict acc, const float* __restrict grad, int64_t n, float scale) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) acc[i] = accumulate_value(acc[i], grad[i], scale);
}

void accumulate_span(float* acc, const void* grad, GradType type, int64_t n, float scale) {
  if (type == GradType::kFloat32) {
    accumulate_f32(acc, static_cast<const float*>(grad), n, scale);
    return;
  }
  alignas(64) float buffer[kBlock];
  const uint16_t* bits = static_cast<const uint16_t*>(grad);
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(bits + start, type, len, buffer);
    accumulate_f32(acc + start, buffer, len, scale);
  }
}

// acc = scale * grad: acc is only written (8 B/element for float32 gradients instead of 12).
inline void assign_f32(float* __restrict acc, const float* __restrict grad, int64_t n, float scale) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) acc[i] = assign_value(grad[i], scale);
}

void assign_span(float* acc, const void* grad, GradType type, int64_t n, float scale) {
  if (type == GradType::kFloat32) {
    assign_f32(acc, static_cast<const float*>(grad), n, scale);
    return;
  }
  alignas(64) float buffer[kBlock];
  const uint16_t* bits = static_cast<const uint16_t*>(grad);
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(bits + start, type, len, buffer);
    assign_f32(acc + start, buffer, len, scale);
  }
}

// summed = acc + grad (either may be absent); then the momentum update; acc is zeroed.
template <bool kNesterov, bool kHasAcc, bool kHasGrad>
inline void flush_f32(float* __restrict param, float* __restrict moment, float* __restrict acc,
                      const float* __restrict grad, int64_t n, const MomentumArgs& args) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float summed = 0.0f;
    if (kHasAcc) summed = acc[i];
    if (kHasGrad) summed = kHasAcc ? summed + grad[i] : grad[i];
    momentum_value<kNesterov>(param[i], moment[i], summed, args);
    if (kHasAcc) acc[i] = 0.0f;
  }
}

template <bool kNesterov>
inline void flush_dispatch(float* param, float* moment, float* acc, const float* grad, int64_t n,
                           const MomentumArgs& args) {
  if (acc && grad) flush_f32<kNesterov, true, true>(param, moment, acc, grad, n, args);
  else if (acc) flush_f32<kNesterov, true, false>(param, moment, acc, grad, n, args);
  else if (grad) flush_f32<kNesterov, false, true>(param, moment, acc, grad, n, args);
  else flush_f32<kNesterov, false, false>(param, moment, acc, grad, n, args);
}

void flush_span(float* param, float* moment, float* acc, const void* grad, GradType type, int64_t n,
                float weight_decay, const FlushScalars& s) {
  const MomentumArgs args{s.lr, s.momentum, s.grad_scale, weight_decay};
  auto run = [&](int64_t start, int64_t len, const float* g) {
    float* a = acc ? acc + start : nullptr;
    if (s.nesterov) flush_dispatch<true>(param + start, moment + start, a, g, len, args);
    else flush_dispatch<false>(param + start, moment + start, a, g, len, args);
  };
  if (grad == nullptr || type == GradType::kFloat32) {
    run(0, n, static_cast<const float*>(grad));
    return;
  }
  alignas(64) float buffer[kBlock];
  const uint16_t* bits = static_cast<const uint16_t*>(grad);
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(bits + start, type, len, buffer);
    run(start, len, buffer);
  }
}

// summed = acc + grad (either may be absent); then the AdamW update; acc is zeroed.
template <bool kHasAcc, bool kHasGrad>
inline void adamw_f32(float* __restrict param, float* __restrict exp_avg, float* __restrict exp_avg_sq,
                      float* __restrict acc, const float* __restrict grad, int64_t n, const AdamWArgs& args) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float summed = 0.0f;
    if (kHasAcc) summed = acc[i];
    if (kHasGrad) summed = kHasAcc ? summed + grad[i] : grad[i];
    adamw_value(param[i], exp_avg[i], exp_avg_sq[i], summed, args);
    if (kHasAcc) acc[i] = 0.0f;
  }
}

void adamw_span(float* param, float* exp_avg, float* exp_avg_sq, float* acc, const void* grad, GradType type,
                int64_t n, float weight_decay, const AdamWScalars& s) {
  const AdamWArgs args{s.lr, s.beta1, s.beta2, s.eps, s.grad_scale, s.bias_correction1, s.bias_correction2,
                       weight_decay};
  auto run = [&](int64_t start, int64_t len, const float* g) {
    float* p = param + start;
    float* m = exp_avg + start;
    float* v = exp_avg_sq + start;
    float* a = acc ? acc + start : nullptr;
    if (a && g) adamw_f32<true, true>(p, m, v, a, g, len, args);
    else if (a) adamw_f32<true, false>(p, m, v, a, g, len, args);
    else if (g) adamw_f32<false, true>(p, m, v, a, g, len, args);
    else adamw_f32<false, false>(p, m, v, a, g, len, args);
  };
  if (grad == nullptr || type == GradType::kFloat32) {
    run(0, n, static_cast<const float*>(grad));
    return;
  }
  alignas(64) float buffer[kBlock];
  const uint16_t* bits = static_cast<const uint16_t*>(grad);
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(bits + start, type, len, buffer);
    run(start, len, buffer);
  }
}

// Squares added in float32 over kLanes independent lanes (the compiler maps them onto vector
// registers; a single running sum could not be vectorised without reassociation), each lane
// summing at most kBlock / kLanes = 64 terms; the lanes of each block are added in double.
constexpr int kLanes = 16;

inline double sum_squares_f32(const float* __restrict x, int64_t n) {
  double total = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const float* block = x + start;
    float lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
      for (int j = 0; j < kLanes; ++j) lanes[j] += square_value(block[i + j]);
    for (int j = 0; i + j < len; ++j) lanes[j] += square_value(block[i + j]);
    double block_sum = 0.0;
    for (int j = 0; j < kLanes; ++j) block_sum += lanes[j];
    total += block_sum;
  }
  return total;
}

double sum_squares_span(const void* x, GradType type, int64_t n) {
  if (type == GradType::kFloat32) return sum_squares_f32(static_cast<const float*>(x), n);
  alignas(64) float buffer[kBlock];
  const uint16_t* bits = static_cast<const uint16_t*>(x);
  double total = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(bits + start, type, len, buffer);
    total += sum_squares_f32(buffer, len);
  }
  return total;
}

void axpy_span(float* __restrict a, const float* __restrict b, int64_t n, float s) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) a[i] += s * b[i];
}

}  // namespace MSACCUM_ISA_NS
}  // namespace cpu
}  // namespace msaccum
