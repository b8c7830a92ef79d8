// Launch geometry of the CUDA kernels, and the launchers with an explicit chunk size.
//
// Not part of the frontends' API (they use cuda_kernels.h). The host-shim tests use the
// chunked launchers to split small tensors into many chunks and to overflow the block table
// without allocating hundreds of megabytes. Plain C++: no CUDA headers.
#pragma once

#include "../cpu/cpu_kernels.h"

namespace msaccum {
namespace cuda {
namespace internal {

constexpr int kBlockThreads = 256;           // threads per block
constexpr long long kChunkElems = 65536;     // elements per block (a multiple of 4 keeps chunks aligned)
constexpr int kMaxBlocksPerLaunch = 320;     // block table entries per launch
constexpr int kMaxAccumulateTensors = 64;    // tensor slots per accumulate launch
constexpr int kMaxFlushTensors = 36;         // tensor slots per momentum_flush launch
constexpr int kMaxSquaresTensors = 64;       // tensor slots per sum_of_squares launch
constexpr int kMaxAdamWTensors = 30;         // tensor slots per adamw_flush launch (5 pointers each)

// As accumulate / momentum_flush / adamw_flush / sum_of_squares in cuda_kernels.h, with `chunk_elems` elements per block.
// Any chunk_elems >= 1 is correct; chunks whose pointers are misaligned take the scalar path.
int accumulate_chunked(const AccumulateTensor* tensors, int count, const float* scale, void* stream,
                       long long chunk_elems, const float* overwrite = nullptr);
int sum_of_squares_chunked(const SquaresTensor* tensors, int count, float* out, double* workspace,
                           long long workspace_size, void* stream, long long chunk_elems);
long long sum_of_squares_workspace_chunked(const int64_t* numel, int count, long long chunk_elems);
int momentum_flush_chunked(const FlushTensor* tensors, int count, const float* hyper, const float* weight_decay,
                           void* stream, long long chunk_elems);
int adamw_flush_chunked(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay,
                        void* stream, long long chunk_elems);

}  // namespace internal
}  // namespace cuda
}  // namespace msaccum
