// Entry points for mindspore.ops.Custom(func_type="aot").
//
// MindSpore calls f(nparam, params, ndims, shapes, dtypes, stream, extra) with the inputs
// followed by the outputs. Every op here has one placeholder output of shape (1,) that is set
// to 0: the real results are written in place into the input buffers (Parameters), and the
// caller keeps the op alive with ops.depend. Layouts (n = number of tensors):
//   MsAccumAccumulate:  scale(1) or hyper(2), acc x n, grad x n, out
//   MsAccumFlush:       hyper(4), weight_decay(n), param x n, moment x n, acc x n, grad x n, out
//   MsAccumFlushAcc:    hyper(4), weight_decay(n), param x n, moment x n, acc x n, out
//   MsAccumFlushGrad:   hyper(4), weight_decay(n), param x n, moment x n, grad x n, out
//   MsAccumAdamW:       hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, acc x n, grad x n, out
//   MsAccumAdamWAcc:    hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, acc x n, out
//   MsAccumAdamWGrad:   hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, grad x n, out
//   MsAccumZero:        acc x n, out                                  (acc = 0)
//   MsAccumSumSquares:  x x n, out, workspace                         (out = sum of x*x)
// MsAccumAccumulate: scale(1) adds (acc += scale * grad); hyper(2) = {scale, overwrite (0/1)}, with
// overwrite 1: acc = scale * grad, the accumulator's old content never read (the first micro-batch
// of a window). Momentum hyper(4) = {lr, momentum, grad_scale, nesterov (0/1)}. AdamW hyper(7) =
// {lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2}, all float32, the bias
// corrections precomputed by the caller (1 - beta^t, or 1 without bias correction); param,
// exp_avg, exp_avg_sq and acc are float32, weight_decay one float32 per tensor (decoupled), and
// the accumulators are zeroed. MsAccumSumSquares only reads its inputs
// (float32, float16 or bfloat16, any mix); its `out` is a real result, one float32, and
// `workspace` is float64 scratch of sum_of_squares_workspace() elements (the CUDA kernel's
// partial sums; one element on CPU). Names ending in Cuda take device memory
// and run on the given stream. A bad call logs why on stderr and returns non-zero.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "overlap.h"
#ifdef MSACCUM_WITH_CUDA
#include "cuda/cuda_kernels.h"
#endif

#define MSACCUM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using msaccum::AccumulateTensor;
using msaccum::AdamWScalars;
using msaccum::AdamWTensor;
using msaccum::FlushScalars;
using msaccum::FlushTensor;
using msaccum::GradType;
using msaccum::SquaresTensor;

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
  // Tensors [first, first + count) are written when `written`; returns non-zero if a written
  // tensor shares memory with any other tensor of the call (e.g. one Parameter passed twice).
  int check_overlap(const std::vector<std::pair<int, bool>>& tensors) const {
    std::vector<msaccum::ByteRange> ranges;
    for (const auto& [i, written] : tensors) {
      const auto begin = reinterpret_cast<uintptr_t>(params[i]);
      ranges.push_back({begin, begin + static_cast<uintptr_t>(nbytes(i)), written, i});
    }
    const auto [a, b] = msaccum::find_overlap(std::move(ranges));
    return a < 0 ? 0 : fail(arg(a) + " shares memory with " + arg(b) + "; in-place tensors must not overlap");
  }
  bool is(int i, const char* dtype) const { return dtypes[i] && std::strcmp(dtypes[i], dtype) == 0; }
  int fail(const std::string& why) const {
    std::fprintf(stderr, "[mindspore_accum] %s: %s\n", op, why.c_str());
    return 1;
  }
  std::string arg(int i) const { return "argument " + std::to_string(i) + " (" + (dtypes[i] ? dtypes[i] : "?") + ")"; }
};

bool grad_type(const Call& c, int i, GradType* out) {
  if (c.is(i, "float32")) *out = GradType::kFloat32;
  else if (c.is(i, "float16")) *out = GradType::kFloat16;
  else if (c.is(i, "bfloat16")) *out = GradType::kBFloat16;
  else return false;
  return true;
}

// Checks the layout of an accumulate call and fills `tensors`; returns non-zero on bad input.
int parse_accumulate(const Call& c, std::vector<AccumulateTensor>* tensors) {
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
    t.acc = static_cast<float*>(c.params[a]);
    t.grad = c.params[g];
    t.numel = c.numel(a);
  }
  const int out = c.nparam - 1;
  if (!c.is(out, "float32") || c.numel(out) != 1) return c.fail("the output must be one float32 value");
  std::vector<std::pair<int, bool>> buffers;
  for (int i = 1; i < out; ++i) buffers.push_back({i, i <= n});
  return c.check_overlap(buffers);
}

// The layout of the fused optimizer updates: hyper(hyper_size), weight_decay(n), param x n, then
// `states` float32 lists x n (moments), [acc x n], [grad x n], out. Params, states and acc are
// written, grad is read. Checks every tensor; fills, per tensor, the argument index of its param
// (state k of tensor i is at param + (k + 1) * n), of its acc and grad (-1 when absent), and the
// gradient's type.
struct UpdateSlot {
  int param, acc, grad;
  GradType grad_type;
};

int parse_update(const Call& c, int hyper_size, int states, bool has_acc, bool has_grad, std::vector<UpdateSlot>* slots) {
  const int written = 1 + states + (has_acc ? 1 : 0);  // lists per tensor written in place
  const int lists = written + (has_grad ? 1 : 0);
  const std::string hyper = "hyper(" + std::to_string(hyper_size) + ")";
  if (c.nparam < 3 || c.ndims[1] != 1) return c.fail("expected " + hyper + ", weight_decay(n), the tensor lists and one output");
  const int64_t n64 = c.shapes[1][0];
  if (n64 < 0 || 3 + lists * n64 != static_cast<int64_t>(c.nparam))
    return c.fail("weight_decay has " + std::to_string(n64) + " values, which does not match " +
                  std::to_string(c.nparam) + " tensors");
  const int n = static_cast<int>(n64);
  if (!c.is(0, "float32") || c.numel(0) != hyper_size)
    return c.fail(hyper + " (argument 0) must be " + std::to_string(hyper_size) + " float32 values");
  if (!c.is(1, "float32")) return c.fail("weight_decay (argument 1) must be float32");
  slots->resize(n);
  for (int i = 0; i < n; ++i) {
    UpdateSlot& t = (*slots)[i];
    t.param = 2 + i;
    t.acc = has_acc ? 2 + (written - 1) * n + i : -1;
    t.grad = has_grad ? 2 + written * n + i : -1;
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
  for (int i = 2; i < out; ++i) buffers.push_back({i, i < 2 + written * n});
  return c.check_overlap(buffers);
}

float* f32(const Call& c, int arg) { return arg < 0 ? nullptr : static_cast<float*>(c.params[arg]); }

// Momentum: hyper(4) = {lr, momentum, grad_scale, nesterov}, one state (the moment).
int parse_flush(const Call& c, bool has_acc, bool has_grad, std::vector<FlushTensor>* tensors) {
  std::vector<UpdateSlot> slots;
  if (int rc = parse_update(c, 4, 1, has_acc, has_grad, &slots)) return rc;
  const int n = static_cast<int>(slots.size());
  tensors->resize(n);
  for (int i = 0; i < n; ++i) {
    const UpdateSlot& s = slots[i];
    (*tensors)[i] = FlushTensor{f32(c, s.param), f32(c, s.param + n), f32(c, s.acc),
                                s.grad < 0 ? nullptr : c.params[s.grad], s.grad_type, c.numel(s.param), 0.0f};
  }
  return 0;
}

// AdamW: hyper(7), two states (exp_avg, exp_avg_sq).
int parse_adamw(const Call& c, bool has_acc, bool has_grad, std::vector<AdamWTensor>* tensors) {
  std::vector<UpdateSlot> slots;
  if (int rc = parse_update(c, 7, 2, has_acc, has_grad, &slots)) return rc;
  const int n = static_cast<int>(slots.size());
  tensors->resize(n);
  for (int i = 0; i < n; ++i) {
    const UpdateSlot& s = slots[i];
    (*tensors)[i] = AdamWTensor{f32(c, s.param), f32(c, s.param + n), f32(c, s.param + 2 * n), f32(c, s.acc),
                                s.grad < 0 ? nullptr : c.params[s.grad], s.grad_type, c.numel(s.param), 0.0f};
  }
  return 0;
}

// Checks a sum-of-squares call (inputs, out, workspace) and fills `tensors`; returns non-zero on
// bad input and stores the workspace's element count in `workspace_size`.
int parse_squares(const Call& c, std::vector<SquaresTensor>* tensors, int64_t* workspace_size) {
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

int squares_cpu(const Call& c) {
  std::vector<SquaresTensor> tensors;
  int64_t workspace_size = 0;
  if (int rc = parse_squares(c, &tensors, &workspace_size)) return rc;
  *static_cast<float*>(c.params[c.nparam - 2]) = static_cast<float>(msaccum::cpu::sum_of_squares(tensors));
  return 0;
}

int accumulate_cpu(const Call& c) {
  std::vector<AccumulateTensor> tensors;
  if (int rc = parse_accumulate(c, &tensors)) return rc;
  const float* hyper = static_cast<const float*>(c.params[0]);
  const bool overwrite = c.numel(0) == 2 && hyper[1] != 0.0f;
  msaccum::cpu::accumulate(tensors, hyper[0], overwrite);
  *static_cast<float*>(c.params[c.nparam - 1]) = 0.0f;
  return 0;
}

int flush_cpu(const Call& c, bool has_acc, bool has_grad) {
  std::vector<FlushTensor> tensors;
  if (int rc = parse_flush(c, has_acc, has_grad, &tensors)) return rc;
  const float* hyper = static_cast<const float*>(c.params[0]);
  const float* weight_decay = static_cast<const float*>(c.params[1]);
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].weight_decay = weight_decay[i];
  msaccum::cpu::momentum_flush(tensors, FlushScalars{hyper[0], hyper[1], hyper[2], hyper[3] != 0.0f});
  *static_cast<float*>(c.params[c.nparam - 1]) = 0.0f;
  return 0;
}

int adamw_cpu(const Call& c, bool has_acc, bool has_grad) {
  std::vector<AdamWTensor> tensors;
  if (int rc = parse_adamw(c, has_acc, has_grad, &tensors)) return rc;
  const float* h = static_cast<const float*>(c.params[0]);
  const float* weight_decay = static_cast<const float*>(c.params[1]);
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].weight_decay = weight_decay[i];
  msaccum::cpu::adamw_flush(tensors, AdamWScalars{h[0], h[1], h[2], h[3], h[4], h[5], h[6]});
  *static_cast<float*>(c.params[c.nparam - 1]) = 0.0f;
  return 0;
}

// Zeroes every input: the reset of a window whose update was skipped (overflow) or done by
// another optimizer.
int zero_cpu(const Call& c) {
  std::vector<std::pair<int, bool>> written;
  for (int i = 0; i + 1 < c.nparam; ++i) written.push_back({i, true});
  if (int rc = c.check_overlap(written)) return rc;
  std::vector<float*> acc;
  std::vector<int64_t> numel;
  for (int i = 0; i + 1 < c.nparam; ++i) {
    if (!c.is(i, "float32")) return c.fail(c.arg(i) + " must be float32");
    acc.push_back(static_cast<float*>(c.params[i]));
    numel.push_back(c.numel(i));
  }
  msaccum::cpu::zero(acc, numel);
  *static_cast<float*>(c.params[c.nparam - 1]) = 0.0f;
  return 0;
}

#ifdef MSACCUM_WITH_CUDA
int cuda_result(const Call& c, int code) {
  return code == 0 ? 0 : c.fail(std::string("CUDA error: ") + msaccum::cuda::error_string(code));
}

int accumulate_cuda(const Call& c, void* stream) {
  std::vector<AccumulateTensor> tensors;
  if (int rc = parse_accumulate(c, &tensors)) return rc;
  // hyper(2): the overwrite flag stays in device memory, read by the kernel (no host sync).
  const float* hyper = static_cast<const float*>(c.params[0]);
  int code = msaccum::cuda::accumulate(tensors.data(), static_cast<int>(tensors.size()), hyper, stream,
                                       c.numel(0) == 2 ? hyper + 1 : nullptr);
  if (code == 0) code = msaccum::cuda::zero_fill(static_cast<float*>(c.params[c.nparam - 1]), 1, stream);
  return cuda_result(c, code);
}

int flush_cuda(const Call& c, bool has_acc, bool has_grad, void* stream) {
  std::vector<FlushTensor> tensors;
  if (int rc = parse_flush(c, has_acc, has_grad, &tensors)) return rc;
  int code = msaccum::cuda::momentum_flush(tensors.data(), static_cast<int>(tensors.size()),
                                           static_cast<const float*>(c.params[0]),
                                           static_cast<const float*>(c.params[1]), stream);
  if (code == 0) code = msaccum::cuda::zero_fill(static_cast<float*>(c.params[c.nparam - 1]), 1, stream);
  return cuda_result(c, code);
}

int adamw_cuda(const Call& c, bool has_acc, bool has_grad, void* stream) {
  std::vector<AdamWTensor> tensors;
  if (int rc = parse_adamw(c, has_acc, has_grad, &tensors)) return rc;
  int code = msaccum::cuda::adamw_flush(tensors.data(), static_cast<int>(tensors.size()),
                                        static_cast<const float*>(c.params[0]),
                                        static_cast<const float*>(c.params[1]), stream);
  if (code == 0) code = msaccum::cuda::zero_fill(static_cast<float*>(c.params[c.nparam - 1]), 1, stream);
  return cuda_result(c, code);
}

int squares_cuda(const Call& c, void* stream) {
  std::vector<SquaresTensor> tensors;
  int64_t workspace_size = 0;
  if (int rc = parse_squares(c, &tensors, &workspace_size)) return rc;
  std::vector<int64_t> numel;
  for (const SquaresTensor& t : tensors) numel.push_back(t.numel);
  const long long needed = msaccum::cuda::sum_of_squares_workspace(numel.data(), static_cast<int>(numel.size()));
  if (workspace_size < needed)
    return c.fail("the workspace has " + std::to_string(workspace_size) + " elements; these tensors need " +
                  std::to_string(needed) + " (size it with mindspore_accum._C.sum_of_squares_workspace)");
  return cuda_result(c, msaccum::cuda::sum_of_squares(tensors.data(), static_cast<int>(tensors.size()),
                                                      static_cast<float*>(c.params[c.nparam - 2]),
                                                      static_cast<double*>(c.params[c.nparam - 1]), workspace_size,
                                                      stream));
}

int zero_cuda(const Call& c, void* stream) {
  for (int i = 0; i + 1 < c.nparam; ++i)
    if (!c.is(i, "float32")) return c.fail(c.arg(i) + " must be float32");
  int code = 0;
  for (int i = 0; i < c.nparam && code == 0; ++i)
    code = msaccum::cuda::zero_fill(static_cast<float*>(c.params[i]), c.numel(i), stream);
  return cuda_result(c, code);
}
#endif

}  // namespace

#define MSACCUM_AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra
#define MSACCUM_CALL(name) \
  (void)extra;             \
  const Call call{name, nparam, params, ndims, shapes, dtypes}

MSACCUM_EXPORT int MsAccumAccumulate(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumAccumulate");
  return accumulate_cpu(call);
}
MSACCUM_EXPORT int MsAccumFlush(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumFlush");
  return flush_cpu(call, true, true);
}
MSACCUM_EXPORT int MsAccumFlushAcc(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumFlushAcc");
  return flush_cpu(call, true, false);
}
MSACCUM_EXPORT int MsAccumFlushGrad(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumFlushGrad");
  return flush_cpu(call, false, true);
}

MSACCUM_EXPORT int MsAccumAdamW(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumAdamW");
  return adamw_cpu(call, true, true);
}
MSACCUM_EXPORT int MsAccumAdamWAcc(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumAdamWAcc");
  return adamw_cpu(call, true, false);
}
MSACCUM_EXPORT int MsAccumAdamWGrad(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumAdamWGrad");
  return adamw_cpu(call, false, true);
}

MSACCUM_EXPORT int MsAccumZero(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumZero");
  return zero_cpu(call);
}

MSACCUM_EXPORT int MsAccumSumSquares(MSACCUM_AOT_ARGS) {
  (void)stream;
  MSACCUM_CALL("MsAccumSumSquares");
  return squares_cpu(call);
}

#ifdef MSACCUM_WITH_CUDA
MSACCUM_EXPORT int MsAccumAccumulateCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumAccumulateCuda");
  return accumulate_cuda(call, stream);
}
MSACCUM_EXPORT int MsAccumFlushCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumFlushCuda");
  return flush_cuda(call, true, true, stream);
}
MSACCUM_EXPORT int MsAccumFlushAccCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumFlushAccCuda");
  return flush_cuda(call, true, false, stream);
}
MSACCUM_EXPORT int MsAccumFlushGradCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumFlushGradCuda");
  return flush_cuda(call, false, true, stream);
}
MSACCUM_EXPORT int MsAccumAdamWCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumAdamWCuda");
  return adamw_cuda(call, true, true, stream);
}
MSACCUM_EXPORT int MsAccumAdamWAccCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumAdamWAccCuda");
  return adamw_cuda(call, true, false, stream);
}
MSACCUM_EXPORT int MsAccumAdamWGradCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumAdamWGradCuda");
  return adamw_cuda(call, false, true, stream);
}
MSACCUM_EXPORT int MsAccumZeroCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumZeroCuda");
  return zero_cuda(call, stream);
}
MSACCUM_EXPORT int MsAccumSumSquaresCuda(MSACCUM_AOT_ARGS) {
  MSACCUM_CALL("MsAccumSumSquaresCuda");
  return squares_cuda(call, stream);
}
#endif
