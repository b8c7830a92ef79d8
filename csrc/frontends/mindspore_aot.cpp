// The AOT entry points the package calls through mindspore.ops.Custom(func_type="aot")
// (named in one table: src/mindspore_accum/backends/kernel.py, ENTRIES), one line each; the
// argument checking and kernel calls are in aot_ops.h. Each op has one placeholder output of shape
// (1,) set to 0 except MsAccumSumSquares, whose outputs are real. Layouts (n = number of tensors):
//   MsAccumAccumulate:      scale(1) or hyper(2), acc x n, grad x n, out
//   MsAccumMomentumUpdate:  hyper(4), weight_decay(n), param x n, moment x n, grad x n, out
//   MsAccumAdamWUpdate:     hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, grad x n, out
//   MsAccumLambUpdate:      hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, grad x n, out
//   MsAccumLarsUpdate:      hyper(5), weight_decay(n), lars(n), param x n, moment x n, grad x n, out
//   MsAccumSumSquares:      x x n, out, workspace                      (out = sum of x*x)
// MsAccumAccumulate: scale(1) adds (acc += scale * grad); hyper(2) = {scale, overwrite (0/1)}, with
// overwrite 1: acc = scale * grad, the accumulator's old content never read (the first micro-batch
// of a window; so no op resets accumulators). The updates apply `grad` (the window's accumulated
// gradients, as the caller passes them) and never write it. Momentum hyper(4) = {lr, momentum,
// grad_scale, nesterov (0/1)}. AdamW hyper(7) = {lr, beta1, beta2, eps, grad_scale,
// bias_correction1, bias_correction2}, all float32, the bias corrections precomputed by the caller
// (1 - beta^t, or 1 without bias correction); param, moment, exp_avg and exp_avg_sq are float32,
// weight_decay one float32 per tensor (coupled L2 for momentum, decoupled for AdamW), grad float32,
// float16 or bfloat16. LAMB's hyper(7) is AdamW's (bias corrections always 1 - beta^t), its
// weight decay is LAMB's lambda inside the direction u. LARS hyper(5) = {lr, momentum, grad_scale,
// coefficient, epsilon}; lars(n) is 1 where a tensor takes the trust ratio, 0 for plain momentum
// (no decay). Both run two passes (the per-tensor norms first, csrc/accum_math.h).
// MsAccumSumSquares only reads its inputs (float32, float16 or bfloat16, any mix); its `out` is one
// float32, and `workspace` is float64 scratch of sum_of_squares_workspace() elements (the CUDA
// kernel's partial sums; one element on CPU). Names ending in Cuda take device
// memory and run on the given stream. A bad call logs why on stderr and returns non-zero, before
// anything is written.
//
// Test-only entries (the same updates with an accumulator that is zeroed, and a zeroing op) are in
// tests/cpp/aot_test_entries.cpp, built by the tests, not shipped.
#include "aot_ops.h"

using namespace msaccum::aot;

MSACCUM_AOT_ENTRY(MsAccumAccumulate, accumulate_cpu(call), accumulate_cuda(call, stream))
MSACCUM_AOT_ENTRY(MsAccumMomentumUpdate, update_cpu<MomentumUpdate>(call, false, true),
                  update_cuda<MomentumUpdate>(call, false, true, stream))
MSACCUM_AOT_ENTRY(MsAccumAdamWUpdate, update_cpu<AdamWUpdate>(call, false, true),
                  update_cuda<AdamWUpdate>(call, false, true, stream))
MSACCUM_AOT_ENTRY(MsAccumLambUpdate, update_cpu<LambUpdate>(call, false, true),
                  update_cuda<LambUpdate>(call, false, true, stream))
MSACCUM_AOT_ENTRY(MsAccumLarsUpdate, update_cpu<LarsUpdate>(call, false, true),
                  update_cuda<LarsUpdate>(call, false, true, stream))
MSACCUM_AOT_ENTRY(MsAccumSumSquares, squares_cpu(call), squares_cuda(call, stream))
