// The span kernels (cpu_kernels.h SpanKernels): one source, compiled once per vector ISA by
// CMakeLists.txt with -DMSACCUM_ISA=baseline|avx2|avx512 and that ISA's flags; cpu_kernels.cpp
// picks one set at run time. The inner loops are plain loops over float32 that call
// accum_math.h; the compiler vectorises them for the ISA. Reduced-precision gradients are widened
// block by block into a float32 buffer in L1 first (the widening is exact), by for_each_widened,
// the one widen-then-compute loop every kernel uses.
#ifndef MSACCUM_ISA
#error "compile with -DMSACCUM_ISA=baseline, avx2 or avx512 (and that ISA's flags, see CMakeLists.txt)"
#endif

#include <immintrin.h>

// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized inside _mm512_cvtph_ps (a false positive
// in the header's own temporaries); warnings stay errors everywhere else.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <type_traits>

#include "../accum_math.h"
#include "cpu_kernels.h"

#define MSACCUM_CAT_(a, b) a##b
#define MSACCUM_CAT(a, b) MSACCUM_CAT_(a, b)
#define MSACCUM_ISA_NS MSACCUM_CAT(isa_, MSACCUM_ISA)

namespace msaccum {
namespace cpu {
namespace MSACCUM_ISA_NS {
namespace {

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

// The widen-then-compute loop: calls body(start, len, g) over [0, n), g pointing at the float32
// gradient of elements [start, start + len). A float32 (or absent: g null) gradient is passed
// through in one piece; float16/bfloat16 is widened kBlock elements at a time.
template <typename Body>
inline void for_each_widened(const void* grad, GradType type, int64_t n, Body&& body) {
  if (grad == nullptr || type == GradType::kFloat32) {
    body(int64_t{0}, n, static_cast<const float*>(grad));
    return;
  }
  alignas(64) float buffer[kBlock];
  const uint16_t* bits = static_cast<const uint16_t*>(grad);
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(bits + start, type, len, buffer);
    body(start, len, static_cast<const float*>(buffer));
  }
}

// Calls fn(has_acc, has_grad) with std::true_type/std::false_type for whether acc and grad are
// given: the update loops are instantiated per presence pattern, with no test in the loop.
template <typename Fn>
inline void with_presence(const float* acc, const float* grad, Fn&& fn) {
  if (acc && grad) fn(std::true_type{}, std::true_type{});
  else if (acc) fn(std::true_type{}, std::false_type{});
  else if (grad) fn(std::false_type{}, std::true_type{});
  else fn(std::false_type{}, std::false_type{});
}

// acc += scale * grad, or (kOverwrite) acc = scale * grad: acc is then only written (8 B/element
// for float32 gradients instead of 12).
template <bool kOverwrite>
inline void accumulate_f32(float* __restrict acc, const float* __restrict grad, int64_t n, float scale) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i)
    acc[i] = kOverwrite ? assign_value(grad[i], scale) : accumulate_value(acc[i], grad[i], scale);
}

template <bool kOverwrite>
void accumulate_span(float* acc, const void* grad, GradType type, int64_t n, float scale) {
  for_each_widened(grad, type, n, [&](int64_t start, int64_t len, const float* g) {
    accumulate_f32<kOverwrite>(acc + start, g, len, scale);
  });
}

// summed = acc + grad (either may be absent); then the momentum update; a given acc is zeroed.
template <bool kNesterov, bool kHasAcc, bool kHasGrad>
inline void momentum_f32(float* __restrict param, float* __restrict moment, float* __restrict acc,
                         const float* __restrict grad, int64_t n, const MomentumArgs& args) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const float summed = summed_grad<kHasAcc, kHasGrad>(kHasAcc ? acc[i] : 0.0f, kHasGrad ? grad[i] : 0.0f);
    momentum_value<kNesterov>(param[i], moment[i], summed, args);
    if (kHasAcc) acc[i] = 0.0f;
  }
}

void momentum_update_span(float* param, float* moment, float* acc, const void* grad, GradType type, int64_t n,
                          float weight_decay, const MomentumScalars& s) {
  const MomentumArgs args{s.lr, s.momentum, s.grad_scale, weight_decay};
  for_each_widened(grad, type, n, [&](int64_t start, int64_t len, const float* g) {
    float* a = acc ? acc + start : nullptr;
    with_presence(a, g, [&](auto has_acc, auto has_grad) {
      constexpr bool kHasAcc = decltype(has_acc)::value, kHasGrad = decltype(has_grad)::value;
      if (s.nesterov) momentum_f32<true, kHasAcc, kHasGrad>(param + start, moment + start, a, g, len, args);
      else momentum_f32<false, kHasAcc, kHasGrad>(param + start, moment + start, a, g, len, args);
    });
  });
}

// summed = acc + grad (either may be absent); then the AdamW update; a given acc is zeroed.
template <bool kHasAcc, bool kHasGrad>
inline void adamw_f32(float* __restrict param, float* __restrict exp_avg, float* __restrict exp_avg_sq,
                      float* __restrict acc, const float* __restrict grad, int64_t n, const AdamWArgs& args) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const float summed = summed_grad<kHasAcc, kHasGrad>(kHasAcc ? acc[i] : 0.0f, kHasGrad ? grad[i] : 0.0f);
    adamw_value(param[i], exp_avg[i], exp_avg_sq[i], summed, args);
    if (kHasAcc) acc[i] = 0.0f;
  }
}

void adamw_update_span(float* param, float* exp_avg, float* exp_avg_sq, float* acc, const void* grad, GradType type,
                       int64_t n, float weight_decay, const AdamWScalars& s) {
  const AdamWArgs args{s.lr, s.beta1, s.beta2, s.eps, s.grad_scale, s.bias_correction1, s.bias_correction2,
                       weight_decay};
  for_each_widened(grad, type, n, [&](int64_t start, int64_t len, const float* g) {
    float* a = acc ? acc + start : nullptr;
    with_presence(a, g, [&](auto has_acc, auto has_grad) {
      adamw_f32<decltype(has_acc)::value, decltype(has_grad)::value>(param + start, exp_avg + start,
                                                                      exp_avg_sq + start, a, g, len, args);
    });
  });
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

// The same blocks whether the input is float32 or widened (kBlock elements either way), so the
// sum does not depend on the input type's path. 0.0 + s is s for every sum of squares (>= +0, inf
// or NaN).
double sum_squares_span(const void* x, GradType type, int64_t n) {
  double total = 0.0;
  for_each_widened(x, type, n, [&](int64_t, int64_t len, const float* v) { total += sum_squares_f32(v, len); });
  return total;
}

// ---- LAMB and LARS: the passes of accum_math.h; squares added as sum_squares_f32 adds them ----

// LAMB pass 1 over one block (n <= kBlock): moments, u into `u`, then the block's squares.
template <bool kHasAcc, bool kHasGrad>
inline void lamb_moments_f32(const float* __restrict param, float* __restrict exp_avg, float* __restrict exp_avg_sq,
                             float* __restrict acc, const float* __restrict grad, int64_t n, const LambArgs& args,
                             double* sums) {
  alignas(64) float u[kBlock];
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const float summed = summed_grad<kHasAcc, kHasGrad>(kHasAcc ? acc[i] : 0.0f, kHasGrad ? grad[i] : 0.0f);
    u[i] = lamb_moments(param[i], exp_avg[i], exp_avg_sq[i], summed, args);
    if (kHasAcc) acc[i] = 0.0f;
  }
  sums[0] += sum_squares_f32(param, n);
  sums[1] += sum_squares_f32(u, n);
}

void lamb_moments_span(const float* param, float* exp_avg, float* exp_avg_sq, float* acc, const void* grad,
                       GradType type, int64_t n, const LambArgs& args, double* sums) {
  // Blocks of kBlock from the span's start whatever the gradient type, so the sums are the same.
  for_each_widened(grad, type, n, [&](int64_t start, int64_t len, const float* g) {
    for (int64_t b = 0; b < len; b += kBlock) {
      const int64_t at = start + b, bl = std::min(kBlock, len - b);
      float* a = acc ? acc + at : nullptr;
      const float* gb = g ? g + b : nullptr;
      with_presence(a, gb, [&](auto has_acc, auto has_grad) {
        lamb_moments_f32<decltype(has_acc)::value, decltype(has_grad)::value>(
            param + at, exp_avg + at, exp_avg_sq + at, a, gb, bl, args, sums);
      });
    }
  });
}

void lamb_apply_span(float* __restrict param, const float* __restrict exp_avg, const float* __restrict exp_avg_sq,
                     int64_t n, float lr_ratio, const LambArgs& args) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) lamb_apply(param[i], exp_avg[i], exp_avg_sq[i], lr_ratio, args);
}

// LARS pass 1: the squares of param and of the summed gradient, block by block.
void lars_norms_span(const float* param, const float* acc, const void* grad, GradType type, int64_t n, double* sums) {
  alignas(64) float summed[kBlock];
  for_each_widened(grad, type, n, [&](int64_t start, int64_t len, const float* g) {
    for (int64_t b = 0; b < len; b += kBlock) {
      const int64_t at = start + b, bl = std::min(kBlock, len - b);
      const float* a = acc ? acc + at : nullptr;
      const float* gb = g ? g + b : nullptr;
      with_presence(a, gb, [&](auto has_acc, auto has_grad) {
        constexpr bool kHasAcc = decltype(has_acc)::value, kHasGrad = decltype(has_grad)::value;
#pragma GCC ivdep
        for (int64_t i = 0; i < bl; ++i)
          summed[i] = summed_grad<kHasAcc, kHasGrad>(kHasAcc ? a[i] : 0.0f, kHasGrad ? gb[i] : 0.0f);
      });
      sums[0] += sum_squares_f32(param + at, bl);
      sums[1] += sum_squares_f32(summed, bl);
    }
  });
}

template <bool kHasAcc, bool kHasGrad>
inline void lars_f32(float* __restrict param, float* __restrict moment, float* __restrict acc,
                     const float* __restrict grad, int64_t n, const LarsArgs& args) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const float summed = summed_grad<kHasAcc, kHasGrad>(kHasAcc ? acc[i] : 0.0f, kHasGrad ? grad[i] : 0.0f);
    lars_value(param[i], moment[i], summed, args);
    if (kHasAcc) acc[i] = 0.0f;
  }
}

void lars_apply_span(float* param, float* moment, float* acc, const void* grad, GradType type, int64_t n,
                     const LarsArgs& args) {
  for_each_widened(grad, type, n, [&](int64_t start, int64_t len, const float* g) {
    float* a = acc ? acc + start : nullptr;
    with_presence(a, g, [&](auto has_acc, auto has_grad) {
      lars_f32<decltype(has_acc)::value, decltype(has_grad)::value>(param + start, moment + start, a, g, len, args);
    });
  });
}

void axpy_span(float* __restrict a, const float* __restrict b, int64_t n, float s) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) a[i] += s * b[i];
}

}  // namespace
}  // namespace MSACCUM_ISA_NS

const SpanKernels& MSACCUM_CAT(span_kernels_, MSACCUM_ISA)() {
  namespace isa = MSACCUM_ISA_NS;
  static const SpanKernels kernels{isa::accumulate_span<false>, isa::accumulate_span<true>,
                                   isa::momentum_update_span,  isa::adamw_update_span,
                                   isa::lamb_moments_span,     isa::lamb_apply_span,
                                   isa::lars_norms_span,       isa::lars_apply_span,
                                   isa::axpy_span,             isa::sum_squares_span};
  return kernels;
}

}  // namespace cpu
}  // namespace msaccum
