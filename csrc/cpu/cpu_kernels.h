// CPU kernels over lists of tensors: one call covers every tensor, split across threads in
// balanced, cache-line aligned ranges of the concatenated element space.
#pragma once

#include <cstdint>
#include <vector>

#include "../accum_math.h"
#include "../kernel_api.h"

namespace msaccum {
namespace cpu {
// The API of libmsaccum_kernels.so (the one kernel library that _C and libmsaccum_aot.so both
// link): exported; everything after the matching pop stays internal to the library.
#pragma GCC visibility push(default)

// overwrite: acc = scale * grad, never reading acc (the first micro-batch of a window).
void accumulate(const std::vector<AccumulateTensor>& tensors, float scale, bool overwrite = false);
// The window-end updates: a given acc is read, then set to 0 (kernel_api.h).
void momentum_update(const std::vector<MomentumTensor>& tensors, const MomentumScalars& scalars);
void adamw_update(const std::vector<AdamWTensor>& tensors, const AdamWScalars& scalars);
// The layer-wise adaptive updates, two passes each (accum_math.h). The per-tensor sums of squares
// are added as sum_of_squares adds its total (chunks of kSquaresChunk, double, in chunk order), so
// they and the update do not depend on the thread count.
//   lamb_update: pass 1 reads param, the moments and acc/grad, writes the moments (and acc = 0),
//                sums param^2 and u^2 per tensor; pass 2 reads param and the moments, writes param.
//   lars_update: pass 1 reads param and acc/grad, sums param^2 and summed^2 per tensor (tensors
//                without LARS skip it); pass 2 is the momentum step with the tensor's trust ratio.
// `ratios` (if not null) receives one value per tensor: LAMB's r, LARS's trust (1 without LARS).
void lamb_update(const std::vector<LambTensor>& tensors, const LambScalars& scalars, float* ratios = nullptr);
void lars_update(const std::vector<LarsTensor>& tensors, const LarsScalars& scalars, float* ratios = nullptr);

// Sum over every element of every tensor of its square (accum_math.h square_value), in one
// multi-threaded pass. The result depends on the vector ISA but not on the thread count:
//   - every tensor is cut into chunks of kSquaresChunk elements from its first element (the
//     last chunk of a tensor is shorter; an empty tensor has no chunk);
//   - chunks are numbered tensor by tensor, in list order, then by position in the tensor;
//   - a chunk is summed by the ISA's span kernel from the chunk's first element (float32 squares
//     in 16 lanes over 1,024-element blocks, lanes and blocks added in double), whichever
//     thread runs it, and its double sum is stored at its number;
//   - the chunk sums are added in double in chunk-number order, by the calling thread.
// Threads take contiguous runs of chunks balanced by elements; which thread runs a chunk never
// changes its value or where it is added.
constexpr int64_t kSquaresChunk = int64_t{1} << 16;  // 64 Ki elements
double sum_of_squares(const std::vector<SquaresTensor>& tensors);

// In-place a += s * b over float32 lists with the same threading: the bandwidth ceiling that
// benchmarks compare against (12 B/element, no widening, no extra logic).
void axpy_ceiling(const std::vector<float*>& a, const std::vector<const float*>& b,
                  const std::vector<int64_t>& numel, float s);

// Sets every element of the listed float32 tensors to zero. The package no longer resets
// accumulators (the first micro-batch of a window overwrites them): only the test-only AOT entry
// MsAccumZero (tests/cpp/aot_test_entries.cpp) calls this.
void zero(const std::vector<float*>& tensors, const std::vector<int64_t>& numel);

int num_threads();
void set_num_threads(int n);  // n <= 0: back to the default; at most 256
const char* vector_isa();     // "avx512", "avx2" or "baseline"
// Selects the span kernels of `isa` ("avx512", "avx2", "baseline"); false if this CPU lacks it.
bool set_vector_isa(const char* isa);

// Introspection, for tests: worker threads the pool has started in this process (each named
// "msaccum-pool"), and how many kernel calls have run with the span kernels of `isa`.
int pool_workers();
long long kernel_calls(const char* isa);

#pragma GCC visibility pop

// Per-ISA span kernels: one contiguous piece of one tensor, pointers already offset (defined once
// in span_kernels_isa.cpp, which CMakeLists.txt compiles once per ISA).
struct SpanKernels {
  void (*accumulate)(float* acc, const void* grad, GradType type, int64_t n, float scale);
  void (*assign)(float* acc, const void* grad, GradType type, int64_t n, float scale);  // acc = scale * grad
  void (*momentum_update)(float* param, float* moment, float* acc, const void* grad, GradType type, int64_t n,
                          float weight_decay, const MomentumScalars& s);
  void (*adamw_update)(float* param, float* exp_avg, float* exp_avg_sq, float* acc, const void* grad,
                       GradType type, int64_t n, float weight_decay, const AdamWScalars& s);
  // LAMB pass 1: moments updated, acc (if given) zeroed; sums[0] += sum param^2, sums[1] += sum u^2.
  void (*lamb_moments)(const float* param, float* exp_avg, float* exp_avg_sq, float* acc, const void* grad,
                       GradType type, int64_t n, const LambArgs& a, double* sums);
  // LAMB pass 2: param -= lr_ratio * u.
  void (*lamb_apply)(float* param, const float* exp_avg, const float* exp_avg_sq, int64_t n, float lr_ratio,
                     const LambArgs& a);
  // LARS pass 1: sums[0] += sum param^2, sums[1] += sum (acc + grad)^2.
  void (*lars_norms)(const float* param, const float* acc, const void* grad, GradType type, int64_t n, double* sums);
  // LARS pass 2: the momentum step with the tensor's trust ratio; acc (if given) zeroed.
  void (*lars_apply)(float* param, float* moment, float* acc, const void* grad, GradType type, int64_t n,
                     const LarsArgs& a);
  void (*axpy)(float* a, const float* b, int64_t n, float s);
  double (*sum_squares)(const void* x, GradType type, int64_t n);
};
const SpanKernels& span_kernels_baseline();
const SpanKernels& span_kernels_avx2();
const SpanKernels& span_kernels_avx512();

}  // namespace cpu
}  // namespace msaccum
