// Test-only AOT entry points: built by the tests (tests/sanitizer_build.py
// build_aot_test_library) into libmsaccum_aot_testing.so, which links the installed
// libmsaccum_kernels.so; never shipped. They check their arguments exactly as the shipped entries
// do (csrc/frontends/aot_ops.h) and exercise the layouts the package does not use:
//   MsAccumMomentumUpdateAccGrad:  hyper(4), weight_decay(n), param x n, moment x n, acc x n, grad x n, out
//   MsAccumMomentumUpdateAcc:      hyper(4), weight_decay(n), param x n, moment x n, acc x n, out
//   MsAccumAdamWUpdateAccGrad:     hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, acc x n,
//                                  grad x n, out
//   MsAccumAdamWUpdateAcc:         hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, acc x n, out
//   MsAccumZero:                   x x n, out                           (x = 0, every input float32)
// The updates read acc (+ grad) and then set acc to 0; hyper as in csrc/frontends/mindspore_aot.cpp.
// Each has a ...Cuda twin when the installed kernels were built with CUDA.
#include "frontends/aot_ops.h"

namespace {

using msaccum::aot::Call;

int zero_cpu(const Call& c) {
  std::vector<std::pair<int, bool>> written;
  for (int i = 0; i + 1 < c.nparam; ++i) written.push_back({i, true});
  if (int rc = c.check_overlap(written)) return rc;
  std::vector<float*> tensors;
  std::vector<int64_t> numel;
  for (int i = 0; i + 1 < c.nparam; ++i) {
    if (!c.is(i, "float32")) return c.fail(c.arg(i) + " must be float32");
    tensors.push_back(c.f32(i));
    numel.push_back(c.numel(i));
  }
  msaccum::cpu::zero(tensors, numel);
  *c.placeholder() = 0.0f;
  return 0;
}

#ifdef MSACCUM_WITH_CUDA
int zero_cuda(const Call& c, void* stream) {
  for (int i = 0; i + 1 < c.nparam; ++i)
    if (!c.is(i, "float32")) return c.fail(c.arg(i) + " must be float32");
  int code = 0;
  for (int i = 0; i < c.nparam && code == 0; ++i) code = msaccum::cuda::zero_fill(c.f32(i), c.numel(i), stream);
  return msaccum::aot::cuda_result(c, code);
}
#endif

}  // namespace

using namespace msaccum::aot;

MSACCUM_AOT_ENTRY(MsAccumMomentumUpdateAccGrad, update_cpu<MomentumUpdate>(call, true, true),
                  update_cuda<MomentumUpdate>(call, true, true, stream))
MSACCUM_AOT_ENTRY(MsAccumMomentumUpdateAcc, update_cpu<MomentumUpdate>(call, true, false),
                  update_cuda<MomentumUpdate>(call, true, false, stream))
MSACCUM_AOT_ENTRY(MsAccumAdamWUpdateAccGrad, update_cpu<AdamWUpdate>(call, true, true),
                  update_cuda<AdamWUpdate>(call, true, true, stream))
MSACCUM_AOT_ENTRY(MsAccumAdamWUpdateAcc, update_cpu<AdamWUpdate>(call, true, false),
                  update_cuda<AdamWUpdate>(call, true, false, stream))
MSACCUM_AOT_ENTRY(MsAccumZero, zero_cpu(call), zero_cuda(call, stream))
