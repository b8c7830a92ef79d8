// Launchers of the CUDA kernels. Plain C++ header: no CUDA or pybind11 headers, so the host
// frontends (aot.cpp, bindings.cpp) include it without nvcc.
//
// Pointers are device pointers. Hyper-parameters are read by the kernels from device memory,
// so a launch never waits for the host: `scale` is one float; `hyper` is four floats
// {lr, momentum, grad_scale, nesterov (0 or 1)}; `weight_decay` has one float per tensor
// (FlushTensor::weight_decay is ignored here). Launches go on `stream` (a cudaStream_t).
#pragma once

#include "../cpu/cpu_kernels.h"

namespace msaccum {
namespace cuda {

// Return 0 on success, otherwise a cudaError_t value; error_string() describes it.
int accumulate(const AccumulateTensor* tensors, int count, const float* scale, void* stream);
int momentum_flush(const FlushTensor* tensors, int count, const float* hyper, const float* weight_decay,
                   void* stream);
// Sets `count` floats at `out` to zero on `stream` (the AOT ops' placeholder output).
int zero_fill(float* out, long long count, void* stream);
const char* error_string(int code);
const char* runtime_version();

}  // namespace cuda
}  // namespace msaccum
