// Launch geometry of the CUDA kernels, and the launchers with an explicit chunk size.
//
// Not part of the frontends' API (they use cuda_kernels.h). The host-shim tests use the
// chunked launchers to split small tensors into many chunks and to overflow the block table
// without allocating hundreds of megabytes. Plain C++: no CUDA headers.
#pragma once

#include "../kernel_api.h"

namespace msaccum {
namespace cuda {
namespace internal {

constexpr int kBlockThreads = 256;           // threads per block
constexpr long long kChunkElems = 65536;     // elements per block (a multiple of 4 keeps chunks aligned)
constexpr int kMaxBlocksPerLaunch = 320;     // block table entries per launch

// Tensor slots per launch for ops with `depth` pointers per tensor (multi_tensor_apply.cuh
// TensorListMetadata): as many as keep the kernel's arguments below CUDA's 4 KiB parameter limit.
constexpr int max_tensors_for_depth(int depth) { return depth <= 2 ? 64 : depth == 3 ? 48 : depth == 4 ? 36 : 30; }
constexpr int kMaxAccumulateTensors = max_tensors_for_depth(2);  // acc, grad
constexpr int kMaxMomentumTensors = max_tensors_for_depth(4);    // param, moment, acc, grad
constexpr int kMaxAdamWTensors = max_tensors_for_depth(5);       // param, exp_avg, exp_avg_sq, acc, grad
constexpr int kMaxLambTensors = max_tensors_for_depth(5);       // pass 1: param, exp_avg, exp_avg_sq, acc, grad
constexpr int kMaxLarsTensors = max_tensors_for_depth(4);       // pass 2: param, moment, acc, grad
constexpr int kNormTensorsPerLaunch = 128;  // tensors of one per-tensor norm reduction launch
constexpr int kMaxSquaresTensors = max_tensors_for_depth(1);     // x

// As accumulate / momentum_update / adamw_update / sum_of_squares in cuda_kernels.h, with
// `chunk_elems` elements per block. Any chunk_elems >= 1 is correct; chunks whose pointers are
// misaligned take the scalar path.
int accumulate_chunked(const AccumulateTensor* tensors, int count, const float* scale, void* stream,
                       long long chunk_elems, const float* overwrite = nullptr);
int sum_of_squares_chunked(const SquaresTensor* tensors, int count, float* out, double* workspace,
                           long long workspace_size, void* stream, long long chunk_elems);
long long sum_of_squares_workspace_chunked(const int64_t* numel, int count, long long chunk_elems);
int momentum_update_chunked(const MomentumTensor* tensors, int count, const float* hyper, const float* weight_decay,
                            void* stream, long long chunk_elems);
int lamb_update_chunked(const LambTensor* tensors, int count, const float* hyper, const float* weight_decay,
                        void* stream, long long chunk_elems);
int lars_update_chunked(const LarsTensor* tensors, int count, const float* hyper, const float* weight_decay,
                        const float* lars, void* stream, long long chunk_elems);
int adamw_update_chunked(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay,
                         void* stream, long long chunk_elems);

}  // namespace internal
}  // namespace cuda
}  // namespace msaccum
