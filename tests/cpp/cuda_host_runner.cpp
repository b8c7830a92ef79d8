// Runs the CUDA kernels of csrc/cuda/cuda_kernels.cu on the host (through csrc/cuda/host_shim.h)
// on a case written by tests/build/test_cuda_host.py, and writes the results back for comparison with
// the NumPy reference. Built by the test, with AddressSanitizer and UBSan:
//
//   g++ -std=c++17 -DMSACCUM_HOST_SHIM -include csrc/cuda/host_shim.h -Icsrc -fsanitize=address,undefined
//       -x c++ csrc/cuda/cuda_kernels.cu -x none tests/cpp/cuda_host_runner.cpp -o cuda_host_runner
// (the exact command, with all flags, is in tests/build/test_cuda_host.py)
//
// Usage: cuda_host_runner CASE OUT   |   cuda_host_runner --info
//
// Every array lives in its own heap allocation of exactly `offset + numel` elements, so a read or
// write past the end is an ASan error; the `offset` leading elements (used to misalign the data
// pointer) are poisoned as far as ASan's 8-byte granularity allows. The hyper-parameters, the
// scale and the weight decays are heap allocations of their exact size too (the "device memory"
// the kernels read).
//
// Case file (little endian):
//   int32 magic 'MSAC'; int32 op (0 accumulate, 1 momentum_update, 2 zero_fill, 3 sum_of_squares,
//   4 adamw_update); int32 count;
//   int64 chunk (0: the public launchers; -1: the launchers with host-side arguments, *_host, on
//                device 1 and stream kHostStream, the way the pybind11 frontend runs DLPack CUDA
//                tensors; else internal::*_chunked with this chunk size);
//   float32[4] scalars (accumulate: scale, overwrite value, overwrite given (0: null pointer), 0;
//                      momentum_update: lr, momentum, grad_scale, nesterov;
//                      sum_of_squares: workspace elements beyond the required count (-1: one short), 0, 0, 0;
//                      adamw_update: lr, beta1, beta2, eps);
//   op 4 only: float32[4] more (grad_scale, bias_correction1, bias_correction2, 0);
//   op 0/1/3/4: count x {int64 numel; int32 grad_type (0 f32, 1 f16, 2 bf16, -1 absent); int32 has_acc;
//                    int32 offset[5] (elements before param, moment, acc, grad, exp_avg_sq); float32 weight_decay}
//           then per tensor the arrays in the order param, moment (momentum; adamw: exp_avg), exp_avg_sq (adamw),
//           acc, grad (present ones);
//           (sum_of_squares reads the "grad" arrays: its tensors have no acc);
//   op 2:   count float32 values (zero_fill fills them with zeros).
// With chunk -1 the runner also checks what the shim recorded (and exits 2 naming the breach):
// every stream-ordered allocation freed, device 1 made current and the previous one restored,
// every launch on kHostStream; and no CUDA call at all when no tensor has an element.
// Output: int32 rc; int64 launches, vector_elements, scalar_elements; then the same arrays, after the call;
// op 3 then appends float32 result and int64 required workspace elements. The workspace is an
// exact-size heap allocation too.
#include <sanitizer/asan_interface.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_kernels.h"
#include "cuda/cuda_kernels_internal.h"

namespace {

struct Buffer {
  void* raw = nullptr;
  size_t offset_bytes = 0;
  size_t bytes = 0;
  void* data() const { return static_cast<char*>(raw) + offset_bytes; }
};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "cuda_host_runner: %s\n", why.c_str());
  std::exit(2);
}

struct Reader {
  FILE* f;
  template <typename T>
  T get() {
    T v;
    if (std::fread(&v, sizeof(T), 1, f) != 1) die("truncated case file");
    return v;
  }
  void bytes(void* dst, size_t n) {
    if (n && std::fread(dst, 1, n, f) != n) die("truncated case file");
  }
};

Buffer make_buffer(size_t elem, int64_t numel, int32_t offset, Reader& in) {
  if (numel < 0 || offset < 0) die("negative size or offset");
  Buffer b;
  b.offset_bytes = static_cast<size_t>(offset) * elem;
  b.bytes = static_cast<size_t>(numel) * elem;
  if (posix_memalign(&b.raw, 64, b.offset_bytes + b.bytes) != 0) die("out of memory");
  in.bytes(b.data(), b.bytes);
  ASAN_POISON_MEMORY_REGION(b.raw, b.offset_bytes);
  return b;
}

void free_buffer(Buffer& b) {
  if (!b.raw) return;
  ASAN_UNPOISON_MEMORY_REGION(b.raw, b.offset_bytes);
  std::free(b.raw);
  b.raw = nullptr;
}

template <typename T>
void put(FILE* f, T v) {
  std::fwrite(&v, sizeof(T), 1, f);
}

size_t grad_size(int32_t type) { return type == 0 ? 4 : 2; }

const auto kHostStream = reinterpret_cast<void*>(uintptr_t{0x5EED});
constexpr int kHostDevice = 1;

// After a *_host launcher: what the shim recorded must match the contract in cuda_kernels.h.
void check_host_launch(bool any_elements) {
  if (msaccum_shim::live_allocations != 0) die("host launcher leaked a stream-ordered allocation");
  if (msaccum_shim::current_device != 0) die("host launcher did not restore the current device");
  if (!any_elements) {
    if (msaccum_shim::launches != 0 || msaccum_shim::set_device_calls != 0)
      die("host launcher made CUDA calls for tensors without elements");
    return;
  }
  if (msaccum_shim::set_device_calls != 2) die("host launcher did not switch to the tensors' device and back");
  if (msaccum_shim::last_stream != static_cast<cudaStream_t>(kHostStream)) die("host launcher used another stream");
}

int info() {
  namespace in = msaccum::cuda::internal;
  std::printf(
      "{\"block_threads\": %d, \"chunk_elems\": %lld, \"max_blocks\": %d, \"max_accumulate_tensors\": %d, "
      "\"max_momentum_tensors\": %d, \"max_squares_tensors\": %d, \"max_adamw_tensors\": %d, \"runtime_version\": \"%s\", "
      "\"error_string_1\": \"%s\", \"bad_count\": %d, \"bad_chunk\": %d, \"bad_numel\": %d, \"empty\": %d, "
      "\"zero_fill_null\": %d, \"adamw_bad_numel\": %d, \"adamw_null_hyper\": %d, \"adamw_empty\": %d}\n",
      in::kBlockThreads, in::kChunkElems, in::kMaxBlocksPerLaunch, in::kMaxAccumulateTensors, in::kMaxMomentumTensors,
      in::kMaxSquaresTensors, in::kMaxAdamWTensors,
      msaccum::cuda::runtime_version(), msaccum::cuda::error_string(1),
      msaccum::cuda::accumulate(nullptr, -1, nullptr, nullptr),
      [] {
        float acc = 0, grad = 0, scale = 1;
        msaccum::AccumulateTensor t{&acc, &grad, msaccum::GradType::kFloat32, 1};
        return in::accumulate_chunked(&t, 1, &scale, nullptr, 0);
      }(),
      [] {
        float p = 0, m = 0, hyper[4] = {0, 0, 0, 0}, wd = 0;
        msaccum::MomentumTensor t{&p, &m, nullptr, nullptr, msaccum::GradType::kFloat32, -1, 0.0f};
        return msaccum::cuda::momentum_update(&t, 1, hyper, &wd, nullptr);
      }(),
      msaccum::cuda::momentum_update(nullptr, 0, nullptr, nullptr, nullptr),
      msaccum::cuda::zero_fill(nullptr, 4, nullptr),
      [] {
        float p = 0, m = 0, v = 0, hyper[7] = {0, 0, 0, 1, 0, 1, 1}, wd = 0;
        msaccum::AdamWTensor t{&p, &m, &v, nullptr, nullptr, msaccum::GradType::kFloat32, -1, 0.0f};
        return msaccum::cuda::adamw_update(&t, 1, hyper, &wd, nullptr);
      }(),
      [] {
        float p = 0, m = 0, v = 0, wd = 0;
        msaccum::AdamWTensor t{&p, &m, &v, nullptr, nullptr, msaccum::GradType::kFloat32, 1, 0.0f};
        return msaccum::cuda::adamw_update(&t, 1, nullptr, &wd, nullptr);
      }(),
      msaccum::cuda::adamw_update(nullptr, 0, nullptr, nullptr, nullptr));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--info") == 0) return info();
  if (argc != 3) die("usage: cuda_host_runner CASE OUT | --info");
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) die(std::string("cannot open ") + argv[1]);
  Reader in{f};
  if (in.get<int32_t>() != 0x4341534d) die("bad magic");
  const int32_t op = in.get<int32_t>();
  const int32_t count = in.get<int32_t>();
  const int64_t chunk = in.get<int64_t>();
  float scalars[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int k = 0; k < (op == 4 ? 8 : 4); ++k) scalars[k] = in.get<float>();
  if (count < 0) die("negative count");

  struct Tensor {
    int64_t numel;
    int32_t grad_type, has_acc, offset[5];
    float weight_decay;
    Buffer param, moment, moment2, acc, grad;
  };
  std::vector<Tensor> tensors(op == 2 ? 0 : count);
  for (Tensor& t : tensors) {
    t.numel = in.get<int64_t>();
    t.grad_type = in.get<int32_t>();
    t.has_acc = in.get<int32_t>();
    for (int32_t& o : t.offset) o = in.get<int32_t>();
    t.weight_decay = in.get<float>();
    if (t.grad_type < -1 || t.grad_type > 2) die("bad grad type");
  }
  for (Tensor& t : tensors) {
    if (op == 1 || op == 4) {
      t.param = make_buffer(4, t.numel, t.offset[0], in);
      t.moment = make_buffer(4, t.numel, t.offset[1], in);
    }
    if (op == 4) t.moment2 = make_buffer(4, t.numel, t.offset[4], in);
    if (t.has_acc) t.acc = make_buffer(4, t.numel, t.offset[2], in);
    if (t.grad_type >= 0) t.grad = make_buffer(grad_size(t.grad_type), t.numel, t.offset[3], in);
  }
  Buffer zeros;
  if (op == 2) zeros = make_buffer(4, count, 0, in);
  std::fclose(f);

  // "Device memory" read by the kernels, each an exact-size heap allocation.
  float* scale = new float[1]{scalars[0]};
  float* hyper = op == 4 ? new float[7]{scalars[0], scalars[1], scalars[2], scalars[3], scalars[4], scalars[5],
                                        scalars[6]}
                          : new float[4]{scalars[0], scalars[1], scalars[2], scalars[3]};
  float* overwrite = new float[1]{scalars[1]};
  float* weight_decay = new float[count > 0 ? count : 1];
  for (size_t i = 0; i < tensors.size(); ++i) weight_decay[i] = tensors[i].weight_decay;

  msaccum_shim::reset_counters();
  msaccum_shim::set_device_calls = 0;
  msaccum_shim::last_stream = nullptr;
  const bool host_args = chunk == -1;
  bool any_elements = false;
  for (const Tensor& t : tensors) any_elements = any_elements || t.numel > 0;
  int rc = 0;
  long long squares_needed = 0;
  float* squares_result = nullptr;
  if (op == 0) {
    std::vector<msaccum::AccumulateTensor> list(count);
    for (int i = 0; i < count; ++i) {
      const Tensor& t = tensors[i];
      list[i] = {static_cast<float*>(t.acc.data()), t.grad.data(),
                 static_cast<msaccum::GradType>(t.grad_type < 0 ? 0 : t.grad_type), t.numel};
    }
    const float* flag = scalars[2] != 0.0f ? overwrite : nullptr;
    if (host_args && scalars[2] == 0.0f) die("the host launcher always passes the overwrite flag");
    rc = host_args ? msaccum::cuda::accumulate_host(list.data(), count, scalars[0], scalars[1] != 0.0f, kHostDevice,
                                                    kHostStream)
         : chunk > 0 ? msaccum::cuda::internal::accumulate_chunked(list.data(), count, scale, nullptr, chunk, flag)
                     : msaccum::cuda::accumulate(list.data(), count, scale, nullptr, flag);
  } else if (op == 1) {
    std::vector<msaccum::MomentumTensor> list(count);
    for (int i = 0; i < count; ++i) {
      const Tensor& t = tensors[i];
      list[i] = {static_cast<float*>(t.param.data()),
                 static_cast<float*>(t.moment.data()),
                 t.has_acc ? static_cast<float*>(t.acc.data()) : nullptr,
                 t.grad_type >= 0 ? t.grad.data() : nullptr,
                 static_cast<msaccum::GradType>(t.grad_type < 0 ? 0 : t.grad_type),
                 t.numel,
                 // ignored by the device-argument launchers (weight decay comes from device memory);
                 // the host-argument launcher uploads this one
                 host_args ? t.weight_decay : -12345.0f};
    }
    const msaccum::MomentumScalars ms{scalars[0], scalars[1], scalars[2], scalars[3] != 0.0f};
    rc = host_args ? msaccum::cuda::momentum_update_host(list.data(), count, ms, kHostDevice, kHostStream)
         : chunk > 0
             ? msaccum::cuda::internal::momentum_update_chunked(list.data(), count, hyper, weight_decay, nullptr, chunk)
             : msaccum::cuda::momentum_update(list.data(), count, hyper, weight_decay, nullptr);
  } else if (op == 4) {
    std::vector<msaccum::AdamWTensor> list(count);
    for (int i = 0; i < count; ++i) {
      const Tensor& t = tensors[i];
      list[i] = {static_cast<float*>(t.param.data()),
                 static_cast<float*>(t.moment.data()),
                 static_cast<float*>(t.moment2.data()),
                 t.has_acc ? static_cast<float*>(t.acc.data()) : nullptr,
                 t.grad_type >= 0 ? t.grad.data() : nullptr,
                 static_cast<msaccum::GradType>(t.grad_type < 0 ? 0 : t.grad_type),
                 t.numel,
                 host_args ? t.weight_decay : -12345.0f};  // as momentum_update above
    }
    const msaccum::AdamWScalars as{scalars[0], scalars[1], scalars[2], scalars[3], scalars[4], scalars[5],
                                   scalars[6]};
    rc = host_args ? msaccum::cuda::adamw_update_host(list.data(), count, as, kHostDevice, kHostStream)
         : chunk > 0
             ? msaccum::cuda::internal::adamw_update_chunked(list.data(), count, hyper, weight_decay, nullptr, chunk)
             : msaccum::cuda::adamw_update(list.data(), count, hyper, weight_decay, nullptr);
  } else if (op == 2) {
    rc = msaccum::cuda::zero_fill(static_cast<float*>(zeros.data()), count, nullptr);
  } else if (op == 3) {
    std::vector<msaccum::SquaresTensor> list(count);
    std::vector<int64_t> numel(count);
    for (int i = 0; i < count; ++i) {
      const Tensor& t = tensors[i];
      list[i] = {t.grad.data(), static_cast<msaccum::GradType>(t.grad_type < 0 ? 0 : t.grad_type), t.numel};
      numel[i] = t.numel;
    }
    namespace in = msaccum::cuda::internal;
    squares_needed = chunk > 0 && !host_args ? in::sum_of_squares_workspace_chunked(numel.data(), count, chunk)
                               : msaccum::cuda::sum_of_squares_workspace(numel.data(), count);
    const long long size = squares_needed + static_cast<long long>(scalars[0]);
    if (size < 1) die("workspace size < 1");
    double* workspace = new double[size];
    squares_result = new float[1]{-1.0f};
    if (host_args) {
      double result = -1.0;
      rc = msaccum::cuda::sum_of_squares_host(list.data(), count, &result, kHostDevice, kHostStream);
      *squares_result = static_cast<float>(result);
    } else {
      rc = chunk > 0 ? in::sum_of_squares_chunked(list.data(), count, squares_result, workspace, size, nullptr, chunk)
                     : msaccum::cuda::sum_of_squares(list.data(), count, squares_result, workspace, size, nullptr);
    }
    delete[] workspace;
  } else {
    die("bad op");
  }
  if (host_args) check_host_launch(any_elements);

  FILE* out = std::fopen(argv[2], "wb");
  if (!out) die(std::string("cannot write ") + argv[2]);
  put<int32_t>(out, rc);
  put<int64_t>(out, msaccum_shim::launches);
  put<int64_t>(out, msaccum_shim::vector_elements);
  put<int64_t>(out, msaccum_shim::scalar_elements);
  for (Tensor& t : tensors) {
    for (Buffer* b : {&t.param, &t.moment, &t.moment2, &t.acc, &t.grad}) {
      if (b->raw) std::fwrite(b->data(), 1, b->bytes, out);
      free_buffer(*b);
    }
  }
  if (op == 2) {
    std::fwrite(zeros.data(), 1, zeros.bytes, out);
    free_buffer(zeros);
  }
  if (op == 3) {
    put<float>(out, *squares_result);
    put<int64_t>(out, squares_needed);
    delete[] squares_result;
  }
  if (std::fclose(out) != 0) die("write failed");
  delete[] scale;
  delete[] hyper;
  delete[] overwrite;
  delete[] weight_decay;
  return 0;
}
