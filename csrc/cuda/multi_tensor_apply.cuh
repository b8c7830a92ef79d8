// A generic multi-tensor launcher in the style of apex's multi_tensor_apply.cuh: one launch covers
// many tensors, each block one chunk of one tensor.
//
// An op is a functor template Functor<G> (G: the gradient element type below) that declares
//   using Tensor = ...;                          its kernel_api.h descriptor
//   static constexpr int kDepth;                 pointers per tensor; the LAST is the gradient (or
//                                                input) of type G, the others are float32
//   using Params = ...;                          per-call kernel arguments (device pointers), with
//                                                bool valid() const: false if one is missing
//   static void addresses(const Tensor&, void** out);   its kDepth pointers, in list order
//   static bool has_required(const Tensor&);     the pointers a non-empty tensor must have
//   static GradType grad_type(const Tensor&);
//   __device__ static void apply(const TensorListMetadata<kDepth>&, const BlockChunk&, const Params&);
// multi_tensor_apply<Functor>() checks the tensors, groups them by gradient type (a tensor
// without a gradient goes with float32), fills TensorListMetadata and launches
// multi_tensor_kernel<Functor<G>> whenever its tensor slots or its block table are full,
// carrying a partly processed tensor over to the next launch in slot 0.
//
// Plain enough for the host shim (host_shim.h): no __syncthreads, shared memory or warp
// intrinsics, every launch through MSACCUM_LAUNCH. Included by cuda_kernels.cu after the CUDA
// runtime header (or, in the host build, host_shim.h's stand-ins).
#pragma once

#include <cstdint>

#include "../accum_math.h"
#include "../kernel_api.h"
#include "cuda_kernels_internal.h"

#ifndef MSACCUM_LAUNCH
#define MSACCUM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace msaccum {
namespace cuda {
namespace {

using internal::kBlockThreads;
using internal::kMaxBlocksPerLaunch;

// ---- gradient element types: how one element is stored, loaded four at a time and widened ----

struct GradF32 {
  using Scalar = float;
  using Vec = float4;
  static constexpr GradType kType = GradType::kFloat32;
  __device__ __forceinline__ static float widen(float v) { return v; }
};
struct GradF16 {
  using Scalar = uint16_t;
  using Vec = ushort4;
  static constexpr GradType kType = GradType::kFloat16;
  __device__ __forceinline__ static float widen(uint16_t v) { return half_bits_to_float(v); }
};
struct GradBF16 {
  using Scalar = uint16_t;
  using Vec = ushort4;
  static constexpr GradType kType = GradType::kBFloat16;
  __device__ __forceinline__ static float widen(uint16_t v) { return bf16_bits_to_float(v); }
};

// ---- the kernel argument: tensor lists and the block table (passed by value) ----

template <int kDepth>
struct TensorListMetadata {
  static constexpr int kMaxTensors = internal::max_tensors_for_depth(kDepth);
  void* addresses[kDepth][kMaxTensors];
  int64_t numel[kMaxTensors];
  int list_index[kMaxTensors];  // the tensor's index in the caller's list (e.g. its weight decay)
  unsigned char block_tensor[kMaxBlocksPerLaunch];
  int block_chunk[kMaxBlocksPerLaunch];
  int64_t chunk;        // elements per chunk
  int64_t first_block;  // blocks of the same call's earlier launches (their sum_of_squares slots come first)
};
static_assert(TensorListMetadata<1>::kMaxTensors <= 256 && TensorListMetadata<5>::kMaxTensors <= 256,
              "block_tensor is an unsigned char");

// The chunk of the current block: [start, start + len) of slot `tensor`.
struct BlockChunk {
  int tensor;
  int64_t start;
  int64_t len;
};

template <typename Functor>
__global__ void __launch_bounds__(kBlockThreads) multi_tensor_kernel(TensorListMetadata<Functor::kDepth> meta,
                                                                     typename Functor::Params params) {
  BlockChunk c;
  c.tensor = meta.block_tensor[blockIdx.x];
  c.start = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * meta.chunk;
  const int64_t left = meta.numel[c.tensor] - c.start;
  c.len = left < meta.chunk ? left : meta.chunk;
  Functor::apply(meta, c, params);
}

// Slot k of the current tensor as a typed pointer at the chunk's start (null stays null).
template <typename T, int kDepth>
__device__ __forceinline__ T* chunk_pointer(const TensorListMetadata<kDepth>& meta, int k, const BlockChunk& c) {
  T* base = static_cast<T*>(meta.addresses[k][c.tensor]);
  return base ? base + c.start : nullptr;
}

template <typename T>
__device__ __forceinline__ bool aligned_for(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) % sizeof(T)) == 0;
}

// ---- host side ----

int check_launch() { return static_cast<int>(cudaGetLastError()); }

constexpr int kInvalidValue = static_cast<int>(cudaErrorInvalidValue);

// Launches Functor<G> over the tensors whose gradient type is G (float32 for those without a
// gradient). `blocks_done` counts the blocks of the call's earlier launches.
template <typename Functor>
int launch_group(const typename Functor::Tensor* tensors, int count, int64_t chunk,
                 const typename Functor::Params& params, cudaStream_t stream, int64_t* blocks_done) {
  constexpr int kDepth = Functor::kDepth;
  using Meta = TensorListMetadata<kDepth>;
  static_assert(sizeof(Meta) + sizeof(typename Functor::Params) <= 4000,
                "kernel arguments exceed the CUDA parameter space");
  Meta meta{};
  meta.chunk = chunk;
  auto launch = [&](int blocks) {
    meta.first_block = *blocks_done;
    *blocks_done += blocks;
    MSACCUM_LAUNCH(multi_tensor_kernel<Functor>, dim3(blocks), dim3(kBlockThreads), stream, meta, params);
    return check_launch();
  };
  int slots = 0, blocks = 0;
  for (int i = 0; i < count; ++i) {
    void* addresses[kDepth];
    Functor::addresses(tensors[i], addresses);
    const GradType type = addresses[kDepth - 1] ? Functor::grad_type(tensors[i]) : GradType::kFloat32;
    if (type != Functor::Grad::kType || tensors[i].numel <= 0) continue;
    for (int k = 0; k < kDepth; ++k) meta.addresses[k][slots] = addresses[k];
    meta.numel[slots] = tensors[i].numel;
    meta.list_index[slots] = i;
    ++slots;
    const int64_t chunks = (tensors[i].numel + chunk - 1) / chunk;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_tensor[blocks] = static_cast<unsigned char>(slots - 1);
      meta.block_chunk[blocks] = static_cast<int>(c);
      ++blocks;
      const bool last_chunk = c == chunks - 1;
      if (blocks == kMaxBlocksPerLaunch || (slots == Meta::kMaxTensors && last_chunk)) {
        if (int rc = launch(blocks)) return rc;
        blocks = 0;
        if (last_chunk) {
          slots = 0;
        } else {  // the current tensor continues in the next launch, in slot 0
          for (int k = 0; k < kDepth; ++k) meta.addresses[k][0] = meta.addresses[k][slots - 1];
          meta.numel[0] = meta.numel[slots - 1];
          meta.list_index[0] = meta.list_index[slots - 1];
          slots = 1;
        }
      }
    }
  }
  if (blocks > 0) return launch(blocks);
  return 0;
}

// Checks the arguments (sizes, gradient types, required pointers, Params), then launches Functor
// over all the tensors, float32 gradients first, then float16, then bfloat16. Returns 0 or a
// cudaError_t value; nothing is launched for bad input. `blocks_done` (if given) receives the
// number of blocks launched.
template <template <typename> class Functor>
int multi_tensor_apply(const typename Functor<GradF32>::Tensor* tensors, int count, long long chunk,
                       const typename Functor<GradF32>::Params& params, void* stream,
                       int64_t* blocks_done = nullptr) {
  using Host = Functor<GradF32>;
  if (count < 0 || chunk <= 0 || (count > 0 && (tensors == nullptr || !params.valid()))) return kInvalidValue;
  for (int i = 0; i < count; ++i) {
    const auto& t = tensors[i];
    // A block-table entry names a chunk with an int.
    const bool valid_numel = t.numel >= 0 && t.numel / chunk < INT32_MAX;
    if (!valid_numel || static_cast<int>(Host::grad_type(t)) > 2 || (t.numel > 0 && !Host::has_required(t)))
      return kInvalidValue;
  }
  int64_t blocks = 0;
  if (blocks_done == nullptr) blocks_done = &blocks;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int rc = launch_group<Functor<GradF32>>(tensors, count, chunk, params, s, blocks_done);
  if (rc == 0) rc = launch_group<Functor<GradF16>>(tensors, count, chunk, params, s, blocks_done);
  if (rc == 0) rc = launch_group<Functor<GradBF16>>(tensors, count, chunk, params, s, blocks_done);
  return rc;
}

}  // namespace
}  // namespace cuda
}  // namespace msaccum
