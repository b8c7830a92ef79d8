// The span kernels compiled for the avx2 instruction set (flags set in CMakeLists.txt).
#define MSACCUM_ISA_NS isa_avx2
#include "cpu_kernels_impl.h"

namespace msaccum {
namespace cpu {
const SpanKernels& span_kernels_avx2() {
  static const SpanKernels kernels{isa_avx2::accumulate_span, isa_avx2::assign_span, isa_avx2::flush_span,
                                         isa_avx2::adamw_span, isa_avx2::axpy_span,
                                         isa_avx2::sum_squares_span};
  return kernels;
}
}  // namespace cpu
}  // namespace msaccum
