// Launchers of the CUDA kernels. Plain C++ header: no CUDA or pybind11 headers, so the host
// frontends (frontends/mindspore_aot.cpp, frontends/python_bindings.cpp) include it without nvcc.
//
// Pointers are device pointers. Hyper-parameters are read by the kernels from device memory,
// so a launch never waits for the host: `scale` is one float; `overwrite` is null (add) or one
// float (0: acc += scale * grad, else acc = scale * grad); `hyper` is four floats
// {lr, momentum, grad_scale, nesterov (0 or 1)} for momentum_update and seven floats
// {lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2} for adamw_update;
// `weight_decay` has one float per tensor (MomentumTensor::weight_decay and
// AdamWTensor::weight_decay are ignored here). Launches go on `stream` (a cudaStream_t).
#pragma once

#include "../kernel_api.h"

namespace msaccum {
namespace cuda {
// Exported by libmsaccum_kernels.so (as cpu/cpu_kernels.h's API); the launch internals stay hidden.
#pragma GCC visibility push(default)

// Return 0 on success, otherwise a cudaError_t value; error_string() describes it.
int accumulate(const AccumulateTensor* tensors, int count, const float* scale, void* stream,
               const float* overwrite = nullptr);
// The window-end updates: a given acc is read, then set to 0 (kernel_api.h).
int momentum_update(const MomentumTensor* tensors, int count, const float* hyper, const float* weight_decay,
                    void* stream);
int adamw_update(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay,
                 void* stream);
// The layer-wise adaptive updates (accum_math.h), two passes each plus a deterministic per-tensor
// reduction of the norms (fixed order, no atomics), with stream-ordered scratch memory
// (cudaMallocAsync). lamb_update: `hyper` as adamw_update's seven floats (bias corrections
// 1 - beta^t). lars_update: `hyper` is five floats {lr, momentum, grad_scale, coefficient,
// epsilon}; `lars` one float per tensor (non-zero: the trust ratio, 0: plain momentum, no decay).
// The CUDA pass 1 of LARS reads every tensor (the flags are in device memory).
int lamb_update(const LambTensor* tensors, int count, const float* hyper, const float* weight_decay, void* stream);
int lars_update(const LarsTensor* tensors, int count, const float* hyper, const float* weight_decay,
                const float* lars, void* stream);
// Sum over every element of every tensor of its square (accum_math.h), as one float32 stored at
// `out` (device memory). Every thread of the first pass stores its partial sum in `workspace`
// (device memory, `workspace_size` doubles, at least sum_of_squares_workspace() of them); two
// more launches add the partials in a fixed order, so the result is deterministic.
int sum_of_squares(const SquaresTensor* tensors, int count, float* out, double* workspace,
                   long long workspace_size, void* stream);
// Doubles of workspace sum_of_squares needs for tensors of these sizes (host arithmetic only).
long long sum_of_squares_workspace(const int64_t* numel, int count);
// Sets `count` floats at `out` to zero on `stream` (the AOT ops' placeholder output).
int zero_fill(float* out, long long count, void* stream);
// Launchers with host-side arguments, for callers that hold no device memory of their own (the
// pybind11 frontend with DLPack CUDA tensors): make `device` current (restored afterwards),
// upload the scalars and the per-tensor weight decays into one stream-ordered allocation
// (cudaMallocAsync/cudaFreeAsync on `stream`), launch on `stream`, and return without waiting,
// except sum_of_squares_host, which waits for its result. A call with no elements makes no
// CUDA call at all. MomentumTensor::weight_decay and AdamWTensor::weight_decay are used here.
int accumulate_host(const AccumulateTensor* tensors, int count, float scale, bool overwrite, int device,
                    void* stream);
int momentum_update_host(const MomentumTensor* tensors, int count, const MomentumScalars& scalars, int device,
                         void* stream);
int adamw_update_host(const AdamWTensor* tensors, int count, const AdamWScalars& scalars, int device, void* stream);
int sum_of_squares_host(const SquaresTensor* tensors, int count, double* result, int device, void* stream);
const char* error_string(int code);
const char* runtime_version();

#pragma GCC visibility pop

}  // namespace cuda
}  // namespace msaccum
