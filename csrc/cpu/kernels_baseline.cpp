// The span kernels compiled for the baseline instruction set (flags set in CMakeLists.txt).
#define MSACCUM_ISA_NS isa_baseline
#include "cpu_kernels_impl.h"

namespace msaccum {
namespace cpu {
const SpanKernels& span_kernels_baseline() {
  static const SpanKernels kernels{isa_baseline::accumulate_span, isa_baseline::assign_span, isa_baseline::flush_span,
                                         isa_baseline::adamw_span, isa_baseline::axpy_span,
                                         isa_baseline::sum_squares_span};
  return kernels;
}
}  // namespace cpu
}  // namespace msaccum
