// The span kernels compiled for the avx512 instruction set (flags set in CMakeLists.txt).
#define MSACCUM_ISA_NS isa_avx512
#include "cpu_kernels_impl.h"

namespace msaccum {
namespace cpu {
const SpanKernels& span_kernels_avx512() {
  static const SpanKernels kernels{isa_avx512::accumulate_span, isa_avx512::assign_span, isa_avx512::flush_span,
                                         isa_avx512::adamw_span, isa_avx512::axpy_span,
                                         isa_avx512::sum_squares_span};
  return kernels;
}
}  // namespace cpu
}  // namespace msaccum
