// CUDA kernels of mindspore_accum: accumulate, momentum_update, adamw_update and sum_of_squares
// over lists of tensors. Each op is one small functor for multi_tensor_apply.cuh, which packs the
// tensors into launches (apex / PyTorch multi_tensor_apply style): every block processes one chunk
// of kChunkElems elements of one tensor, its threads striding over the chunk.
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
#include "multi_tensor_apply.cuh"

// Counts elements per path in the host-shim build (so tests can see which path ran); no-op on GPU.
#ifndef MSACCUM_COUNT_PATH
#define MSACCUM_COUNT_PATH(path, n) ((void)0)
#endif

namespace msaccum {
namespace cuda {
namespace {

// ---- accumulate: acc += scale * grad, or acc = scale * grad (overwrite: acc only written) ----

template <bool kOverwrite>
__device__ __forceinline__ float accumulate_element(float acc, float grad, float scale) {
  return kOverwrite ? assign_value(grad, scale) : accumulate_value(acc, grad, scale);
}

template <typename G, bool kOverwrite>
__device__ __forceinline__ void accumulate_chunk(float* __restrict__ acc, const typename G::Scalar* __restrict__ grad,
                                                 int64_t len, float scale) {
  int64_t i = threadIdx.x;
  if (aligned_for<float4>(acc) && aligned_for<typename G::Vec>(grad)) {
    const int64_t nvec = len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float4 a = kOverwrite ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : reinterpret_cast<const float4*>(acc)[v];
      const typename G::Vec g = reinterpret_cast<const typename G::Vec*>(grad)[v];
      a.x = accumulate_element<kOverwrite>(a.x, G::widen(g.x), scale);
      a.y = accumulate_element<kOverwrite>(a.y, G::widen(g.y), scale);
      a.z = accumulate_element<kOverwrite>(a.z, G::widen(g.z), scale);
      a.w = accumulate_element<kOverwrite>(a.w, G::widen(g.w), scale);
      reinterpret_cast<float4*>(acc)[v] = a;
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;  // the scalar tail: the last len % 4 elements
  }
  for (; i < len; i += blockDim.x) {
    acc[i] = accumulate_element<kOverwrite>(kOverwrite ? 0.0f : acc[i], G::widen(grad[i]), scale);
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

struct AccumulateParams {
  const float* scale;      // device memory, one float
  const float* overwrite;  // device memory, one float (non-zero: acc = scale * grad), or null (add)
  bool valid() const { return scale != nullptr; }
};

template <typename G>
struct AccumulateFunctor {
  using Grad = G;
  using Tensor = AccumulateTensor;
  using Params = AccumulateParams;
  static constexpr int kDepth = 2;  // acc, grad
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.acc;
    a[1] = const_cast<void*>(t.grad);
  }
  static bool has_required(const Tensor& t) { return t.acc && t.grad; }
  static GradType grad_type(const Tensor& t) { return t.grad_type; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    float* acc = chunk_pointer<float>(meta, 0, c);
    const typename G::Scalar* grad = chunk_pointer<const typename G::Scalar>(meta, 1, c);
    const float scale = *p.scale;
    // The flag is per call, hence uniform over the grid: no divergence.
    if (p.overwrite != nullptr && *p.overwrite != 0.0f) accumulate_chunk<G, true>(acc, grad, c.len, scale);
    else accumulate_chunk<G, false>(acc, grad, c.len, scale);
  }
};

// ---- the window-end updates' gradient: summed = acc + grad (either may be absent) ----

// Whether the gradient sources of a chunk allow the vector path.
template <typename G, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ bool sources_aligned(const float* acc, const typename G::Scalar* grad) {
  return (!kHasAcc || aligned_for<float4>(acc)) && (!kHasGrad || aligned_for<typename G::Vec>(grad));
}

// The summed gradient of elements 4v .. 4v + 3 (vector path).
template <typename G, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ float4 summed_grad4(const float* __restrict__ acc,
                                               const typename G::Scalar* __restrict__ grad, int64_t v) {
  float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float4 g = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (kHasAcc) a = reinterpret_cast<const float4*>(acc)[v];
  if (kHasGrad) {
    const typename G::Vec gv = reinterpret_cast<const typename G::Vec*>(grad)[v];
    g = make_float4(G::widen(gv.x), G::widen(gv.y), G::widen(gv.z), G::widen(gv.w));
  }
  return make_float4(summed_grad<kHasAcc, kHasGrad>(a.x, g.x), summed_grad<kHasAcc, kHasGrad>(a.y, g.y),
                     summed_grad<kHasAcc, kHasGrad>(a.z, g.z), summed_grad<kHasAcc, kHasGrad>(a.w, g.w));
}

// The summed gradient of element i (scalar path).
template <typename G, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ float summed_grad1(const float* __restrict__ acc,
                                              const typename G::Scalar* __restrict__ grad, int64_t i) {
  return summed_grad<kHasAcc, kHasGrad>(kHasAcc ? acc[i] : 0.0f, kHasGrad ? G::widen(grad[i]) : 0.0f);
}

// ---- momentum_update: summed = acc + grad (either may be absent); update; a given acc = 0 ----

template <typename G, bool kNesterov, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ void momentum_chunk(float* __restrict__ param, float* __restrict__ moment,
                                               float* __restrict__ acc, const typename G::Scalar* __restrict__ grad,
                                               int64_t len, const MomentumArgs& h) {
  int64_t i = threadIdx.x;
  if (aligned_for<float4>(param) && aligned_for<float4>(moment) && sources_aligned<G, kHasAcc, kHasGrad>(acc, grad)) {
    const int64_t nvec = len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float4 p = reinterpret_cast<const float4*>(param)[v];
      float4 m = reinterpret_cast<const float4*>(moment)[v];
      const float4 g = summed_grad4<G, kHasAcc, kHasGrad>(acc, grad, v);
      momentum_value<kNesterov>(p.x, m.x, g.x, h);
      momentum_value<kNesterov>(p.y, m.y, g.y, h);
      momentum_value<kNesterov>(p.z, m.z, g.z, h);
      momentum_value<kNesterov>(p.w, m.w, g.w, h);
      reinterpret_cast<float4*>(param)[v] = p;
      reinterpret_cast<float4*>(moment)[v] = m;
      if (kHasAcc) reinterpret_cast<float4*>(acc)[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;
  }
  for (; i < len; i += blockDim.x) {
    momentum_value<kNesterov>(param[i], moment[i], summed_grad1<G, kHasAcc, kHasGrad>(acc, grad, i), h);
    if (kHasAcc) acc[i] = 0.0f;
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

struct UpdateParams {
  const float* hyper;         // device memory: momentum {lr, momentum, grad_scale, nesterov (0/1)} or
                              // AdamW {lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2}
  const float* weight_decay;  // device memory: one float per tensor of the caller's list
  bool valid() const { return hyper != nullptr && weight_decay != nullptr; }
};

template <typename G>
struct MomentumUpdateFunctor {
  using Grad = G;
  using Tensor = MomentumTensor;
  using Params = UpdateParams;
  static constexpr int kDepth = 4;  // param, moment, acc, grad
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.param;
    a[1] = t.moment;
    a[2] = t.acc;
    a[3] = const_cast<void*>(t.grad);
  }
  static bool has_required(const Tensor& t) { return t.param && t.moment; }
  static GradType grad_type(const Tensor& t) { return t.grad_type; }

  template <bool kNesterov>
  __device__ __forceinline__ static void run(float* param, float* moment, float* acc, const typename G::Scalar* grad,
                                             int64_t len, const MomentumArgs& h) {
    // acc/grad presence is per tensor, hence uniform over the block: no divergence.
    if (acc && grad) momentum_chunk<G, kNesterov, true, true>(param, moment, acc, grad, len, h);
    else if (acc) momentum_chunk<G, kNesterov, true, false>(param, moment, acc, grad, len, h);
    else if (grad) momentum_chunk<G, kNesterov, false, true>(param, moment, acc, grad, len, h);
    else momentum_chunk<G, kNesterov, false, false>(param, moment, acc, grad, len, h);
  }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const MomentumArgs h{p.hyper[0], p.hyper[1], p.hyper[2], p.weight_decay[meta.list_index[c.tensor]]};
    float* param = chunk_pointer<float>(meta, 0, c);
    float* moment = chunk_pointer<float>(meta, 1, c);
    float* acc = chunk_pointer<float>(meta, 2, c);
    const typename G::Scalar* grad = chunk_pointer<const typename G::Scalar>(meta, 3, c);
    if (p.hyper[3] != 0.0f) run<true>(param, moment, acc, grad, c.len, h);
    else run<false>(param, moment, acc, grad, c.len, h);
  }
};

// ---- adamw_update: summed = acc + grad (either may be absent); update; a given acc = 0 ----

template <typename G, bool kHasAcc, bool kHasGrad>
__device__ __forceinline__ void adamw_chunk(float* __restrict__ param, float* __restrict__ exp_avg,
                                            float* __restrict__ exp_avg_sq, float* __restrict__ acc,
                                            const typename G::Scalar* __restrict__ grad, int64_t len,
                                            const AdamWArgs& h) {
  int64_t i = threadIdx.x;
  if (aligned_for<float4>(param) && aligned_for<float4>(exp_avg) && aligned_for<float4>(exp_avg_sq) &&
      sources_aligned<G, kHasAcc, kHasGrad>(acc, grad)) {
    const int64_t nvec = len / 4;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float4 p = reinterpret_cast<const float4*>(param)[v];
      float4 m = reinterpret_cast<const float4*>(exp_avg)[v];
      float4 s = reinterpret_cast<const float4*>(exp_avg_sq)[v];
      const float4 g = summed_grad4<G, kHasAcc, kHasGrad>(acc, grad, v);
      adamw_value(p.x, m.x, s.x, g.x, h);
      adamw_value(p.y, m.y, s.y, g.y, h);
      adamw_value(p.z, m.z, s.z, g.z, h);
      adamw_value(p.w, m.w, s.w, g.w, h);
      reinterpret_cast<float4*>(param)[v] = p;
      reinterpret_cast<float4*>(exp_avg)[v] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[v] = s;
      if (kHasAcc) reinterpret_cast<float4*>(acc)[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      MSACCUM_COUNT_PATH(vector, 4);
    }
    i += nvec * 4;
  }
  for (; i < len; i += blockDim.x) {
    adamw_value(param[i], exp_avg[i], exp_avg_sq[i], summed_grad1<G, kHasAcc, kHasGrad>(acc, grad, i), h);
    if (kHasAcc) acc[i] = 0.0f;
    MSACCUM_COUNT_PATH(scalar, 1);
  }
}

template <typename G>
struct AdamWUpdateFunctor {
  using Grad = G;
  using Tensor = AdamWTensor;
  using Params = UpdateParams;
  static constexpr int kDepth = 5;  // param, exp_avg, exp_avg_sq, acc, grad
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.param;
    a[1] = t.exp_avg;
    a[2] = t.exp_avg_sq;
    a[3] = t.acc;
    a[4] = const_cast<void*>(t.grad);
  }
  static bool has_required(const Tensor& t) { return t.param && t.exp_avg && t.exp_avg_sq; }
  static GradType grad_type(const Tensor& t) { return t.grad_type; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const float* hp = p.hyper;
    const AdamWArgs h{hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], p.weight_decay[meta.list_index[c.tensor]]};
    float* param = chunk_pointer<float>(meta, 0, c);
    float* exp_avg = chunk_pointer<float>(meta, 1, c);
    float* exp_avg_sq = chunk_pointer<float>(meta, 2, c);
    float* acc = chunk_pointer<float>(meta, 3, c);
    const typename G::Scalar* grad = chunk_pointer<const typename G::Scalar>(meta, 4, c);
    // acc/grad presence is per tensor, hence uniform over the block: no divergence.
    if (acc && grad) adamw_chunk<G, true, true>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
    else if (acc) adamw_chunk<G, true, false>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
    else if (grad) adamw_chunk<G, false, true>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
    else adamw_chunk<G, false, false>(param, exp_avg, exp_avg_sq, acc, grad, c.len, h);
  }
};

// ---- LAMB and LARS: pass 1 (per-thread sums of squares), per-tensor reduction, pass 2 ----
//
// Pass 1 stores, for every thread of every block, two float32 run sums in its own slots of
// `partials` (as SquaresFunctor). A tensor's blocks are consecutive in the call's block numbering
// (block_ranges below replays the packer's order), so the reduction adds each tensor's slots in a
// fixed order: deterministic, without atomics or shared memory (the host shim runs it too).
// The loops are scalar and strided (coalesced); the per-tensor ratio is computed per block.

// The summed gradient of element i, presence known at run time (uniform over the block); the
// same values as summed_grad<kHasAcc, kHasGrad>.
template <typename G>
__device__ __forceinline__ float summed_grad_rt(const float* acc, const typename G::Scalar* grad, int64_t i) {
  if (acc && grad) return summed_grad<true, true>(acc[i], G::widen(grad[i]));
  if (acc) return summed_grad<true, false>(acc[i], 0.0f);
  if (grad) return summed_grad<false, true>(0.0f, G::widen(grad[i]));
  return summed_grad<false, false>(0.0f, 0.0f);
}

struct NormParams {
  const float* hyper;         // device memory: the op's hyper-parameters (lamb_update / lars_update)
  const float* weight_decay;  // device memory: one float per tensor
  double* partials;           // two doubles per thread of the call, in launch order
  bool valid() const { return hyper != nullptr && weight_decay != nullptr && partials != nullptr; }
};

__device__ __forceinline__ void store_sums(const NormParams& p, int64_t first_block, float a, float b) {
  const int64_t slot = (first_block + blockIdx.x) * blockDim.x + threadIdx.x;
  p.partials[2 * slot] = a;
  p.partials[2 * slot + 1] = b;
}

__device__ __forceinline__ float norm_of(double sum_of_squares) { return static_cast<float>(sqrt(sum_of_squares)); }

__device__ __forceinline__ LambArgs lamb_args(const float* hp, float weight_decay) {
  return LambArgs{hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], weight_decay};
}

// LAMB pass 1: moments updated (a given acc zeroed); sums of param^2 and u^2.
template <typename G>
struct LambMomentsFunctor {
  using Grad = G;
  using Tensor = LambTensor;
  using Params = NormParams;
  static constexpr int kDepth = 5;  // param, exp_avg, exp_avg_sq, acc, grad
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.param;
    a[1] = t.exp_avg;
    a[2] = t.exp_avg_sq;
    a[3] = t.acc;
    a[4] = const_cast<void*>(t.grad);
  }
  static bool has_required(const Tensor& t) { return t.param && t.exp_avg && t.exp_avg_sq; }
  static GradType grad_type(const Tensor& t) { return t.grad_type; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const LambArgs h = lamb_args(p.hyper, p.weight_decay[meta.list_index[c.tensor]]);
    const float* param = chunk_pointer<float>(meta, 0, c);
    float* exp_avg = chunk_pointer<float>(meta, 1, c);
    float* exp_avg_sq = chunk_pointer<float>(meta, 2, c);
    float* acc = chunk_pointer<float>(meta, 3, c);
    const typename G::Scalar* grad = chunk_pointer<const typename G::Scalar>(meta, 4, c);
    float w_sq = 0.0f, u_sq = 0.0f;
    for (int64_t i = threadIdx.x; i < c.len; i += blockDim.x) {
      const float u = lamb_moments(param[i], exp_avg[i], exp_avg_sq[i], summed_grad_rt<G>(acc, grad, i), h);
      if (acc) acc[i] = 0.0f;
      w_sq += square_value(param[i]);
      u_sq += square_value(u);
      MSACCUM_COUNT_PATH(scalar, 1);
    }
    store_sums(p, meta.first_block, w_sq, u_sq);
  }
};

// LARS pass 1: sums of param^2 and summed^2.
template <typename G>
struct LarsNormsFunctor {
  using Grad = G;
  using Tensor = LarsTensor;
  using Params = NormParams;
  static constexpr int kDepth = 3;  // param, acc, grad
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.param;
    a[1] = t.acc;
    a[2] = const_cast<void*>(t.grad);
  }
  static bool has_required(const Tensor& t) { return t.param && t.moment; }
  static GradType grad_type(const Tensor& t) { return t.grad_type; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const float* param = chunk_pointer<float>(meta, 0, c);
    const float* acc = chunk_pointer<float>(meta, 1, c);
    const typename G::Scalar* grad = chunk_pointer<const typename G::Scalar>(meta, 2, c);
    float w_sq = 0.0f, g_sq = 0.0f;
    for (int64_t i = threadIdx.x; i < c.len; i += blockDim.x) {
      w_sq += square_value(param[i]);
      g_sq += square_value(summed_grad_rt<G>(acc, grad, i));
      MSACCUM_COUNT_PATH(scalar, 1);
    }
    store_sums(p, meta.first_block, w_sq, g_sq);
  }
};

struct ApplyParams {
  const float* hyper;         // device memory, as NormParams
  const float* weight_decay;  // device memory: one float per tensor
  const float* lars;          // device memory: one float per tensor (LARS), null for LAMB
  const double* sums;         // two sums of squares per tensor (the reduction's output)
  bool valid() const { return hyper != nullptr && weight_decay != nullptr && sums != nullptr; }
};

// LAMB pass 2: param -= lr * r * u, u recomputed from param and the new moments.
template <typename G>
struct LambApplyFunctor {
  using Grad = G;
  using Tensor = LambTensor;
  using Params = ApplyParams;
  static constexpr int kDepth = 3;  // param, exp_avg, exp_avg_sq (no gradient: the float32 group)
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.param;
    a[1] = t.exp_avg;
    a[2] = t.exp_avg_sq;
  }
  static bool has_required(const Tensor& t) { return t.param && t.exp_avg && t.exp_avg_sq; }
  static GradType grad_type(const Tensor&) { return GradType::kFloat32; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const int li = meta.list_index[c.tensor];
    const LambArgs h = lamb_args(p.hyper, p.weight_decay[li]);
    const float lr_ratio = p.hyper[0] * lamb_ratio(norm_of(p.sums[2 * li]), norm_of(p.sums[2 * li + 1]));
    float* param = chunk_pointer<float>(meta, 0, c);
    const float* exp_avg = chunk_pointer<float>(meta, 1, c);
    const float* exp_avg_sq = chunk_pointer<float>(meta, 2, c);
    for (int64_t i = threadIdx.x; i < c.len; i += blockDim.x) {
      lamb_apply(param[i], exp_avg[i], exp_avg_sq[i], lr_ratio, h);
      MSACCUM_COUNT_PATH(scalar, 1);
    }
  }
};

// LARS pass 2: the momentum step with the tensor's trust ratio (1 and no decay without LARS).
template <typename G>
struct LarsApplyFunctor {
  using Grad = G;
  using Tensor = LarsTensor;
  using Params = ApplyParams;
  static constexpr int kDepth = 4;  // param, moment, acc, grad
  static void addresses(const Tensor& t, void** a) {
    a[0] = t.param;
    a[1] = t.moment;
    a[2] = t.acc;
    a[3] = const_cast<void*>(t.grad);
  }
  static bool has_required(const Tensor& t) { return t.param && t.moment; }
  static GradType grad_type(const Tensor& t) { return t.grad_type; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const int li = meta.list_index[c.tensor];
    const float* hp = p.hyper;  // {lr, momentum, grad_scale, coefficient, epsilon}
    LarsArgs h{hp[0], hp[1], hp[2], 0.0f, 1.0f};
    if (p.lars != nullptr && p.lars[li] != 0.0f) {
      h.weight_decay = p.weight_decay[li];
      h.trust = lars_trust(norm_of(p.sums[2 * li]), norm_of(p.sums[2 * li + 1]) * fabsf(hp[2]), hp[3],
                           h.weight_decay, hp[4]);
    }
    float* param = chunk_pointer<float>(meta, 0, c);
    float* moment = chunk_pointer<float>(meta, 1, c);
    float* acc = chunk_pointer<float>(meta, 2, c);
    const typename G::Scalar* grad = chunk_pointer<const typename G::Scalar>(meta, 3, c);
    for (int64_t i = threadIdx.x; i < c.len; i += blockDim.x) {
      lars_value(param[i], moment[i], summed_grad_rt<G>(acc, grad, i), h);
      if (acc) acc[i] = 0.0f;
      MSACCUM_COUNT_PATH(scalar, 1);
    }
  }
};

// The per-tensor reduction, stage 1: block b of a launch is tensor base + b; its thread t adds the
// tensor's pass-1 slots t, t + blockDim.x, ... in order, in double.
struct NormRanges {
  int64_t first_slot[internal::kNormTensorsPerLaunch];  // the tensor's first thread slot of pass 1
  int64_t slots[internal::kNormTensorsPerLaunch];       // its thread slots (blocks * blockDim.x)
  int base;                                             // the tensor index of block 0
};

__global__ void __launch_bounds__(kBlockThreads) norm_stage_kernel(const double* partials, NormRanges r,
                                                                   double* stage) {
  const int b = blockIdx.x;
  double s0 = 0.0, s1 = 0.0;
  for (int64_t j = threadIdx.x; j < r.slots[b]; j += blockDim.x) {
    s0 += partials[2 * (r.first_slot[b] + j)];
    s1 += partials[2 * (r.first_slot[b] + j) + 1];
  }
  const int64_t slot = static_cast<int64_t>(r.base + b) * blockDim.x + threadIdx.x;
  stage[2 * slot] = s0;
  stage[2 * slot + 1] = s1;
}

// Stage 2: thread i adds tensor i's `threads` stage sums in order.
__global__ void __launch_bounds__(kBlockThreads) norm_finish_kernel(const double* stage, int count, int threads,
                                                                    double* sums) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= count) return;
  double s0 = 0.0, s1 = 0.0;
  for (int t = 0; t < threads; ++t) {
    s0 += stage[2 * (static_cast<int64_t>(i) * threads + t)];
    s1 += stage[2 * (static_cast<int64_t>(i) * threads + t) + 1];
  }
  sums[2 * i] = s0;
  sums[2 * i + 1] = s1;
}

// The first block and the block count of every tensor in a multi_tensor_apply<Functor> call: the
// packer's order (float32 gradients, then float16, then bfloat16; list order; chunks in order).
template <template <typename> class Functor>
int64_t block_ranges(const typename Functor<GradF32>::Tensor* tensors, int count, int64_t chunk,
                     std::vector<int64_t>* first, std::vector<int64_t>* blocks) {
  using Host = Functor<GradF32>;
  first->assign(count, 0);
  blocks->assign(count, 0);
  int64_t next = 0;
  for (const GradType group : {GradType::kFloat32, GradType::kFloat16, GradType::kBFloat16}) {
    for (int i = 0; i < count; ++i) {
      void* addresses[Host::kDepth];
      Host::addresses(tensors[i], addresses);
      const GradType type = addresses[Host::kDepth - 1] ? Host::grad_type(tensors[i]) : GradType::kFloat32;
      if (type != group || tensors[i].numel <= 0) continue;
      (*first)[i] = next;
      (*blocks)[i] = (tensors[i].numel + chunk - 1) / chunk;
      next += (*blocks)[i];
    }
  }
  return next;
}

// Pass 1 (Norms), the reduction into two sums per tensor, pass 2 (Apply); scratch memory is
// allocated and freed on the stream.
template <template <typename> class Norms, template <typename> class Apply>
int two_pass_update(const typename Norms<GradF32>::Tensor* tensors, int count, long long chunk, NormParams norms,
                    ApplyParams apply, void* stream) {
  if (count < 0 || chunk <= 0 || (count > 0 && tensors == nullptr)) return kInvalidValue;
  if (norms.hyper == nullptr || norms.weight_decay == nullptr) return count == 0 ? 0 : kInvalidValue;
  if (count == 0) return 0;
  std::vector<int64_t> first, blocks;
  const int64_t total_blocks = block_ranges<Norms>(tensors, count, chunk, &first, &blocks);
  const int64_t partial_doubles = 2 * total_blocks * kBlockThreads;
  const int64_t stage_doubles = 2 * static_cast<int64_t>(count) * kBlockThreads;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  void* scratch = nullptr;
  const size_t bytes = sizeof(double) * static_cast<size_t>(partial_doubles + stage_doubles + 2 * count);
  int rc = static_cast<int>(cudaMallocAsync(&scratch, bytes, s));
  if (rc != 0) return rc;
  double* partials = static_cast<double*>(scratch);
  double* stage = partials + partial_doubles;
  double* sums = stage + stage_doubles;
  norms.partials = partials;
  apply.sums = sums;
  int64_t launched = 0;
  rc = multi_tensor_apply<Norms>(tensors, count, chunk, norms, stream, &launched);
  if (rc == 0 && launched != total_blocks) rc = kInvalidValue;  // block_ranges must replay the packer
  for (int base = 0; rc == 0 && base < count; base += internal::kNormTensorsPerLaunch) {
    NormRanges r{};
    r.base = base;
    const int n = count - base < internal::kNormTensorsPerLaunch ? count - base : internal::kNormTensorsPerLaunch;
    for (int b = 0; b < n; ++b) {
      r.first_slot[b] = first[base + b] * kBlockThreads;
      r.slots[b] = blocks[base + b] * kBlockThreads;
    }
    MSACCUM_LAUNCH(norm_stage_kernel, dim3(n), dim3(kBlockThreads), s, partials, r, stage);
    rc = check_launch();
  }
  if (rc == 0) {
    MSACCUM_LAUNCH(norm_finish_kernel, dim3((count + kBlockThreads - 1) / kBlockThreads), dim3(kBlockThreads), s,
                   stage, count, kBlockThreads, sums);
    rc = check_launch();
  }
  if (rc == 0) rc = multi_tensor_apply<Apply>(tensors, count, chunk, apply, stream);
  const int freed = static_cast<int>(cudaFreeAsync(scratch, s));
  return rc != 0 ? rc : freed;
}

// ---- sum of squares ----

struct SquaresParams {
  double* partials;  // blockDim.x slots per block of the call, in launch order
  bool valid() const { return partials != nullptr; }
};

// Pass 1: every thread adds the squares of its strided elements of the block's chunk in float32
// (chunk / blockDim.x terms: 256 with the default geometry) and stores that run's sum in its own
// slot of `partials`: no shared memory, no atomics, every slot written exactly once.
template <typename G>
struct SquaresFunctor {
  using Grad = G;
  using Tensor = SquaresTensor;
  using Params = SquaresParams;
  static constexpr int kDepth = 1;  // x
  static void addresses(const Tensor& t, void** a) { a[0] = const_cast<void*>(t.data); }
  static bool has_required(const Tensor& t) { return t.data != nullptr; }
  static GradType grad_type(const Tensor& t) { return t.type; }

  __device__ __forceinline__ static void apply(const TensorListMetadata<kDepth>& meta, const BlockChunk& c,
                                               const Params& p) {
    const typename G::Scalar* __restrict__ x = chunk_pointer<const typename G::Scalar>(meta, 0, c);
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
    p.partials[(meta.first_block + blockIdx.x) * blockDim.x + threadIdx.x] = run;
  }
};

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

}  // namespace

namespace internal {

int accumulate_chunked(const AccumulateTensor* tensors, int count, const float* scale, void* stream,
                       long long chunk_elems, const float* overwrite) {
  return multi_tensor_apply<AccumulateFunctor>(tensors, count, chunk_elems, AccumulateParams{scale, overwrite}, stream);
}

int momentum_update_chunked(const MomentumTensor* tensors, int count, const float* hyper, const float* weight_decay,
                            void* stream, long long chunk_elems) {
  return multi_tensor_apply<MomentumUpdateFunctor>(tensors, count, chunk_elems, UpdateParams{hyper, weight_decay},
                                                   stream);
}

int adamw_update_chunked(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay,
                         void* stream, long long chunk_elems) {
  return multi_tensor_apply<AdamWUpdateFunctor>(tensors, count, chunk_elems, UpdateParams{hyper, weight_decay}, stream);
}

int lamb_update_chunked(const LambTensor* tensors, int count, const float* hyper, const float* weight_decay,
                        void* stream, long long chunk_elems) {
  return two_pass_update<LambMomentsFunctor, LambApplyFunctor>(
      tensors, count, chunk_elems, NormParams{hyper, weight_decay, nullptr},
      ApplyParams{hyper, weight_decay, nullptr, nullptr}, stream);
}

int lars_update_chunked(const LarsTensor* tensors, int count, const float* hyper, const float* weight_decay,
                        const float* lars, void* stream, long long chunk_elems) {
  if (count > 0 && lars == nullptr) return kInvalidValue;
  return two_pass_update<LarsNormsFunctor, LarsApplyFunctor>(
      tensors, count, chunk_elems, NormParams{hyper, weight_decay, nullptr},
      ApplyParams{hyper, weight_decay, lars, nullptr}, stream);
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
  for (int i = 0; i < count; ++i) numel[i] = tensors[i].numel;
  const long long needed = sum_of_squares_workspace_chunked(numel.data(), count, chunk_elems);
  if (needed < 0 || workspace_size < needed) return kInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  double* stage = workspace;
  double* partials = workspace + kBlockThreads;
  int64_t blocks = 0;
  int rc = multi_tensor_apply<SquaresFunctor>(tensors, count, chunk_elems, SquaresParams{partials}, stream, &blocks);
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

int momentum_update(const MomentumTensor* tensors, int count, const float* hyper, const float* weight_decay,
                    void* stream) {
  return internal::momentum_update_chunked(tensors, count, hyper, weight_decay, stream, internal::kChunkElems);
}

int adamw_update(const AdamWTensor* tensors, int count, const float* hyper, const float* weight_decay, void* stream) {
  return internal::adamw_update_chunked(tensors, count, hyper, weight_decay, stream, internal::kChunkElems);
}

int lamb_update(const LambTensor* tensors, int count, const float* hyper, const float* weight_decay, void* stream) {
  return internal::lamb_update_chunked(tensors, count, hyper, weight_decay, stream, internal::kChunkElems);
}

int lars_update(const LarsTensor* tensors, int count, const float* hyper, const float* weight_decay,
                const float* lars, void* stream) {
  return internal::lars_update_chunked(tensors, count, hyper, weight_decay, lars, stream, internal::kChunkElems);
}

int zero_fill(float* out, long long count, void* stream) {
  if (count < 0 || (count > 0 && out == nullptr)) return kInvalidValue;
  if (count == 0) return 0;
  // IEEE +0.0f is all zero bits.
  return static_cast<int>(cudaMemsetAsync(out, 0, static_cast<size_t>(count) * sizeof(float),
                                          static_cast<cudaStream_t>(stream)));
}

// ---- launchers with host-side arguments (cuda_kernels.h) ----

namespace {

// Makes `device` current for the scope and restores the previous device. The first runtime call
// of a process without a usable GPU fails here, before anything is queued.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    error_ = cudaGetDevice(&previous_);
    if (error_ == cudaSuccess && previous_ != device) {
      error_ = cudaSetDevice(device);
      switched_ = error_ == cudaSuccess;
    }
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaError_t error() const { return error_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  cudaError_t error_;
};

template <typename Tensor>
bool any_elements(const Tensor* tensors, int count) {
  for (int i = 0; i < count; ++i)
    if (tensors[i].numel > 0) return true;
  return false;
}

// Runs launch(device copy of `host`) on `stream`: the floats are uploaded into a stream-ordered
// allocation (pageable source: cudaMemcpyAsync has copied it when it returns) that is freed in
// stream order after the launch, so concurrent calls on other streams never share it.
template <typename Launch>
int with_device_floats(const std::vector<float>& host, cudaStream_t stream, Launch launch) {
  void* dev = nullptr;
  const size_t bytes = host.size() * sizeof(float);
  cudaError_t e = cudaMallocAsync(&dev, bytes, stream);
  if (e != cudaSuccess) return static_cast<int>(e);
  e = cudaMemcpyAsync(dev, host.data(), bytes, cudaMemcpyHostToDevice, stream);
  int rc = e == cudaSuccess ? launch(static_cast<float*>(dev)) : static_cast<int>(e);
  const cudaError_t freed = cudaFreeAsync(dev, stream);
  return rc != 0 ? rc : static_cast<int>(freed);
}

template <typename Tensor>
void append_weight_decays(std::vector<float>& host, const Tensor* tensors, int count) {
  for (int i = 0; i < count; ++i) host.push_back(tensors[i].weight_decay);
}

}  // namespace

int accumulate_host(const AccumulateTensor* tensors, int count, float scale, bool overwrite, int device,
                    void* stream) {
  if (count < 0 || (count > 0 && tensors == nullptr)) return kInvalidValue;
  if (!any_elements(tensors, count)) return 0;
  DeviceScope scope(device);
  if (scope.error() != cudaSuccess) return static_cast<int>(scope.error());
  const std::vector<float> host{scale, overwrite ? 1.0f : 0.0f};
  return with_device_floats(host, static_cast<cudaStream_t>(stream), [&](float* dev) {
    return accumulate(tensors, count, dev, stream, overwrite ? dev + 1 : nullptr);
  });
}

int momentum_update_host(const MomentumTensor* tensors, int count, const MomentumScalars& scalars, int device,
                         void* stream) {
  if (count < 0 || (count > 0 && tensors == nullptr)) return kInvalidValue;
  if (!any_elements(tensors, count)) return 0;
  DeviceScope scope(device);
  if (scope.error() != cudaSuccess) return static_cast<int>(scope.error());
  std::vector<float> host{scalars.lr, scalars.momentum, scalars.grad_scale, scalars.nesterov ? 1.0f : 0.0f};
  append_weight_decays(host, tensors, count);
  return with_device_floats(host, static_cast<cudaStream_t>(stream), [&](float* dev) {
    return momentum_update(tensors, count, dev, dev + 4, stream);
  });
}

int adamw_update_host(const AdamWTensor* tensors, int count, const AdamWScalars& scalars, int device, void* stream) {
  if (count < 0 || (count > 0 && tensors == nullptr)) return kInvalidValue;
  if (!any_elements(tensors, count)) return 0;
  DeviceScope scope(device);
  if (scope.error() != cudaSuccess) return static_cast<int>(scope.error());
  std::vector<float> host{scalars.lr,         scalars.beta1,           scalars.beta2,          scalars.eps,
                          scalars.grad_scale, scalars.bias_correction1, scalars.bias_correction2};
  append_weight_decays(host, tensors, count);
  return with_device_floats(host, static_cast<cudaStream_t>(stream), [&](float* dev) {
    return adamw_update(tensors, count, dev, dev + 7, stream);
  });
}

int sum_of_squares_host(const SquaresTensor* tensors, int count, double* result, int device, void* stream) {
  if (count < 0 || (count > 0 && tensors == nullptr) || result == nullptr) return kInvalidValue;
  *result = 0.0;
  if (!any_elements(tensors, count)) return 0;
  DeviceScope scope(device);
  if (scope.error() != cudaSuccess) return static_cast<int>(scope.error());
  std::vector<int64_t> numel(count);
  for (int i = 0; i < count; ++i) numel[i] = tensors[i].numel;
  const long long doubles = sum_of_squares_workspace(numel.data(), count);
  if (doubles < 0) return kInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  // One allocation: the workspace (doubles), then the float32 result.
  void* dev = nullptr;
  cudaError_t e = cudaMallocAsync(&dev, static_cast<size_t>(doubles) * sizeof(double) + sizeof(double), s);
  if (e != cudaSuccess) return static_cast<int>(e);
  double* workspace = static_cast<double*>(dev);
  float* out = reinterpret_cast<float*>(workspace + doubles);
  float value = 0.0f;
  int rc = sum_of_squares(tensors, count, out, workspace, doubles, stream);
  if (rc == 0) rc = static_cast<int>(cudaMemcpyAsync(&value, out, sizeof(float), cudaMemcpyDeviceToHost, s));
  const cudaError_t freed = cudaFreeAsync(dev, s);
  if (rc == 0) rc = static_cast<int>(freed);
  if (rc == 0) rc = static_cast<int>(cudaStreamSynchronize(s));
  if (rc == 0) *result = value;
  return rc;
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
