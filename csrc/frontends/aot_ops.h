// The argument checking and kernel calls behind the AOT entry points for
// mindspore.ops.Custom(func_type="aot"): shared by the shipped entries (mindspore_aot.cpp) and
// the test-only ones (tests/cpp/aot_test_entries.cpp), so both check exactly the same way.
//
// MindSpore calls f(nparam, params, ndims, shapes, dtypes, stream, extra) with the inputs
// followed by the outputs. Every in-place op has one placeholder output of shape (1,) that is set
// to 0: the real results are written in place into the input buffers (Parameters), and the
// caller keeps the op alive with ops.depend. Every tensor is checked before any kernel runs; a
// bad call logs why on stderr ("[mindspore_accum] <entry>: <reason>") and returns non-zero.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../cpu/cpu_kernels.h"
#include "overlap.h"
#ifdef MSACCUM_WITH_CUDA
#include "../cuda/cuda_kernels.h"
#endif

namespace msaccum {
namespace aot {

struct Call {
  const char* op;
  int nparam;
  void** params;
  int* ndims;
  int64_t** shapes;
  const char** dtypes;

  int64_t numel(int i) const {
    int64_t n = 1;
    for (int d = 0; d < ndims[i]; ++d) n *= shapes[i][d];
    return n;
  }
  bool same_shape(int a, int b) const {
    if (ndims[a] != ndims[b]) return false;
    for (int d = 0; d < ndims[a]; ++d)
      if (shapes[a][d] != shapes[b][d]) return false;
    return true;
  }
  int64_t nbytes(int i) const {
    const int64_t item = is(i, "float16") || is(i, "bfloat16") ? 2 : 4;
    return numel(i) * item;
  }
  // Each (argument, written) pair is a tensor of the call; returns non-zero if a written tensor
  // shares memory with any other tensor of the call (e.g. one Parameter passed twice).
  int check_overlap(const std::vector<std::pair<int, bool>>& tensors) const {
    std::vector<ByteRange> ranges;
    for (const auto& [i, written] : tensors) {
      const auto begin = reinterpret_cast<uintptr_t>(params[i]);
      ranges.push_back({begin, begin + static_cast<uintptr_t>(nbytes(i)), written, i});
    }
    const auto [a, b] = find_overlap(std::move(ranges));
    return a < 0 ? 0 : fail(arg(a) + " shares memory with " + arg(b) + "; in-place tensors must not overlap");
  }
  bool is(int i, const char* dtype) const { return dtypes[i] && std::strcmp(dtypes[i], dtype) == 0; }
  int fail(const std::string& why) const {
    std::fprintf(stderr, "[mindspore_accum] %s: %s\n", op, why.c_str());
    return 1;
  }
  std::string arg(int i) const { return "argument " + std::to_string(i) + " (" + (dtypes[i] ? dtypes[i] : "?") + ")"; }
  float* f32(int i) const { return i < 0 ? nullptr : static_cast<float*>(params[i]); }
  // The placeholder output (the last argument) of the in-place ops.
  float* placeholder() const { return static_cast<float*>(params[nparam - 1]); }
};

inline bool grad_type(const Call& c, int i, GradType* out) {
  if (c.is(i, "float32")) *out = GradType::kFloat32;
  else if (c.is(i, "float16")) *out = GradType::kFloat16;
  else if (c.is(i, "bfloat16")) *out = GradType::kBFloat16;
  else return false;
  return true;
}

// accumulate: scale(1) or hyper(2) = {scale, overwrite (0/1)}, acc x n, grad x n, out. Checks the
// layout and fills `tensors`; returns non-zero on bad input.
inline int parse_accumulate(const Call& c, std::vector<AccumulateTensor>* tensors) {
  if (c.nparam < 2 || (c.nparam - 2) % 2 != 0)
    return c.fail("expected scale (or hyper(2)), n accumulators, n gradients and one output; got " +
                  std::to_string(c.nparam) + " tensors");
  const int n = (c.nparam - 2) / 2;
  if (!c.is(0, "float32") || (c.numel(0) != 1 && c.numel(0) != 2))
    return c.fail("argument 0 must be scale (one float32 value) or hyper (two float32 values: scale, overwrite)");
  tensors->resize(n);
  for (int i = 0; i < n; ++i) {
    const int a = 1 + i, g = 1 + n + i;
    if (!c.is(a, "float32")) return c.fail("accumulator " + c.arg(a) + " must be float32");
    if (!c.same_shape(a, g)) return c.fail("gradient " + c.arg(g) + " has a different shape than its accumulator");
    AccumulateTensor& t = (*tensors)[i];
    if (!grad_type(c, g, &t.grad_type)) return c.fail("gradient " + c.arg(g) + " must be float32, float16 or bfloat16");
    t.acc = c.f32(a);
    t.grad = c.params[g];
    t.numel = c.numel(a);
  }
  const int out = c.nparam - 1;
  if (!c.is(out, "float32") || c.numel(out) != 1) return c.fail("the output must be one float32 value");
  std::vector<std::pair<int, bool>> buffers;
  for (int i = 1; i < out; ++i) buffers.push_back({i, i <= n});
  return c.check_overlap(buffers);
}

// The layout of the fused optimizer updates: hyper(hyper_size), per_tensor float32 vectors of n
// values (weight_decay first), param x n, then `states` float32 lists x n (moments), [acc x n],
// [grad x n], out. Params, states and acc are written, grad is read. Checks every tensor; fills,
// per tensor, the argument index of its param (state k of tensor i is at param + (k + 1) * n), of
// its acc and grad (-1 when absent), and the gradient's type.
struct UpdateSlot {
  int param, acc, grad;
  GradType grad_type;
};

inline int parse_update(const Call& c, int hyper_size, int per_tensor, int states, bool has_acc, bool has_grad,
                        std::vector<UpdateSlot>* slots) {
  const int written = 1 + states + (has_acc ? 1 : 0);  // lists per tensor written in place
  const int lists = written + (has_grad ? 1 : 0);
  const int first = 1 + per_tensor;  // the argument index of the first parameter
  const std::string hyper = "hyper(" + std::to_string(hyper_size) + ")";
  if (c.nparam < first + 1 || c.ndims[1] != 1)
    return c.fail("expected " + hyper + ", weight_decay(n), the tensor lists and one output");
  const int64_t n64 = c.shapes[1][0];
  if (n64 < 0 || first + 1 + lists * n64 != static_cast<int64_t>(c.nparam))
    return c.fail("weight_decay has " + std::to_string(n64) + " values, which does not match " +
                  std::to_string(c.nparam) + " tensors");
  const int n = static_cast<int>(n64);
  if (!c.is(0, "float32") || c.numel(0) != hyper_size)
    return c.fail(hyper + " (argument 0) must be " + std::to_string(hyper_size) + " float32 values");
  for (int k = 1; k <= per_tensor; ++k)
    if (!c.is(k, "float32") || c.ndims[k] != 1 || c.numel(k) != n)
      return c.fail("per-tensor vector (argument " + std::to_string(k) + ") must be " + std::to_string(n) +
                    " float32 values");
  slots->resize(n);
  for (int i = 0; i < n; ++i) {
    UpdateSlot& t = (*slots)[i];
    t.param = first + i;
    t.acc = has_acc ? first + (written - 1) * n + i : -1;
    t.grad = has_grad ? first + written * n + i : -1;
    for (int k = 0; k < written; ++k) {
      const int arg = t.param + k * n;
      if (!c.is(arg, "float32")) return c.fail(c.arg(arg) + " must be float32");
      if (!c.same_shape(t.param, arg)) return c.fail(c.arg(arg) + " has a different shape than parameter " + std::to_string(i));
    }
    t.grad_type = GradType::kFloat32;
    if (has_grad) {
      if (!c.same_shape(t.param, t.grad)) return c.fail("gradient " + c.arg(t.grad) + " has a different shape than its parameter");
      if (!grad_type(c, t.grad, &t.grad_type)) return c.fail("gradient " + c.arg(t.grad) + " must be float32, float16 or bfloat16");
    }
  }
  const int out = c.nparam - 1;
  if (!c.is(out, "float32") || c.numel(out) != 1) return c.fail("the output must be one float32 value");
  std::vector<std::pair<int, bool>> buffers;
  for (int i = first; i < out; ++i) buffers.push_back({i, i < first + written * n});
  return c.check_overlap(buffers);
}

// The fused optimizer updates, one description each: the hyper-parameter count, the optimizer
// states per tensor (float32, updated in place), the descriptor made from a tensor's buffers, and
// the CPU and CUDA calls. A new optimizer adds one such struct (and its entries). kPerTensor
// vectors of n float32 values follow hyper (weight_decay first); set_per_tensor copies tensor i's
// values into its descriptor for the CPU (the CUDA kernels read them from device memory).
struct MomentumUpdate {
  using Tensor = MomentumTensor;
  static constexpr int kHyper = 4;   // {lr, momentum, grad_scale, nesterov (0/1)}
  static constexpr int kPerTensor = 1;  // weight_decay
  static constexpr int kStates = 1;  // moment
  static Tensor make(float* param, float* const* states, float* acc, const void* grad, GradType type, int64_t numel) {
    return Tensor{param, states[0], acc, grad, type, numel, 0.0f};
  }
  static void run_cpu(const std::vector<Tensor>& tensors, const float* h) {
    cpu::momentum_update(tensors, MomentumScalars{h[0], h[1], h[2], h[3] != 0.0f});
  }
  static void set_per_tensor(Tensor& t, const float* const* v, int i) { t.weight_decay = v[0][i]; }
#ifdef MSACCUM_WITH_CUDA
  static int run_cuda(const Tensor* tensors, int count, const float* hyper, const float* const* v, void* stream) {
    return cuda::momentum_update(tensors, count, hyper, v[0], stream);
  }
#endif
};

struct AdamWUpdate {
  using Tensor = AdamWTensor;
  static constexpr int kHyper = 7;   // {lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2}
  static constexpr int kPerTensor = 1;  // weight_decay
  static constexpr int kStates = 2;  // exp_avg, exp_avg_sq
  static Tensor make(float* param, float* const* states, float* acc, const void* grad, GradType type, int64_t numel) {
    return Tensor{param, states[0], states[1], acc, grad, type, numel, 0.0f};
  }
  static void run_cpu(const std::vector<Tensor>& tensors, const float* h) {
    cpu::adamw_update(tensors, AdamWScalars{h[0], h[1], h[2], h[3], h[4], h[5], h[6]});
  }
  static void set_per_tensor(Tensor& t, const float* const* v, int i) { t.weight_decay = v[0][i]; }
#ifdef MSACCUM_WITH_CUDA
  static int run_cuda(const Tensor* tensors, int count, const float* hyper, const float* const* v, void* stream) {
    return cuda::adamw_update(tensors, count, hyper, v[0], stream);
  }
#endif
};

struct LambUpdate {
  using Tensor = LambTensor;
  static constexpr int kHyper = 7;  // {lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2}
  static constexpr int kPerTensor = 1;  // weight_decay
  static constexpr int kStates = 2;     // exp_avg, exp_avg_sq
  static Tensor make(float* param, float* const* states, float* acc, const void* grad, GradType type, int64_t numel) {
    return Tensor{param, states[0], states[1], acc, grad, type, numel, 0.0f};
  }
  static void set_per_tensor(Tensor& t, const float* const* v, int i) { t.weight_decay = v[0][i]; }
  static void run_cpu(const std::vector<Tensor>& tensors, const float* h) {
    cpu::lamb_update(tensors, LambScalars{h[0], h[1], h[2], h[3], h[4], h[5], h[6]});
  }
#ifdef MSACCUM_WITH_CUDA
  static int run_cuda(const Tensor* tensors, int count, const float* hyper, const float* const* v, void* stream) {
    return cuda::lamb_update(tensors, count, hyper, v[0], stream);
  }
#endif
};

struct LarsUpdate {
  using Tensor = LarsTensor;
  static constexpr int kHyper = 5;  // {lr, momentum, grad_scale, coefficient, epsilon}
  static constexpr int kPerTensor = 2;  // weight_decay, lars (1: the trust ratio, 0: plain momentum)
  static constexpr int kStates = 1;     // moment
  static Tensor make(float* param, float* const* states, float* acc, const void* grad, GradType type, int64_t numel) {
    return Tensor{param, states[0], acc, grad, type, numel, 0.0f, 0.0f};
  }
  static void set_per_tensor(Tensor& t, const float* const* v, int i) {
    t.weight_decay = v[0][i];
    t.lars = v[1][i];
  }
  static void run_cpu(const std::vector<Tensor>& tensors, const float* h) {
    cpu::lars_update(tensors, LarsScalars{h[0], h[1], h[2], h[3], h[4]});
  }
#ifdef MSACCUM_WITH_CUDA
  static int run_cuda(const Tensor* tensors, int count, const float* hyper, const float* const* v, void* stream) {
    return cuda::lars_update(tensors, count, hyper, v[0], v[1], stream);
  }
#endif
};

// Checks an update call (parse_update with Op's sizes) and fills `tensors`; the weight decay is
// filled in by the CPU caller, and read from device memory by the CUDA kernels.
template <typename Op>
int parse_update_tensors(const Call& c, bool has_acc, bool has_grad, std::vector<typename Op::Tensor>* tensors) {
  std::vector<UpdateSlot> slots;
  if (int rc = parse_update(c, Op::kHyper, Op::kPerTensor, Op::kStates, has_acc, has_grad, &slots)) return rc;
  const int n = static_cast<int>(slots.size());
  tensors->resize(n);
  for (int i = 0; i < n; ++i) {
    const UpdateSlot& s = slots[i];
    float* states[Op::kStates];
    for (int k = 0; k < Op::kStates; ++k) states[k] = c.f32(s.param + (k + 1) * n);
    (*tensors)[i] = Op::make(c.f32(s.param), states, c.f32(s.acc), s.grad < 0 ? nullptr : c.params[s.grad],
                             s.grad_type, c.numel(s.param));
  }
  return 0;
}

// Sum of squares: x x n (float32, float16 or bfloat16, any mix, only read), out (one float32, a
// real result), workspace (float64). Fills `tensors` and the workspace's element count.
inline int parse_squares(const Call& c, std::vector<SquaresTensor>* tensors, int64_t* workspace_size) {
  if (c.nparam < 2) return c.fail("expected n tensors, the output and the workspace; got " + std::to_string(c.nparam));
  const int n = c.nparam - 2, out = n, workspace = n + 1;
  tensors->resize(n);
  for (int i = 0; i < n; ++i) {
    SquaresTensor& t = (*tensors)[i];
    if (!grad_type(c, i, &t.type)) return c.fail("input " + c.arg(i) + " must be float32, float16 or bfloat16");
    t.data = c.params[i];
    t.numel = c.numel(i);
  }
  if (!c.is(out, "float32") || c.numel(out) != 1) return c.fail("the output must be one float32 value");
  if (!c.is(workspace, "float64") || c.numel(workspace) < 1) return c.fail("the workspace must be float64");
  *workspace_size = c.numel(workspace);
  return 0;
}

// ---- the CPU ops ----

inline int accumulate_cpu(const Call& c) {
  std::vector<AccumulateTensor> tensors;
  if (int rc = parse_accumulate(c, &tensors)) return rc;
  const float* hyper = static_cast<const float*>(c.params[0]);
  const bool overwrite = c.numel(0) == 2 && hyper[1] != 0.0f;
  cpu::accumulate(tensors, hyper[0], overwrite);
  *c.placeholder() = 0.0f;
  return 0;
}

// The Op::kPerTensor vectors that follow hyper (arguments 1 ..).
template <typename Op>
void per_tensor_vectors(const Call& c, const float** out) {
  for (int k = 0; k < Op::kPerTensor; ++k) out[k] = static_cast<const float*>(c.params[1 + k]);
}

// An update: hyper(Op::kHyper), the per-tensor vectors (n each), param x n, states, [acc x n],
// [grad x n], out.
template <typename Op>
int update_cpu(const Call& c, bool has_acc, bool has_grad) {
  std::vector<typename Op::Tensor> tensors;
  if (int rc = parse_update_tensors<Op>(c, has_acc, has_grad, &tensors)) return rc;
  const float* vectors[Op::kPerTensor];
  per_tensor_vectors<Op>(c, vectors);
  for (size_t i = 0; i < tensors.size(); ++i) Op::set_per_tensor(tensors[i], vectors, static_cast<int>(i));
  Op::run_cpu(tensors, static_cast<const float*>(c.params[0]));
  *c.placeholder() = 0.0f;
  return 0;
}

inline int squares_cpu(const Call& c) {
  std::vector<SquaresTensor> tensors;
  int64_t workspace_size = 0;
  if (int rc = parse_squares(c, &tensors, &workspace_size)) return rc;
  *static_cast<float*>(c.params[c.nparam - 2]) = static_cast<float>(cpu::sum_of_squares(tensors));
  return 0;
}

#ifdef MSACCUM_WITH_CUDA
// ---- the CUDA ops: device memory, launched on `stream`, hyper-parameters read by the kernels ----

inline int cuda_result(const Call& c, int code) {
  return code == 0 ? 0 : c.fail(std::string("CUDA error: ") + cuda::error_string(code));
}

// The placeholder output is zeroed on the stream after the kernels.
inline int with_placeholder(const Call& c, int code, void* stream) {
  if (code == 0) code = cuda::zero_fill(c.placeholder(), 1, stream);
  return cuda_result(c, code);
}

inline int accumulate_cuda(const Call& c, void* stream) {
  std::vector<AccumulateTensor> tensors;
  if (int rc = parse_accumulate(c, &tensors)) return rc;
  // hyper(2): the overwrite flag stays in device memory, read by the kernel (no host sync).
  const float* hyper = static_cast<const float*>(c.params[0]);
  return with_placeholder(c, cuda::accumulate(tensors.data(), static_cast<int>(tensors.size()), hyper, stream,
                                              c.numel(0) == 2 ? hyper + 1 : nullptr),
                          stream);
}

template <typename Op>
int update_cuda(const Call& c, bool has_acc, bool has_grad, void* stream) {
  std::vector<typename Op::Tensor> tensors;
  if (int rc = parse_update_tensors<Op>(c, has_acc, has_grad, &tensors)) return rc;
  const float* vectors[Op::kPerTensor];
  per_tensor_vectors<Op>(c, vectors);
  return with_placeholder(c, Op::run_cuda(tensors.data(), static_cast<int>(tensors.size()),
                                          static_cast<const float*>(c.params[0]), vectors, stream),
                          stream);
}

inline int squares_cuda(const Call& c, void* stream) {
  std::vector<SquaresTensor> tensors;
  int64_t workspace_size = 0;
  if (int rc = parse_squares(c, &tensors, &workspace_size)) return rc;
  std::vector<int64_t> numel;
  for (const SquaresTensor& t : tensors) numel.push_back(t.numel);
  const long long needed = cuda::sum_of_squares_workspace(numel.data(), static_cast<int>(numel.size()));
  if (workspace_size < needed)
    return c.fail("the workspace has " + std::to_string(workspace_size) + " elements; these tensors need " +
                  std::to_string(needed) + " (size it with mindspore_accum._C.sum_of_squares_workspace)");
  return cuda_result(c, cuda::sum_of_squares(tensors.data(), static_cast<int>(tensors.size()),
                                             static_cast<float*>(c.params[c.nparam - 2]),
                                             static_cast<double*>(c.params[c.nparam - 1]), workspace_size, stream));
}
#endif

}  // namespace aot
}  // namespace msaccum

// Defining entry points: MSACCUM_AOT_ENTRY(Name, cpu_expression, cuda_expression) defines the
// exported C function Name (CPU) and, in a CUDA build, NameCuda; the expressions see `call`
// (an msaccum::aot::Call naming the entry in its messages) and `stream`.
#define MSACCUM_AOT_EXPORT extern "C" __attribute__((visibility("default")))
#define MSACCUM_AOT_ARGS \
  int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra
#define MSACCUM_AOT_FUNCTION(name, expression)                                          \
  MSACCUM_AOT_EXPORT int name(MSACCUM_AOT_ARGS) {                                       \
    (void)stream;                                                                       \
    (void)extra;                                                                        \
    const msaccum::aot::Call call{#name, nparam, params, ndims, shapes, dtypes};        \
    return expression;                                                                  \
  }
#ifdef MSACCUM_WITH_CUDA
#define MSACCUM_AOT_ENTRY(name, cpu_expression, cuda_expression) \
  MSACCUM_AOT_FUNCTION(name, cpu_expression)                     \
  MSACCUM_AOT_FUNCTION(name##Cuda, cuda_expression)
#else
#define MSACCUM_AOT_ENTRY(name, cpu_expression, cuda_expression) MSACCUM_AOT_FUNCTION(name, cpu_expression)
#endif
