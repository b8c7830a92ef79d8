// The tensor descriptors and scalars every kernel takes: shared by the CPU kernels (cpu/) and
// the CUDA kernels (cuda/), which are peers below this header and accum_math.h, and filled by the
// two frontends (frontends/). Plain C++: no CUDA, pybind11 or MindSpore headers.
#pragma once

#include <cstdint>

namespace msaccum {

// The element type of a gradient (or of a sum_of_squares input). Every value widens exactly to
// float32 (accum_math.h); accumulators, parameters and optimizer states are always float32.
enum class GradType : uint8_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One tensor of accumulate: acc (float32) += scale * grad, or acc = scale * grad (overwrite).
struct AccumulateTensor {
  float* acc;
  const void* grad;
  GradType grad_type;
  int64_t numel;
};

// One tensor of momentum_update: param and moment float32, updated in place from acc + grad
// (either may be null); a given acc is set to 0 afterwards.
struct MomentumTensor {
  float* param;
  float* moment;
  float* acc;        // may be null
  const void* grad;  // may be null
  GradType grad_type;
  int64_t numel;
  float weight_decay;  // CPU only: the CUDA launchers read one float per tensor from device memory
};

// One tensor of adamw_update: param and both moments float32, updated in place from acc + grad
// (either may be null); a given acc is set to 0 afterwards.
struct AdamWTensor {
  float* param;
  float* exp_avg;
  float* exp_avg_sq;
  float* acc;        // may be null
  const void* grad;  // may be null
  GradType grad_type;
  int64_t numel;
  float weight_decay;  // CPU only, as MomentumTensor::weight_decay
};

// One tensor of lamb_update: the fields of AdamWTensor (the same states: exp_avg, exp_avg_sq).
using LambTensor = AdamWTensor;

// One tensor of lars_update: param and moment float32, updated in place from acc + grad (either
// may be null); a given acc is set to 0 afterwards.
struct LarsTensor {
  float* param;
  float* moment;
  float* acc;        // may be null
  const void* grad;  // may be null
  GradType grad_type;
  int64_t numel;
  float weight_decay;  // CPU only, as MomentumTensor::weight_decay
  float lars;          // CPU only: non-zero where the tensor takes the trust ratio (lars_filter), 0: plain momentum
};

// A read-only tensor of float32, float16 or bfloat16 values (sum_of_squares).
struct SquaresTensor {
  const void* data;
  GradType type;
  int64_t numel;
};

// Scalars of one momentum_update call on the CPU (accum_math.h MomentumArgs without the
// per-tensor weight decay). The CUDA launchers take the same values from device memory.
struct MomentumScalars {
  float lr;
  float momentum;
  float grad_scale;  // accum_math.h MomentumArgs::grad_scale
  bool nesterov;
};

// Scalars of one adamw_update call on the CPU (accum_math.h AdamWArgs without the per-tensor
// weight decay).
struct AdamWScalars {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float grad_scale;
  float bias_correction1;  // 1 - beta1^t, or 1 without bias correction
  float bias_correction2;  // 1 - beta2^t, or 1
};

// Scalars of one lamb_update call on the CPU (AdamWScalars' fields; 1 - beta^t both, LAMB always
// corrects the bias).
using LambScalars = AdamWScalars;

// Scalars of one lars_update call on the CPU (accum_math.h LarsArgs without the per-tensor values).
struct LarsScalars {
  float lr;
  float momentum;
  float grad_scale;
  float coefficient;  // the trust coefficient (nn.LARS coefficient)
  float epsilon;      // added to the trust ratio's denominator
};

}  // namespace msaccum
