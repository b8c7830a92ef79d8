// Runs the CUDA lamb_update / lars_update (csrc/cuda/cuda_kernels.cu, compiled as host C++ with
// host_shim.h) on one case read from a file, and writes the updated arrays back; the test
// (tests/kernels/test_lamb_lars_cuda_host.py) compares them with its float64 references.
//
// Case (little endian): int32 op (0 lamb, 1 lars), int32 count, int64 chunk, float hyper[8];
// per tensor: int64 numel, int32 grad_type (-1: none, 0 f32, 1 f16, 2 bf16), int32 has_acc,
// float weight_decay, float lars; then per tensor its arrays: param, moment (lamb: exp_avg,
// exp_avg_sq), [acc], [grad]. Result: int32 rc, then per tensor param, the states, [acc].
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "cuda/cuda_kernels_internal.h"

namespace {
struct Reader {
  std::vector<char> data;
  size_t pos = 0;
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, data.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  void* take(size_t bytes) {
    void* p = data.data() + pos;
    pos += bytes;
    return p;
  }
};
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::ifstream in(argv[1], std::ios::binary);
  Reader r{std::vector<char>(std::istreambuf_iterator<char>(in), {})};
  const int op = r.get<int32_t>(), count = r.get<int32_t>();
  const long long chunk = r.get<int64_t>();
  float hyper[8];
  for (float& h : hyper) h = r.get<float>();
  struct Meta {
    int64_t numel;
    int grad_type, has_acc;
    float wd, lars;
  };
  std::vector<Meta> meta(count);
  for (Meta& m : meta) m = {r.get<int64_t>(), r.get<int32_t>(), r.get<int32_t>(), r.get<float>(), r.get<float>()};
  // Every array in its own heap block, so AddressSanitizer sees any read or write out of bounds.
  std::vector<std::vector<float>> owned;
  std::vector<std::vector<char>> grads;
  auto floats = [&](int64_t n) {
    const float* src = static_cast<const float*>(r.take(4 * static_cast<size_t>(n)));
    owned.emplace_back(src, src + n);
    return owned.back().data();
  };
  owned.reserve(4 * count);
  grads.reserve(count);
  std::vector<msaccum::LambTensor> lamb(count);
  std::vector<msaccum::LarsTensor> lars(count);
  std::vector<float> wd(count), flags(count);
  std::vector<std::vector<float*>> written(count);
  for (int i = 0; i < count; ++i) {
    const Meta& m = meta[i];
    float* param = floats(m.numel);
    float* s1 = floats(m.numel);
    float* s2 = op == 0 ? floats(m.numel) : nullptr;
    float* acc = m.has_acc ? floats(m.numel) : nullptr;
    const void* grad = nullptr;
    if (m.grad_type >= 0) {
      const size_t bytes = (m.grad_type == 0 ? 4 : 2) * static_cast<size_t>(m.numel);
      const char* src = static_cast<const char*>(r.take(bytes));
      grads.emplace_back(src, src + bytes);
      grad = grads.back().data();
    }
    const auto type = static_cast<msaccum::GradType>(m.grad_type < 0 ? 0 : m.grad_type);
    lamb[i] = msaccum::LambTensor{param, s1, s2, acc, grad, type, m.numel, 0.0f};
    lars[i] = msaccum::LarsTensor{param, s1, acc, grad, type, m.numel, 0.0f, 0.0f};
    wd[i] = m.wd;
    flags[i] = m.lars;
    written[i] = {param, s1};
    if (s2) written[i].push_back(s2);
    if (acc) written[i].push_back(acc);
  }
  namespace in_ = msaccum::cuda::internal;
  const int rc = op == 0 ? in_::lamb_update_chunked(lamb.data(), count, hyper, wd.data(), nullptr, chunk)
                         : in_::lars_update_chunked(lars.data(), count, hyper, wd.data(), flags.data(), nullptr, chunk);
  std::ofstream out(argv[2], std::ios::binary);
  const int32_t rc32 = rc;
  out.write(reinterpret_cast<const char*>(&rc32), 4);
  for (int i = 0; i < count; ++i)
    for (float* p : written[i]) out.write(reinterpret_cast<const char*>(p), 4 * meta[i].numel);
  return 0;
}
