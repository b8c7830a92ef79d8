#include "cpu_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "thread_pool.h"

namespace msaccum {
namespace cpu {
namespace {

// Below this many elements in a whole call, waking another thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = 1 << 15;
// Thread ranges start on multiples of this many elements (64 B of float32): no two threads
// write the same cache line, and vector loops start aligned where the tensor is.
constexpr int64_t kAlign = 16;

// More threads than this only adds hand-off cost to memory-bound loops.
constexpr int kMaxThreads = 256;

std::atomic<int> g_threads{0};

bool cpu_has(const char* isa) {
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (std::strcmp(isa, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return std::strcmp(isa, "baseline") == 0;
}

const SpanKernels* kernels_for(const char* isa) {
  if (std::strcmp(isa, "avx512") == 0) return &span_kernels_avx512();
  if (std::strcmp(isa, "avx2") == 0) return &span_kernels_avx2();
  return &span_kernels_baseline();
}

const char* best_isa() {
  // MSACCUM_CPU_ISA caps the choice (e.g. to compare ISAs); unknown or unsupported values are ignored.
  const char* requested = std::getenv("MSACCUM_CPU_ISA");
  if (requested && cpu_has(requested)) return std::strcmp(requested, "avx512") == 0 ? "avx512"
                                             : std::strcmp(requested, "avx2") == 0 ? "avx2" : "baseline";
  for (const char* isa : {"avx512", "avx2"})
    if (cpu_has(isa)) return isa;
  return "baseline";
}

std::atomic<const char*> g_isa{nullptr};
std::atomic<long long> g_calls[3];  // kernel calls per ISA: avx512, avx2, baseline

int isa_index(const char* isa) {
  return std::strcmp(isa, "avx512") == 0 ? 0 : std::strcmp(isa, "avx2") == 0 ? 1 : 2;
}

const SpanKernels& select_kernels() {
  const char* isa = g_isa.load(std::memory_order_acquire);
  if (!isa) {
    isa = best_isa();
    g_isa.store(isa, std::memory_order_release);
  }
  g_calls[isa_index(isa)].fetch_add(1, std::memory_order_relaxed);
  return *kernels_for(isa);
}

// Splits the concatenation of `numel` over threads in equal, aligned ranges and calls
// fn(thread, tensor_index, begin, end) for every piece of every tensor in the calling thread's
// range (thread < kMaxThreads). Many small tensors land in one thread's range together; a large
// tensor is split.
template <typename Fn>
void for_each_balanced_per_thread(const std::vector<int64_t>& numel, Fn&& fn) {
  std::vector<int64_t> offsets(numel.size() + 1, 0);
  for (size_t i = 0; i < numel.size(); ++i) offsets[i + 1] = offsets[i] + numel[i];
  const int64_t total = offsets.back();
  if (total == 0) return;
  const int64_t by_size = std::max<int64_t>(1, total / kMinElementsPerThread);
  const int nthreads = static_cast<int>(std::min<int64_t>(num_threads(), by_size));
  auto range_start = [&](int t) -> int64_t {
    if (t >= nthreads) return total;
    const int64_t raw = total / nthreads * t + std::min<int64_t>(t, total % nthreads);
    return std::min(total, raw / kAlign * kAlign);
  };
  parallel_for(nthreads, [&](int t) {
    const int64_t begin = range_start(t), end = range_start(t + 1);
    if (begin >= end) return;
    size_t i = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; i < numel.size() && offsets[i] < end; ++i) {
      const int64_t lo = std::max(begin, offsets[i]) - offsets[i];
      const int64_t hi = std::min(end, offsets[i + 1]) - offsets[i];
      if (hi > lo) fn(t, i, lo, hi);
    }
  });
}

// As above, for kernels that do not care which thread runs a piece: fn(tensor_index, begin, end).
template <typename Fn>
void for_each_balanced(const std::vector<int64_t>& numel, Fn&& fn) {
  for_each_balanced_per_thread(numel, [&](int, size_t i, int64_t lo, int64_t hi) { fn(i, lo, hi); });
}

inline const void* offset_grad(const void* grad, GradType type, int64_t start) {
  if (grad == nullptr) return nullptr;
  const size_t item = type == GradType::kFloat32 ? 4 : 2;
  return static_cast<const char*>(grad) + item * start;
}

inline float* offset_acc(float* acc, int64_t start) { return acc ? acc + start : nullptr; }

template <typename Tensor>
std::vector<int64_t> numel_of(const std::vector<Tensor>& tensors) {
  std::vector<int64_t> numel(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) numel[i] = tensors[i].numel;
  return numel;
}

}  // namespace

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : std::min(default_thread_count(), kMaxThreads);  // MSACCUM_NUM_THREADS is capped too
}

void set_num_threads(int n) { g_threads.store(n > 0 ? std::min(n, kMaxThreads) : 0, std::memory_order_relaxed); }

const char* vector_isa() {
  select_kernels();
  return g_isa.load(std::memory_order_acquire);
}

bool set_vector_isa(const char* isa) {
  if (!cpu_has(isa)) return false;
  g_isa.store(std::strcmp(isa, "avx512") == 0 ? "avx512" : std::strcmp(isa, "avx2") == 0 ? "avx2" : "baseline",
              std::memory_order_release);
  return true;
}

void accumulate(const std::vector<AccumulateTensor>& tensors, float scale, bool overwrite) {
  const SpanKernels& k = select_kernels();
  const auto span = overwrite ? k.assign : k.accumulate;
  for_each_balanced(numel_of(tensors), [&](size_t i, int64_t lo, int64_t hi) {
    const AccumulateTensor& t = tensors[i];
    span(t.acc + lo, offset_grad(t.grad, t.grad_type, lo), t.grad_type, hi - lo, scale);
  });
}

void momentum_update(const std::vector<MomentumTensor>& tensors, const MomentumScalars& scalars) {
  const SpanKernels& k = select_kernels();
  for_each_balanced(numel_of(tensors), [&](size_t i, int64_t lo, int64_t hi) {
    const MomentumTensor& t = tensors[i];
    k.momentum_update(t.param + lo, t.moment + lo, offset_acc(t.acc, lo), offset_grad(t.grad, t.grad_type, lo),
                      t.grad_type, hi - lo, t.weight_decay, scalars);
  });
}

void adamw_update(const std::vector<AdamWTensor>& tensors, const AdamWScalars& scalars) {
  const SpanKernels& k = select_kernels();
  for_each_balanced(numel_of(tensors), [&](size_t i, int64_t lo, int64_t hi) {
    const AdamWTensor& t = tensors[i];
    k.adamw_update(t.param + lo, t.exp_avg + lo, t.exp_avg_sq + lo, offset_acc(t.acc, lo),
                   offset_grad(t.grad, t.grad_type, lo), t.grad_type, hi - lo, t.weight_decay, scalars);
  });
}

namespace {

// The chunks of sum_of_squares (cpu_kernels.h): every tensor cut into kSquaresChunk pieces from its
// first element, numbered tensor by tensor.
struct Chunk {
  int64_t start;  // offset of its first element in the concatenation of all tensors
  size_t tensor;
  int64_t lo, hi;
};

std::vector<Chunk> make_chunks(const std::vector<int64_t>& numel, int64_t* total_elements) {
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (size_t i = 0; i < numel.size(); ++i) {
    for (int64_t lo = 0; lo < numel[i]; lo += kSquaresChunk)
      chunks.push_back({total + lo, i, lo, std::min(numel[i], lo + kSquaresChunk)});
    total += numel[i];
  }
  *total_elements = total;
  return chunks;
}

// Calls fn(chunk_index) for every chunk; thread t runs the chunks that start in its equal share
// of the elements. Which thread runs a chunk never changes what fn computes for it.
template <typename Fn>
void for_each_chunk(const std::vector<Chunk>& chunks, int64_t total_elements, Fn&& fn) {
  const int64_t by_size = std::max<int64_t>(1, total_elements / kMinElementsPerThread);
  const int nthreads = static_cast<int>(std::min<int64_t>({num_threads(), by_size, int64_t(chunks.size())}));
  auto first_chunk = [&](int t) -> size_t {
    if (t >= nthreads) return chunks.size();
    const int64_t begin = total_elements / nthreads * t + std::min<int64_t>(t, total_elements % nthreads);
    return std::lower_bound(chunks.begin(), chunks.end(), begin,
                            [](const Chunk& c, int64_t v) { return c.start < v; }) - chunks.begin();
  };
  parallel_for(std::max(nthreads, 1), [&](int t) {
    for (size_t c = first_chunk(t), end = first_chunk(t + 1); c < end; ++c) fn(c);
  });
}

// Per tensor, the two sums of its chunks (pairs[c] for chunk c), added in double in chunk order.
std::vector<double> per_tensor_sums(const std::vector<Chunk>& chunks, const std::vector<double>& pairs, size_t count) {
  std::vector<double> sums(2 * count, 0.0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    sums[2 * chunks[c].tensor] += pairs[2 * c];
    sums[2 * chunks[c].tensor + 1] += pairs[2 * c + 1];
  }
  return sums;
}

float norm_of(double sum_of_squares) { return static_cast<float>(std::sqrt(sum_of_squares)); }

}  // namespace

double sum_of_squares(const std::vector<SquaresTensor>& tensors) {
  // The chunk layout is documented at the declaration (cpu_kernels.h).
  const SpanKernels& k = select_kernels();
  int64_t total_elements = 0;
  const std::vector<Chunk> chunks = make_chunks(numel_of(tensors), &total_elements);
  std::vector<double> sums(chunks.size());
  for_each_chunk(chunks, total_elements, [&](size_t c) {
    const SquaresTensor& x = tensors[chunks[c].tensor];
    sums[c] = k.sum_squares(offset_grad(x.data, x.type, chunks[c].lo), x.type, chunks[c].hi - chunks[c].lo);
  });
  double total = 0.0;
  for (const double s : sums) total += s;
  return total;
}

namespace {
LambArgs lamb_args(const LambScalars& s, float weight_decay) {
  return LambArgs{s.beta1, s.beta2, s.eps, s.grad_scale, s.bias_correction1, s.bias_correction2, weight_decay};
}
}  // namespace

void lamb_update(const std::vector<LambTensor>& tensors, const LambScalars& scalars, float* ratios) {
  const SpanKernels& k = select_kernels();
  const std::vector<int64_t> numel = numel_of(tensors);
  int64_t total_elements = 0;
  const std::vector<Chunk> chunks = make_chunks(numel, &total_elements);
  std::vector<double> pairs(2 * chunks.size(), 0.0);
  for_each_chunk(chunks, total_elements, [&](size_t c) {
    const LambTensor& t = tensors[chunks[c].tensor];
    const int64_t lo = chunks[c].lo;
    k.lamb_moments(t.param + lo, t.exp_avg + lo, t.exp_avg_sq + lo, offset_acc(t.acc, lo),
                   offset_grad(t.grad, t.grad_type, lo), t.grad_type, chunks[c].hi - lo,
                   lamb_args(scalars, t.weight_decay), &pairs[2 * c]);
  });
  const std::vector<double> sums = per_tensor_sums(chunks, pairs, tensors.size());
  std::vector<float> lr_ratio(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const float r = lamb_ratio(norm_of(sums[2 * i]), norm_of(sums[2 * i + 1]));
    lr_ratio[i] = scalars.lr * r;
    if (ratios) ratios[i] = r;
  }
  for_each_balanced(numel, [&](size_t i, int64_t lo, int64_t hi) {
    const LambTensor& t = tensors[i];
    k.lamb_apply(t.param + lo, t.exp_avg + lo, t.exp_avg_sq + lo, hi - lo, lr_ratio[i],
                 lamb_args(scalars, t.weight_decay));
  });
}

void lars_update(const std::vector<LarsTensor>& tensors, const LarsScalars& scalars, float* ratios) {
  const SpanKernels& k = select_kernels();
  // Pass 1 only over the tensors that take the trust ratio.
  std::vector<int64_t> norm_numel(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) norm_numel[i] = tensors[i].lars != 0.0f ? tensors[i].numel : 0;
  int64_t total_elements = 0;
  const std::vector<Chunk> chunks = make_chunks(norm_numel, &total_elements);
  std::vector<double> pairs(2 * chunks.size(), 0.0);
  for_each_chunk(chunks, total_elements, [&](size_t c) {
    const LarsTensor& t = tensors[chunks[c].tensor];
    const int64_t lo = chunks[c].lo;
    k.lars_norms(t.param + lo, offset_acc(t.acc, lo), offset_grad(t.grad, t.grad_type, lo), t.grad_type,
                 chunks[c].hi - lo, &pairs[2 * c]);
  });
  const std::vector<double> sums = per_tensor_sums(chunks, pairs, tensors.size());
  std::vector<LarsArgs> args(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const LarsTensor& t = tensors[i];
    LarsArgs& a = args[i];
    a = LarsArgs{scalars.lr, scalars.momentum, scalars.grad_scale, 0.0f, 1.0f};
    if (t.lars != 0.0f) {
      a.weight_decay = t.weight_decay;
      a.trust = lars_trust(norm_of(sums[2 * i]), norm_of(sums[2 * i + 1]) * std::fabs(scalars.grad_scale),
                           scalars.coefficient, t.weight_decay, scalars.epsilon);
    }
    if (ratios) ratios[i] = a.trust;
  }
  for_each_balanced(numel_of(tensors), [&](size_t i, int64_t lo, int64_t hi) {
    const LarsTensor& t = tensors[i];
    k.lars_apply(t.param + lo, t.moment + lo, offset_acc(t.acc, lo), offset_grad(t.grad, t.grad_type, lo),
                 t.grad_type, hi - lo, args[i]);
  });
}

int pool_workers() { return pool_worker_count(); }

long long kernel_calls(const char* isa) { return g_calls[isa_index(isa)].load(std::memory_order_relaxed); }

void axpy_ceiling(const std::vector<float*>& a, const std::vector<const float*>& b,
                  const std::vector<int64_t>& numel, float s) {
  const SpanKernels& k = select_kernels();
  for_each_balanced(numel, [&](size_t i, int64_t lo, int64_t hi) { k.axpy(a[i] + lo, b[i] + lo, hi - lo, s); });
}

void zero(const std::vector<float*>& tensors, const std::vector<int64_t>& numel) {
  for_each_balanced(numel, [&](size_t i, int64_t lo, int64_t hi) {
    std::memset(tensors[i] + lo, 0, sizeof(float) * static_cast<size_t>(hi - lo));
  });
}

}  // namespace cpu
}  // namespace msaccum
