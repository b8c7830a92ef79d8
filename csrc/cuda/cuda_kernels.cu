// CUDA kernels of mindspore_accum: `accumulate`, `momentum_flush`, `adamw_flush` and `sum_of_squares` over
// lists of tensors, launched in the style of apex / PyTorch multi_tensor_apply.
//
// One launch covers many tensors: the kernel takes, by value, a struct with up to kMax*Tensors
// tensor pointers and sizes plus a table that maps each block to (tensor, chunk). Every block
// processes one chunk of kChunkElems elements of one tensor; its threads stride over the chunk.
// The host launcher walks the tensor list, fills the struct, launches when the tensor slots or
// the block table are full, and carries a partly processed tensor over to the next launch.
//
// Loads are vectorised (float4 for float32, 4 x 16 bit for float16/bfloat16 gradients) when
// every pointer of the chunk is aligned to its vector type; the remaining 0-3 elements of the
// chunk, or the whole chunk when a pointer is misaligned, take the scalar path.
//
// The per-element math is only in ../accum_math.h. Hyper-parameters are read from device
// memory, so nothing here waits for the device. Tensors of one call must not overlap (the
// frontends check this).
//
// The same source compiles as host C++ with -DMSACCUM_HOST_SHIM -include host_shim.h, so the
// tests run these kernels (indexing, chunking, tails, alignment dispatch) on the CPU under
// AddressSanitizer. Hence: no __syncthreads, shared memory or warp intrinsics here, and every
// launch goes through MSACCUM_LAUNCH. Never include pybind11 from this file.
#ifndef MSACCUM_HOST_SHIM
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstdio>
#include <vector>

#include "../accum_math.h"
#include "cuda_kernels.h"
#include "cuda_kernels_internal.h"

#ifndef MSACCUM_LAUNCH
#define MSACCUM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif
// Counts elements per path in the host-shim build (so tests can see which path ran); no-op on GPU.
#ifndef MSACCUM_COUNT_PATH
#define MSACCUM_COUNT_PATH(path, n) ((void)0)
#endif

namespace msaccum {
namespace cuda {
namespace {

using internal::kBlockThreads;
using internal::kMaxAccumulateTensors;
using internal::kMaxAdamWTensors;
using internal::kMaxBlocksPerLaunch;
using internal::kMaxFlushTensors;
using internal::kMaxSquaresTensors;

// ---- gradient element types ----

struct GradF32 {
  using Scalar = float;
  using Vec = float4;
  __device__ __forceinline__ static float widen(float v) { return v; }
};
struct GradF16 {
  using Scalar = uint16_t;
  using Vec = ushort4;
  __device__ __forceinline__ static float widen(uint16_t v) { return half_bits_to_float(v); }
};
struct GradBF16 {
  using Scalar = uint16_t;
  using Vec = ushort4;
  __device__ __forceinline__ static float widen(uint16_t v) { return bf16_bits_to_float(v); }
};

template <typename T>
__device__ __forceinline__ bool aligned_for(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) % sizeof(T)) == 0;
}

// ---- kernel arguments (passed by value; must stay well below the 4 KiB parameter limit) ----

template <typename G>
struct AccumulateArgs {
  float* acc[kMaxAccumulateTensors];
  const typename G::Scalar* grad[kMaxAccumulateTensors];
  int64_t numel[kMaxAccumulateTensors];
  unsigned char block_tensor[kMaxBlocksPerLaunch];
  int block_chunk[kMaxBlocksPerLaunch];
  const float* scale;      // device memory, one float
  const float* overwrite;  // device memory, one float (non-zero: acc = scale * grad), or null (add)
  int64_t chunk;           // elements per chunk
};

template <typename G>
struct FlushArgs {
  float* param[kMaxFlushTensors];
  float* moment[kMaxFlushTensors];
  float* acc[kMaxFlushTensors];                     // may be null
  const typename G::Scalar* grad[kMaxFlushTensors];  // may be null
  int64_t numel[kMaxFlushTensors];
  int wd_index[kMaxFlushTensors];  // index into weight_decay (the tensor's place in the caller's list)
  unsigned char block_tensor[kMaxBlocksPerLaunch];
  int block_chunk[kMaxBlocksPerLaunch];
  const float* hyper;         // device memory: lr, momentum, grad_scale, nesterov (0/1)
  const float* weight_decay;  // device memory: one float per tensor of the caller's list
  int64_t chunk;
};

template <typename G>
struct AdamWArgsPack {
  float* param[kMaxAdamWTensors];
  float* exp_avg[kMaxAdamWTensors];
  float* exp_avg_sq[kMaxAdamWTensors];
  float* acc[kMaxAdamWTensors];                     // may be null
  const typename G::Scalar* grad[kMaxAdamWTensors];  // may be null
  int64_t numel[kMaxAdamWTensors];
  int wd_index[kMaxAdamWTensors];
  unsigned char block_tensor[kMaxBlocksPerLaunch];
  int block_chunk[kMaxBlocksPerLaunch];
  const float* hyper;         // device memory: lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2
  const float* weight_decay;  // device memory: one float per tensor of the caller's list
  int64_t chunk;
};

template <typename G>
struct SquaresArgs {
  const typename G::Scalar* x[kMaxSquaresTensors];
  int64_t numel[kMaxSquaresTensors];
  unsigned char block_tensor[kMaxBlocksPerLaunch];
  int block_chunk[kMaxBlocksPerLaunch];
  double* partials;  // blockDim.x slots per block of this launch
  int64_t chunk;
};

static_assert(sizeof(SquaresArgs<GradF32>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(kMaxSquaresTensors <= 256, "block_tensor is an unsigned char");
static_assert(sizeof(AccumulateArgs<GradF32>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(sizeof(AccumulateArgs<GradF16>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(sizeof(FlushArgs<GradF32>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(sizeof(FlushArgs<GradF16>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(sizeof(AdamWArgsPack<GradF32>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(sizeof(AdamWArgsPack<GradF16>) <= 4000, "kernel arguments exceed the CUDA parameter space");
static_assert(kMaxAccumulateTensors <= 256 && kMaxFlushTensors <= 256 && kMaxAdamWTensors <= 256,
              "block_tensor is an unsigned char");

// The chunk of the current block: [start, start + len) of tensor `tensor`.
struct BlockChunk {
  int tensor;
  int64_t start;
  int64_t len;
};

template <typename Args>
__device__ __forceinline__ BlockChunk block_chunk(const Args& args) {
  BlockChunk c;
  c.tensor = args.block_tensor[blockIdx.x];
  c.start = static_cast<int64_t>(args.block_chunk[blockIdx.x]) * args.chunk;
  const int64_t left = args.numel[c.tensor] - c.start;
  c.len = left < args.chunk ? left : args.chunk;
  return c;
}

// ---- accumulate: acc += scale * grad, or acc = scale * grad (overwrite) ----

// acc = scale * grad: acc is only written, never read.
template <typename G>
__device__ __forceinline__ void assign_chunk(float* __restrict__ acc, const typename G::Scalar* __restrict__ grad,
                                             int64_t len, float scale) {
  int64_t i = threadIdx.x;
  if (aligned_for<float4>(acc) && aligned_for<typename G::Vec>(grad)) {
    const int64_t nvec = len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      const typename G::Vec g = reinterpret_cast<const typename G::Vec*>(grad)[v];
      reinterpret_cast<float4*>(acc)[v] =
          make_float4(assign_value(G::widen(g.x), scale), assign_value(G::widen(g.y), scale),
                      assign_value(G::widen(g.z), scale), assign_value(G::widen(g.w), scale));
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;
  }
  for (; i < len; i += blockDim.x) {
    acc[i] = assign_value(G::widen(grad[i]), scale);
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

template <typename G>
__global__ void __launch_bounds__(kBlockThreads) accumulate_kernel(AccumulateArgs<G> args) {
  const BlockChunk c = block_chunk(args);
  float* __restrict__ acc = args.acc[c.tensor] + c.start;
  const typename G::Scalar* __restrict__ grad = args.grad[c.tensor] + c.start;
  const float scale = *args.scale;
  // The flag is per call, hence uniform over the grid: no divergence.
  if (args.overwrite != nullptr && *args.overwrite != 0.0f) {
    assign_chunk<G>(acc, grad, c.len, scale);
    return;
  }

  int64_t i = threadIdx.x;
  if (aligned_for<float4>(acc) && aligned_for<typename G::Vec>(grad)) {
    const int64_t nvec = c.len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float4 a = reinterpret_cast<const float4*>(acc)[v];
      const typename G::Vec g = reinterpret_cast<const typename G::Vec*>(grad)[v];
      a.x = accumulate_value(a.x, G::widen(g.x), scale);
      a.y = accumulate_value(a.y, G::widen(g.y), scale);
      a.z = accumulate_value(a.z, G::widen(g.z), scale);
      a.w = accumulate_value(a.w, G::widen(g.w), scale);
      reinterpret_cast<float4*>(acc)[v] = a;
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;  // the scalar tail: the last len % 4 elements
  }
  for (; i < c.len; i += blockDim.x) {
    acc[i] = accumulate_value(acc[i], G::widen(grad[i]), scale);
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

// ---- momentum_flush ----

// summed = acc + grad (either may be absent, as in the CPU kernels); update; acc = 0.
template <bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ float summed_grad(float a, float g) {
  float summed = 0.0f;
  if (kHasAcc) summed = a;
  if (kHasGrad) summed = kHasAcc ? summed + g : g;
  return summed;
}

template <typename G, bool kNesterov, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ void flush_chunk(float* __restrict__ param, float* __restrict__ moment,
                                            float* __restrict__ acc, const typename G::Scalar* __restrict__ grad,
                                            int64_t len, const MomentumArgs& h) {
  int64_t i = threadIdx.x;
  if (aligned_for<float4>(param) && aligned_for<float4>(moment) && (!kHasAcc || aligned_for<float4>(acc)) &&
      (!kHasGrad || aligned_for<typename G::Vec>(grad))) {
    const int64_t nvec = len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float4 p = reinterpret_cast<const float4*>(param)[v];
      float4 m = reinterpret_cast<const float4*>(moment)[v];
      float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      float4 g = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (kHasAcc) a = reinterpret_cast<const float4*>(acc)[v];
      if (kHasGrad) {
        const typename G::Vec gv = reinterpret_cast<const typename G::Vec*>(grad)[v];
        g = make_float4(G::widen(gv.x), G::widen(gv.y), G::widen(gv.z), G::widen(gv.w));
      }
      momentum_value<kNesterov>(p.x, m.x, summed_grad<kHasAcc, kHasGrad>(a.x, g.x), h);
      momentum_value<kNesterov>(p.y, m.y, summed_grad<kHasAcc, kHasGrad>(a.y, g.y), h);
      momentum_value<kNesterov>(p.z, m.z, summed_grad<kHasAcc, kHasGrad>(a.z, g.z), h);
      momentum_value<kNesterov>(p.w, m.w, summed_grad<kHasAcc, kHasGrad>(a.w, g.w), h);
      reinterpret_cast<float4*>(param)[v] = p;
      reinterpret_cast<float4*>(moment)[v] = m;
      if (kHasAcc) reinterpret_cast<float4*>(acc)[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;
  }
  for (; i < len; i += blockDim.x) {
    const float a = kHasAcc ? acc[i] : 0.0f;
    const float g = kHasGrad ? G::widen(grad[i]) : 0.0f;
    momentum_value<kNesterov>(param[i], moment[i], summed_grad<kHasAcc, kHasGrad>(a, g), h);
    if (kHasAcc) acc[i] = 0.0f;
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

template <typename G, bool kNesterov>
__device__ __forceinline__ void flush_dispatch(float* param, float* moment, float* acc,
                                               const typename G::Scalar* grad, int64_t len, const MomentumArgs& h) {
  // acc/grad presence is per tensor, hence uniform over the block: no divergence.
  if (acc && grad) flush_chunk<G, kNesterov, true, true>(param, moment, acc, grad, len, h);
  else if (acc) flush_chunk<G, kNesterov, true, false>(param, moment, acc, grad, len, h);
  else if (grad) flush_chunk<G, kNesterov, false, true>(param, moment, acc, grad, len, h);
  else flush_chunk<G, kNesterov, false, false>(param, moment, acc, grad, len, h);
}

template <typename G>
__global__ void __launch_bounds__(kBlockThreads) flush_kernel(FlushArgs<G> args) {
  const BlockChunk c = block_chunk(args);
  const MomentumArgs h{args.hyper[0], args.hyper[1], args.hyper[2], args.weight_decay[args.wd_index[c.tensor]]};
  const bool nesterov = args.hyper[3] != 0.0f;
  float* param = args.param[c.tensor] + c.start;
  float* moment = args.moment[c.tensor] + c.start;
  float* acc = args.acc[c.tensor] ? args.acc[c.tensor] + c.start : nullptr;
  const typename G::Scalar* grad = args.grad[c.tensor] ? args.grad[c.tensor] + c.start : nullptr;
  if (nesterov) flush_dispatch<G, true>(param, moment, acc, grad, c.len, h);
  else flush_dispatch<G, false>(param, moment, acc, grad, c.len, h);
}

// ---- adamw_flush ----

template <typename G, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ void adamw_chunk(float* __restrict__ param, float* __restrict__ exp_avg,
                                            float* __restrict__ exp_avg_sq, float* __restrict__ acc,
                                            const typename G::Scalar* __restrict__ grad, int64_t len,
                                            const AdamWArgs& h) {
  int64_t i = threadIdx.x;
  if (aligned_for<float4>(param) && aligned_for<float4>(exp_avg) && aligned_for<float4>(exp_avg_sq) &&
      (!kHasAcc || aligned_for<float4>(acc)) && (!kHasGrad || aligned_for<typename G::Vec>(grad))) {
    const int64_t nvec = len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float4 p = reinterpret_cast<const float4*>(param)[v];
      float4 m = reinterpret_cast<const float4*>(exp_avg)[v];
      float4 s = reinterpret_cast<const float4*>(exp_avg_sq)[v];
      float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      float4 g = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (kHasAcc) a = reinterpret_cast<const float4*>(acc)[v];
      if (kHasGrad) {
        const typename G::Vec gv = reinterpret_cast<const typename G::Vec*>(grad)[v];
        g = make_float4(G::widen(gv.x), G::widen(gv.y), G::widen(gv.z), G::widen(gv.w));
      }
      adamw_value(p.x, m.x, s.x, summed_grad<kHasAcc, kHasGrad>(a.x, g.x), h);
      adamw_value(p.y, m.y, s.y, summed_grad<kHasAcc, kHasGrad>(a.y, g.y), h);
      adamw_value(p.z, m.z, s.z, summed_grad<kHasAcc, kHasGrad>(a.z, g.z), h);
      adamw_value(p.w, m.w, s.w, summed_grad<kHasAcc, kHasGrad>(a.w, g.w), h);
      reinterpret_cast<float4*>(param)[v] = p;
      reinterpret_cast<float4*>(exp_avg)[v] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[v] = s;
      if (kHasAcc) reinterpret_cast<float4*>(acc)[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;
  }
  for (; i < len; i += blockDim.x) {
    const float a = kHasAcc ? acc[i] : 0.0f;
    const float g = kHasGrad ? G::widen(grad[i]) : 0.0f;
    adamw_value(param[i], exp_avg[i], exp_avg_sq[i], summed_grad<kHasAcc, kHasGrad>(a, g), h);
    if (kHasAcc) acc[i] = 0.0f;
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

template <typename G>
__global__ void __launch_bounds__(kBlockThreads) adamw_kernel(AdamWArgsPack<G> args) {
  const BlockChunk c = block_chunk(args);
  const float* hp = args.hyper;
  const AdamWArgs h{hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], args.weight_decay[args.wd_index[c.tensor]]};
  float* param = args.param[c.tensor] + c.start;
  float* exp_avg = args.exp_avg[c.tensor] + c.start;
  float* exp_avg_sq = args.exp_avg_sq[c.tensor] + c.start;
  float* acc = args.acc[c.tensor] ? args.acc[c.tensor] + c.start : nullptr;
  const typename G::Scalar* grad = args.grad[c.tensor] ? args.grad[c.tensor] + c.start : nullptr;
  // acc/grad presence is per tensor, hence uniform over the block: no divergence.
  if (acc && grad) adamw_chunk<G, true, true>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
  else if (acc) adamw_chunk<G, true, false>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
  else if (grad) adamw_chunk<G, false, true>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
  else adamw_chunk<G, false, false>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
}

// ---- sum of squares ----

// Pass 1: every thread adds the squares of its strided elements of the block's chunk in float32
// (chunk / blockDim.x terms: 256 with the default geometry) and stores that run's sum in its own
// slot of `partials`: no shared memory, no atomics, every slot written exactly once.
template <typename G>
__global__ void __launch_bounds__(kBlockThreads) squares_kernel(SquaresArgs<G> args) {
  const BlockChunk c = block_chunk(args);
  const typename G::Scalar* __restrict__ x = args.x[c.tensor] + c.start;
  float run = 0.0f;
  int64_t i = threadIdx.x;
  if (aligned_for<typename G::Vec>(x)) {
    const int64_t nvec = c.len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      const typename G::Vec g = reinterpret_cast<const typename G::Vec*>(x)[v];
      run += square_value(G::widen(g.x));
      run += square_value(G::widen(g.y));
      run += square_value(G::widen(g.z));
      run += square_value(G::widen(g.w));
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;
  }
  for (; i < c.len; i += blockDim.x) {
    run += square_value(G::widen(x[i]));
    MSACCUM_COUNT_PATH(scalar, 1);
  }
  args.partials[static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x] = run;
}

// Pass 2 (one block): thread t adds partials t, t + blockDim.x, ... in order, in double.
__global__ void __launch_bounds__(kBlockThreads) reduce_partials_kernel(const double* partials, int64_t count,
                                                                        double* stage) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  stage[threadIdx.x] = sum;
}

// Pass 3 (one thread): the stage sums in order; the result as float32 (inf if it overflows).
__global__ void finish_squares_kernel(const double* stage, int count, float* out) {
  double sum = 0.0;
  for (int i = 0; i < count; ++i) sum += stage[i];
  *out = static_cast<float>(sum);
}

// ---- host side: pack tensors and chunks into launches ----

// Walks the tensors selected by `take(i)` and calls `launch(args, blocks)` whenever the tensor
// slots (kMaxTensors) or the block table are full, then once more for the rest. `set(args, slot, i)`
// stores tensor i in a slot; `copy(args, to, from)` moves the slot of a partly processed tensor.
template <int kMaxTensors, typename Tensor, typename Args, typename Take, typename Set, typename Copy,
          typename Launch>
int pack_and_launch(const Tensor* tensors, Args& args, int count, int64_t chunk, Take take, Set set, Copy copy,
                    Launch launch) {
  int slots = 0, blocks = 0;
  for (int i = 0; i < count; ++i) {
    if (!take(i) || tensors[i].numel <= 0) continue;
    set(args, slots, i);
    ++slots;
    const int64_t chunks = (tensors[i].numel + chunk - 1) / chunk;
    for (int64_t c = 0; c < chunks; ++c) {
      args.block_tensor[blocks] = static_cast<unsigned char>(slots - 1);
      args.block_chunk[blocks] = static_cast<int>(c);
      ++blocks;
      const bool last_chunk = c == chunks - 1;
      if (blocks == kMaxBlocksPerLaunch || (slots == kMaxTensors && last_chunk)) {
        if (int rc = launch(args, blocks)) return rc;
        blocks = 0;
        if (last_chunk) {
          slots = 0;
        } else {  // the current tensor continues in the next launch, in slot 0
          copy(args, 0, slots - 1);
          slots = 1;
        }
      }
    }
  }
  if (blocks > 0) return launch(args, blocks);
  return 0;
}

int check_launch() { return static_cast<int>(cudaGetLastError()); }

int grad_type_index(GradType t) { return static_cast<int>(t); }

template <typename G>
int accumulate_group(const AccumulateTensor* tensors, int count, GradType type, const float* scale,
                     const float* overwrite, cudaStream_t stream, int64_t chunk) {
  AccumulateArgs<G> args{};
  args.scale = scale;
  args.overwrite = overwrite;
  args.chunk = chunk;
  return pack_and_launch<kMaxAccumulateTensors>(
      tensors, args, count, chunk, [&](int i) { return tensors[i].grad_type == type; },
      [&](AccumulateArgs<G>& a, int slot, int i) {
        a.acc[slot] = tensors[i].acc;
        a.grad[slot] = static_cast<const typename G::Scalar*>(tensors[i].grad);
        a.numel[slot] = tensors[i].numel;
      },
      [](AccumulateArgs<G>& a, int to, int from) {
        a.acc[to] = a.acc[from];
        a.grad[to] = a.grad[from];
        a.numel[to] = a.numel[from];
      },
      [&](const AccumulateArgs<G>& a, int blocks) {
        MSACCUM_LAUNCH(accumulate_kernel<G>, dim3(blocks), dim3(kBlockThreads), stream, a);
        return check_launch();
      });
}

template <typename G>
int flush_group(const FlushTensor* tensors, int count, GradType type, const float* hyper, const float* weight_decay,
                cudaStream_t stream, int64_t chunk) {
  FlushArgs<G> args{};
  args.hyper = hyper;
  args.weight_decay = weight_decay;
  args.chunk = chunk;
  // Without a gradient the gradient type is irrelevant: such tensors go with the float32 group.
  auto effective = [&](int i) { return tensors[i].grad ? tensors[i].grad_type : GradType::kFloat32; };
  return pack_and_launch<kMaxFlushTensors>(
      tensors, args, count, chunk, [&](int i) { return effective(i) == type; },
      [&](FlushArgs<G>& a, int slot, int i) {
        a.param[slot] = tensors[i].param;
        a.moment[slot] = tensors[i].moment;
        a.acc[slot] = tensors[i].acc;
        a.grad[slot] = static_cast<const typename G::Scalar*>(tensors[i].grad);
        a.numel[slot] = tensors[i].numel;
        a.wd_index[slot] = i;
      },
      [](FlushArgs<G>& a, int to, int from) {
        a.param[to] = a.param[from];
        a.moment[to] = a.moment[from];
        a.acc[to] = a.acc[from];
        a.grad[to] = a.grad[from];
        a.numel[to] = a.numel[from];
        a.wd_index[to] = a.wd_index[from];
      },
      [&](const FlushArgs<G>& a, int blocks) {
        MSACCUM_LAUNCH(flush_kernel<G>, dim3(blocks), dim3(kBlockThreads), stream, a);
        return check_launch();
      });
}

template <typename G>
int adamw_group(const AdamWTensor* tensors, int count, GradType type, const float* hyper, const float* weight_decay,
                cudaStream_t stream, int64_t chunk) {
  AdamWArgsPack<G> args{};
  args.hyper = hyper;
  args.weight_decay = weight_decay;
  args.chunk = chunk;
  // Without a gradient the gradient type is irrelevant: such tensors go with the float32 group.
  auto effective = [&](int i) { return tensors[i].grad ? tensors[i].grad_type : GradType::kFloat32; };
  return pack_and_launch<kMaxAdamWTensors>(
      tensors, args, count, chunk, [&](int i) { return effective(i) == type; },
      [&](AdamWArgsPack<G>& a, int slot, int i) {
        a.param[slot] = tensors[i].param;
        a.exp_avg[slot] = tensors[i].exp_avg;
        a.exp_avg_sq[slot] = tensors[i].exp_avg_sq;
        a.acc[slot] = tensors[i].acc;
        a.grad[slot] = static_cast<const typename G::Scalar*>(tensors[i].grad);
        a.numel[slot] = tensors[i].numel;
        a.wd_index[slot] = i;
      },
      [](AdamWArgsPack<G>& a, int to, int from) {
        a.param[to] = a.param[from];
        a.exp_avg[to] = a.exp_avg[from];
        a.exp_avg_sq[to] = a.exp_avg_sq[from];
        a.acc[to] = a.acc[from];
        a.grad[to] = a.grad[from];
        a.numel[to] = a.numel[from];
        a.wd_index[to] = a.wd_index[from];
      },
      [&](const AdamWArgsPack<G>& a, int blocks) {
        MSACCUM_LAUNCH(adamw_kernel<G>, dim3(blocks), dim3(kBlockThreads), stream, a);
        return check_launch();
      });
}

// Launches pass 1 for the tensors of gradient type `type`; `blocks_done` counts the blocks of
// all earlier launches, whose partial slots come first in `partials`.
template <typename G>
int squares_group(const SquaresTensor* tensors, int count, GradType type, double* partials, int64_t* blocks_done,
                  cudaStream_t stream, int64_t chunk) {
  SquaresArgs<G> args{};
  args.chunk = chunk;
  return pack_and_launch<kMaxSquaresTensors>(
      tensors, args, count, chunk, [&](int i) { return tensors[i].type == type; },
      [&](SquaresArgs<G>& a, int slot, int i) {
        a.x[slot] = static_cast<const typename G::Scalar*>(tensors[i].data);
        a.numel[slot] = tensors[i].numel;
      },
      [](SquaresArgs<G>& a, int to, int from) {
        a.x[to] = a.x[from];
        a.numel[to] = a.numel[from];
      },
      [&](const SquaresArgs<G>& a, int blocks) {
        SquaresArgs<G> launch = a;
        launch.partials = partials + *blocks_done * kBlockThreads;
        *blocks_done += blocks;
        MSACCUM_LAUNCH(squares_kernel<G>, dim3(blocks), dim3(kBlockThreads), stream, launch);
        return check_launch();
      });
}

// False if a size is negative or a tensor has more chunks than a block-table entry can name.
template <typename T>
bool valid_numel(const T& t, int64_t chunk) {
  return t.numel >= 0 && t.numel / chunk < INT32_MAX;
}

constexpr int kInvalidValue = static_cast<int>(cudaErrorInvalidValue);

}  // namespace

namespace internal {

int accumulate_chunked(const AccumulateTensor* tensors, int count, const float* scale, void* stream,
                       long long chunk_elems, const float* overwrite) {
  if (count < 0 || chunk_elems <= 0 || (count > 0 && (tensors == nullptr || scale == nullptr))) return kInvalidValue;
  for (int i = 0; i < count; ++i) {
    const AccumulateTensor& t = tensors[i];
    if (!valid_numel(t, chunk_elems) || grad_type_index(t.grad_type) > 2 || (t.numel > 0 && (!t.acc || !t.grad)))
      return kInvalidValue;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int rc = accumulate_group<GradF32>(tensors, count, GradType::kFloat32, scale, overwrite, s, chunk_elems);
  if (rc == 0) rc = accumulate_group<GradF16>(tensors, count, GradType::kFloat16, scale, overwrite, s, chunk_elems);
  if (rc == 0) rc = accumulate_group<GradBF16>(tensors, count, GradType::kBFloat16, scale, overwrite, s, chunk_elems);
  return rc;
}

int momentum_flush_chunked(const FlushTensor* tensors, int count, const float* hyper, const float* weight_decay,
                           void* stream, long long chunk_elems) {
  if (count < 0 || chunk_elems <= 0 ||
      (count > 0 && (tensors == nullptr || hyper == nullptr || weight_decay == nullptr)))
    return kInvalidValue;
  for (int i = 0; i < count; ++i) {
    const FlushTensor& t = tensors[i];
    if (!valid_numel(t, chunk_elems) || grad_type_index(t.grad_type) > 2 || (t.numel > 0 && (!t.param || !t.moment)))
      return kInvalidValue;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int rc = flush_group<GradF32>(tensors, count, GradType::kFloat32, hyper, weight_decay, s, chunk_elems);
  if (rc == 0) rc = flush_group<GradF16>(tensors, count, GradType::kFloat16, hyper, weight_decay, s, chunk_elems);
  if (rc == 0) rc = flush_group<GradBF16>(tensors, count, GradType::kBFloat16, hyper, weight_decay, s, chunk_elems);
  return rc;
}

int adamw_flush_chunked(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay,
                        void* stream, long long chunk_elems) {
  if (count < 0 || chunk_elems <= 0 ||
      (count > 0 && (tensors == nullptr || hyper == nullptr || weight_decay == nullptr)))
    return kInvalidValue;
  for (int i = 0; i < count; ++i) {
    const AdamWTensor& t = tensors[i];
    if (!valid_numel(t, chunk_elems) || grad_type_index(t.grad_type) > 2 ||
        (t.numel > 0 && (!t.param || !t.exp_avg || !t.exp_avg_sq)))
      return kInvalidValue;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int rc = adamw_group<GradF32>(tensors, count, GradType::kFloat32, hyper, weight_decay, s, chunk_elems);
  if (rc == 0) rc = adamw_group<GradF16>(tensors, count, GradType::kFloat16, hyper, weight_decay, s, chunk_elems);
  if (rc == 0) rc = adamw_group<GradBF16>(tensors, count, GradType::kBFloat16, hyper, weight_decay, s, chunk_elems);
  return rc;
}

long long sum_of_squares_workspace_chunked(const int64_t* numel, int count, long long chunk_elems) {
  if (count < 0 || chunk_elems <= 0 || (count > 0 && numel == nullptr)) return -1;
  long long blocks = 0;
  for (int i = 0; i < count; ++i) {
    if (numel[i] < 0) return -1;
    blocks += (numel[i] + chunk_elems - 1) / chunk_elems;
  }
  return (1 + blocks) * kBlockThreads;  // the stage of pass 2, then blockDim.x slots per block
}

int sum_of_squares_chunked(const SquaresTensor* tensors, int count, float* out, double* workspace,
                           long long workspace_size, void* stream, long long chunk_elems) {
  if (count < 0 || chunk_elems <= 0 || out == nullptr || workspace == nullptr || (count > 0 && tensors == nullptr))
    return kInvalidValue;
  std::vector<int64_t> numel(count);
  for (int i = 0; i < count; ++i) {
    const SquaresTensor& t = tensors[i];
    if (!valid_numel(t, chunk_elems) || grad_type_index(t.type) > 2 || (t.numel > 0 && !t.data)) return kInvalidValue;
    numel[i] = t.numel;
  }
  const long long needed = sum_of_squares_workspace_chunked(numel.data(), count, chunk_elems);
  if (needed < 0 || workspace_size < needed) return kInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  double* stage = workspace;
  double* partials = workspace + kBlockThreads;
  int64_t blocks = 0;
  int rc = squares_group<GradF32>(tensors, count, GradType::kFloat32, partials, &blocks, s, chunk_elems);
  if (rc == 0) rc = squares_group<GradF16>(tensors, count, GradType::kFloat16, partials, &blocks, s, chunk_elems);
  if (rc == 0) rc = squares_group<GradBF16>(tensors, count, GradType::kBFloat16, partials, &blocks, s, chunk_elems);
  if (rc != 0) return rc;
  MSACCUM_LAUNCH(reduce_partials_kernel, dim3(1), dim3(kBlockThreads), s, partials, blocks * kBlockThreads, stage);
  if ((rc = check_launch()) != 0) return rc;
  MSACCUM_LAUNCH(finish_squares_kernel, dim3(1), dim3(1), s, stage, kBlockThreads, out);
  return check_launch();
}

}  // namespace internal

int sum_of_squares(const SquaresTensor* tensors, int count, float* out, double* workspace, long long workspace_size,
                   void* stream) {
  return internal::sum_of_squares_chunked(tensors, count, out, workspace, workspace_size, stream,
                                          internal::kChunkElems);
}

long long sum_of_squares_workspace(const int64_t* numel, int count) {
  return internal::sum_of_squares_workspace_chunked(numel, count, internal::kChunkElems);
}

int accumulate(const AccumulateTensor* tensors, int count, const float* scale, void* stream, const float* overwrite) {
  return internal::accumulate_chunked(tensors, count, scale, stream, internal::kChunkElems, overwrite);
}

int adamw_flush(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay, void* stream) {
  return internal::adamw_flush_chunked(tensors, count, hyper, weight_decay, stream, internal::kChunkElems);
}

int momentum_flush(const FlushTensor* tensors, int count, const float* hyper, const float* weight_decay,
                   void* stream) {
  return internal::momentum_flush_chunked(tensors, count, hyper, weight_decay, stream, internal::kChunkElems);
}

int zero_fill(float* out, long long count, void* stream) {
  if (count < 0 || (count > 0 && out == nullptr)) return kInvalidValue;
  if (count == 0) return 0;
  // IEEE +0.0f is all zero bits.
  return static_cast<int>(cudaMemsetAsync(out, 0, static_cast<size_t>(count) * sizeof(float),
                                          static_cast<cudaStream_t>(stream)));
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

const char* runtime_version() {
  // The runtime linked into this library (static cudart): known without a driver or a GPU.
  static const char* const version = [] {
    static char text[32];
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess || v <= 0) return "unknown";
    std::snprintf(text, sizeof(text), "%d.%d", v / 1000, (v % 1000) / 10);
    return static_cast<const char*>(text);
  }();
  return version;
}

}  // namespace cuda
}  // namespace msaccum
