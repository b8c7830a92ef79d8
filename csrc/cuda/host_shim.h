// Host shim: compiles the CUDA kernel sources as plain host C++ so tests can run them on the CPU.
//
//   g++ -std=c++17 -x c++ -DMSACCUM_HOST_SHIM -include csrc/cuda/host_shim.h csrc/cuda/cuda_kernels.cu
//
// What it provides: the CUDA qualifiers, dim3, threadIdx/blockIdx/blockDim/gridDim (thread_local
// globals), the vector types the kernels use (float4, ushort4, make_float4), minimal stand-ins
// for the runtime calls of the launchers (errors, cudaMemsetAsync, versions), and
// MSACCUM_LAUNCH, which runs every block and, inside it, every thread one after another.
//
// What it does NOT model, honestly: concurrency. Threads run sequentially, so there is no
// __syncthreads, shared memory or warp intrinsic here and kernels that need them must not use
// this shim (ours do not: every element is read and written by exactly one thread). Device and
// host memory are the same, so a host pointer passed where a device pointer is expected goes
// unnoticed; streams are ignored (everything is synchronous). Launch configuration errors
// (empty grid, too many threads) and the 4 KiB kernel-parameter limit are checked.
#pragma once

#ifndef MSACCUM_HOST_SHIM
#error "host_shim.h is only for the host build of the CUDA sources: compile with -DMSACCUM_HOST_SHIM"
#endif

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// Same size and alignment as CUDA's built-in vector types (so misaligned use trips UBSan).
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) ushort4 {
  unsigned short x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---- runtime API stand-ins (only what the launchers call) ----

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
typedef struct CUstream_st* cudaStream_t;

namespace msaccum_shim {
inline thread_local cudaError_t last_error = cudaSuccess;
// Counters the tests read: launches, and elements handled by the vector and the scalar path.
inline long long launches = 0;
inline long long vector_elements = 0;
inline long long scalar_elements = 0;
inline void reset_counters() { launches = vector_elements = scalar_elements = 0; }
}  // namespace msaccum_shim

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = msaccum_shim::last_error;
  msaccum_shim::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return msaccum_shim::last_error; }

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unrecognized error code";
}

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (p == nullptr) return cudaErrorInvalidValue;
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// Stream-ordered allocation (the LAMB/LARS norms' scratch): the host build runs every launch at once,
// so plain malloc/free keep the order.
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  if (p == nullptr) return cudaErrorInvalidValue;
  *p = std::malloc(bytes == 0 ? 1 : bytes);
  return *p ? cudaSuccess : cudaErrorInvalidValue;
}

inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  return cudaSuccess;
}

// There is no CUDA runtime in the host build: report version 0 ("unknown" to the caller).
inline cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return cudaErrorInvalidValue;
  *version = 0;
  return cudaSuccess;
}

// ---- kernel launch: every block, and within it every thread, in loops ----

namespace msaccum_shim {

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "wrong number of kernel arguments");
  static_assert((sizeof(Params) + ... + 0) <= 4096, "kernel parameters exceed CUDA's 4 KiB limit");
  ++launches;
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || grid.y > 65535 ||
      grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Arguments are converted to the parameter types once, like the runtime copying them to the
  // device; each thread then receives its own by-value copy.
  std::tuple<Params...> params(std::forward<Args>(args)...);
  gridDim = grid;
  blockDim = block;
  for (unsigned int bz = 0; bz < grid.z; ++bz)
    for (unsigned int by = 0; by < grid.y; ++by)
      for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        for (unsigned int tz = 0; tz < block.z; ++tz)
          for (unsigned int ty = 0; ty < block.y; ++ty)
            for (unsigned int tx = 0; tx < block.x; ++tx) {
              threadIdx = dim3(tx, ty, tz);
              std::apply(kernel, params);
            }
      }
}

}  // namespace msaccum_shim

#define MSACCUM_LAUNCH(kernel, grid, block, stream, ...) \
  ::msaccum_shim::launch(kernel, (grid), (block), (stream), __VA_ARGS__)
#define MSACCUM_COUNT_PATH(path, n) (::msaccum_shim::path##_elements += (n))
