// Exercises the multi-threaded CPU kernels (csrc/cpu/*.cpp, every vector ISA, the thread pool)
// under AddressSanitizer + UBSan, or ThreadSanitizer, and checks every result against a reference
// computed here in double precision from the kernel contract (docs: "The kernel contract"; the
// reference does not use accum_math.h). Built and run by tests/build/test_cpu_sanitizers.py:
//
//   g++ -std=c++17 -fsanitize=address,undefined ... csrc/cpu/*.cpp (span_kernels_isa.cpp once per ISA,
//       with the defines and flags of CMakeLists.txt)
//       tests/cpp/cpu_kernels_sanitize.cpp -o cpu_kernels_sanitize
//
// Usage: cpu_kernels_sanitize [--quick] [--isa NAME] [--no-fork]
//
// Every array is its own heap allocation of exactly the elements the kernel may touch (a pointer
// misaligned by `offset` elements has its leading elements poisoned), so a read or write past a
// tensor or thread range is an ASan error; overlapping thread ranges are a TSan data race and a
// wrong value. What runs, for each ISA the CPU supports and thread counts 1..7 (more threads than
// cores included): single tensors of tail sizes around the vector width, the widening block
// (1024) and the per-thread minimum (32768); thousands of small tensors in one call (thread ranges
// cut across tensor boundaries); fp32/fp16/bf16 gradients with subnormals, inf and nan; momentum_update
// with and without acc/grad, nesterov, per-tensor weight decay; accumulate with overwrite (NaN in
// the accumulators before); adamw_update with and without acc/grad and bias correction, per-tensor
// weight decay; zero(), axpy_ceiling() and
// sum_of_squares() (with and without inf/nan, squares overflowing float32); calls
// alternating thread counts (the pool grows and idles workers); two threads calling the kernels at
// once; fork() after the pool has workers, the child using the pool again.
// Prints one line "ok checks=N elements=M isas=K" and exits 0; any mismatch prints and exits 1.
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/cpu_kernels.h"

using msaccum::AccumulateTensor;
using msaccum::AdamWScalars;
using msaccum::AdamWTensor;
using msaccum::MomentumScalars;
using msaccum::MomentumTensor;
using msaccum::GradType;
namespace cpu = msaccum::cpu;

namespace {

std::atomic<long long> g_checks{0};
int g_isas = 0;  // vector ISAs this CPU ran (the test scales its minimum counts by it)
std::atomic<long long> g_elements{0};
std::atomic<int> g_failures{0};

void fail(const std::string& what) {
  if (g_failures.fetch_add(1) < 20) std::fprintf(stderr, "MISMATCH: %s\n", what.c_str());
}

// ---------------------------------------------------------------- buffers

// `numel` elements of T at `offset` elements into an exact-size allocation (leading part poisoned).
template <typename T>
struct Buf {
  char* raw = nullptr;
  size_t off_bytes = 0;
  int64_t n = 0;
  Buf() = default;
  Buf(int64_t numel, int offset) : off_bytes(sizeof(T) * offset), n(numel) {
    void* p = nullptr;
    const size_t bytes = off_bytes + sizeof(T) * static_cast<size_t>(numel);
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) std::abort();
    raw = static_cast<char*>(p);
    POISON(raw, off_bytes);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : raw(o.raw), off_bytes(o.off_bytes), n(o.n) { o.raw = nullptr; }
  Buf& operator=(Buf&& o) noexcept {
    std::swap(raw, o.raw);
    std::swap(off_bytes, o.off_bytes);
    std::swap(n, o.n);
    return *this;
  }
  ~Buf() {
    if (!raw) return;
    UNPOISON(raw, off_bytes);
    std::free(raw);
  }
  T* data() const { return reinterpret_cast<T*>(raw + off_bytes); }
  T& operator[](int64_t i) const { return data()[i]; }
};

// ---------------------------------------------------------------- reference conversions (independent)

double half_to_double(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;
  if (exp == 0x1f) v = man ? std::nan("") : INFINITY;
  else if (exp == 0) v = std::ldexp(static_cast<double>(man), -24);
  else v = std::ldexp(1.0 + man / 1024.0, exp - 15);
  return sign ? -v : v;
}

double bf16_to_double(uint16_t b) {
  const uint32_t w = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

// ---------------------------------------------------------------- random data

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(gen); }
  int64_t uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); }
  // Mostly O(1) values; 1 in 61 is special: subnormal, zero, inf or nan.
  float value(double scale = 1.0) {
    if (uniform(0, 60) == 0) {
      static const float specials[] = {1e-41f, -3e-39f, 0.0f, -0.0f, INFINITY, -INFINITY, NAN};
      return specials[uniform(0, 6)];
    }
    return static_cast<float>(normal() * scale);
  }
  uint16_t half_bits() {
    if (uniform(0, 60) == 0) return static_cast<uint16_t>(uniform(0, 0xffff));  // any: subnormal/inf/nan too
    return static_cast<uint16_t>((uniform(0, 1) << 15) | (uniform(9, 20) << 10) | uniform(0, 0x3ff));
  }
  uint16_t bf16_bits() {
    if (uniform(0, 60) == 0) return static_cast<uint16_t>(uniform(0, 0xffff));
    return static_cast<uint16_t>((uniform(0, 1) << 15) | (uniform(120, 130) << 7) | uniform(0, 0x7f));
  }
};

// ---------------------------------------------------------------- comparison

// out (float32) vs ref (double): same class (nan / +inf / -inf / finite); finite within
// 1e-6 * magnitude of the terms + a subnormal floor.
bool close(float out, double ref, double mag, double floor_scale) {
  // near float32 overflow (random bfloat16 bits reach 3e38): an intermediate may round to inf
  if (std::isfinite(mag) && mag >= 1e37 && std::isinf(out)) return true;
  if (std::isnan(ref)) return std::isnan(out);
  if (std::isinf(ref)) return std::isinf(out) && (out > 0) == (ref > 0);
  if (!std::isfinite(out)) return false;
  return std::fabs(static_cast<double>(out) - ref) <= 1e-6 * mag + 1e-43 * floor_scale;
}

std::string where(const char* what, size_t tensor, int64_t i, float out, double ref) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s tensor %zu element %lld: kernel %.9g, reference %.9g (isa %s, threads %d)",
                what, tensor, static_cast<long long>(i), out, ref, cpu::vector_isa(), cpu::num_threads());
  return buf;
}

// ---------------------------------------------------------------- one accumulate case

struct AccCase {
  std::vector<Buf<float>> acc;
  std::vector<Buf<float>> g32;
  std::vector<Buf<uint16_t>> g16;
  std::vector<GradType> type;
  std::vector<std::vector<float>> acc0;
};

double grad_at(GradType t, const void* g, int64_t i) {
  if (t == GradType::kFloat32) return static_cast<const float*>(g)[i];
  const uint16_t b = static_cast<const uint16_t*>(g)[i];
  return t == GradType::kFloat16 ? half_to_double(b) : bf16_to_double(b);
}

GradType pick_type(Rng& r, int forced) {
  const int t = forced >= 0 ? forced : static_cast<int>(r.uniform(0, 2));
  return static_cast<GradType>(t);
}

// overwrite: the accumulators hold NaN before the call, and the reference ignores them.
void run_accumulate(Rng& r, const std::vector<int64_t>& sizes, int grad_type, float scale, bool overwrite = false) {
  const size_t n = sizes.size();
  std::vector<Buf<float>> acc(n), g32(n);
  std::vector<Buf<uint16_t>> g16(n);
  std::vector<AccumulateTensor> ts(n);
  std::vector<std::vector<float>> acc0(n), gcopy32(n);
  std::vector<std::vector<uint16_t>> gcopy16(n);
  for (size_t k = 0; k < n; ++k) {
    const int64_t m = sizes[k];
    const GradType t = pick_type(r, grad_type);
    acc[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
    for (int64_t i = 0; i < m; ++i) acc[k][i] = overwrite ? NAN : r.value(3.0);
    acc0[k].assign(acc[k].data(), acc[k].data() + m);
    if (overwrite) std::fill(acc0[k].begin(), acc0[k].end(), 0.0f);  // the old content plays no part
    const void* g;
    if (t == GradType::kFloat32) {
      g32[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g32[k][i] = r.value();
      gcopy32[k].assign(g32[k].data(), g32[k].data() + m);
      g = g32[k].data();
    } else {
      g16[k] = Buf<uint16_t>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g16[k][i] = t == GradType::kFloat16 ? r.half_bits() : r.bf16_bits();
      gcopy16[k].assign(g16[k].data(), g16[k].data() + m);
      g = g16[k].data();
    }
    ts[k] = {acc[k].data(), g, t, m};
  }
  cpu::accumulate(ts, scale, overwrite);
  const double s = scale;
  for (size_t k = 0; k < n; ++k) {
    for (int64_t i = 0; i < sizes[k]; ++i) {
      const double a = acc0[k][i], gv = grad_at(ts[k].grad_type, ts[k].grad, i);
      const double ref = a + s * gv;
      // Where scale * grad overflows float32, an unfused kernel adds +-inf instead (inf + -inf is
      // NaN), a fused multiply-add does not: both are float32 arithmetic.
      const double unfused = std::fabs(s * gv) > 3.4028234663852886e38 ? a + std::copysign(INFINITY, s * gv) : ref;
      const double mag = std::fabs(a) + std::fabs(s * gv);
      if (!close(acc[k][i], ref, mag, 1 + std::fabs(s)) && !close(acc[k][i], unfused, mag, 1 + std::fabs(s)))
        return fail(where("accumulate", k, i, acc[k][i], ref));
    }
    const bool same = ts[k].grad_type == GradType::kFloat32
                          ? std::equal(gcopy32[k].begin(), gcopy32[k].end(), g32[k].data(),
                                       [](float x, float y) { return std::memcmp(&x, &y, 4) == 0; })
                          : std::equal(gcopy16[k].begin(), gcopy16[k].end(), g16[k].data());
    if (!same) return fail("accumulate wrote into a gradient");
    g_elements += sizes[k];
  }
  ++g_checks;
}

// ---------------------------------------------------------------- one momentum_update case

void run_momentum(Rng& r, const std::vector<int64_t>& sizes, int grad_type, bool nesterov) {
  const size_t n = sizes.size();
  const MomentumScalars sc{0.05f, 0.9f, 0.125f, nesterov};
  std::vector<Buf<float>> param(n), moment(n), acc(n), g32(n);
  std::vector<Buf<uint16_t>> g16(n);
  std::vector<MomentumTensor> ts(n);
  std::vector<std::vector<float>> p0(n), m0(n), a0(n);
  for (size_t k = 0; k < n; ++k) {
    const int64_t m = sizes[k];
    const int has = static_cast<int>(r.uniform(0, 3));  // bit 0: acc, bit 1: grad (0: neither)
    const bool has_acc = has & 1, has_grad = has & 2;
    const GradType t = pick_type(r, grad_type);
    param[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
    moment[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
    for (int64_t i = 0; i < m; ++i) {
      param[k][i] = r.value();
      moment[k][i] = r.value(0.1);
    }
    p0[k].assign(param[k].data(), param[k].data() + m);
    m0[k].assign(moment[k].data(), moment[k].data() + m);
    float* ap = nullptr;
    if (has_acc) {
      acc[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) acc[k][i] = r.value(3.0);
      a0[k].assign(acc[k].data(), acc[k].data() + m);
      ap = acc[k].data();
    }
    const void* g = nullptr;
    if (has_grad && t == GradType::kFloat32) {
      g32[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g32[k][i] = r.value();
      g = g32[k].data();
    } else if (has_grad) {
      g16[k] = Buf<uint16_t>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g16[k][i] = t == GradType::kFloat16 ? r.half_bits() : r.bf16_bits();
      g = g16[k].data();
    }
    const float wd = static_cast<float>(r.uniform(0, 3)) * 1e-3f;
    ts[k] = {param[k].data(), moment[k].data(), ap, g, t, m, wd};
  }
  cpu::momentum_update(ts, sc);
  const double lr = sc.lr, mom = sc.momentum, gs = sc.grad_scale;
  for (size_t k = 0; k < n; ++k) {
    const MomentumTensor& t = ts[k];
    const double wd = t.weight_decay;
    for (int64_t i = 0; i < sizes[k]; ++i) {
      double summed = 0, smag = 0;
      if (t.acc) summed += a0[k][i], smag += std::fabs(a0[k][i]);
      if (t.grad) {
        const double gv = grad_at(t.grad_type, t.grad, i);
        summed += gv, smag += std::fabs(gv);
      }
      const double p = p0[k][i], v0 = m0[k][i];
      const double g = summed * gs + wd * p;
      const double v = mom * v0 + g;
      const double pn = nesterov ? p - lr * (g + mom * v) : p - lr * v;
      const double gmag = smag * gs + wd * std::fabs(p);
      const double vmag = mom * std::fabs(v0) + gmag;
      const double pmag = std::fabs(p) + lr * (nesterov ? gmag + mom * vmag : vmag);
      if (!close(moment[k][i], v, 4 * vmag, 4)) return fail(where("momentum_update moment", k, i, moment[k][i], v));
      if (!close(param[k][i], pn, 4 * pmag, 4)) return fail(where("momentum_update param", k, i, param[k][i], pn));
      if (t.acc && acc[k][i] != 0.0f) return fail(where("momentum_update acc", k, i, acc[k][i], 0.0));
    }
    g_elements += sizes[k];
  }
  ++g_checks;
}

// ---------------------------------------------------------------- one adamw_update case

double finite_abs(double x) { return std::isfinite(x) ? std::fabs(x) : 0.0; }

void run_adamw(Rng& r, const std::vector<int64_t>& sizes, int grad_type, bool bias_correction) {
  const size_t n = sizes.size();
  AdamWScalars sc{0.01f, 0.9f, 0.999f, 1e-8f, 0.125f, 1.0f, 1.0f};
  if (bias_correction) {  // step 3, in double from the betas as the frontends do
    sc.bias_correction1 = static_cast<float>(1.0 - std::pow(0.9, 3));
    sc.bias_correction2 = static_cast<float>(1.0 - std::pow(0.999, 3));
  }
  std::vector<Buf<float>> param(n), m1(n), m2(n), acc(n), g32(n);
  std::vector<Buf<uint16_t>> g16(n);
  std::vector<AdamWTensor> ts(n);
  std::vector<std::vector<float>> p0(n), m10(n), m20(n), a0(n);
  for (size_t k = 0; k < n; ++k) {
    const int64_t m = sizes[k];
    const int has = static_cast<int>(r.uniform(0, 3));  // bit 0: acc, bit 1: grad (0: neither)
    const bool has_acc = has & 1, has_grad = has & 2;
    const GradType t = pick_type(r, grad_type);
    param[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
    m1[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
    m2[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
    for (int64_t i = 0; i < m; ++i) {
      param[k][i] = r.value();
      m1[k][i] = r.value(0.1);
      m2[k][i] = std::fabs(r.value(0.1));  // second moments are non-negative
    }
    p0[k].assign(param[k].data(), param[k].data() + m);
    m10[k].assign(m1[k].data(), m1[k].data() + m);
    m20[k].assign(m2[k].data(), m2[k].data() + m);
    float* ap = nullptr;
    if (has_acc) {
      acc[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) acc[k][i] = r.value(3.0);
      a0[k].assign(acc[k].data(), acc[k].data() + m);
      ap = acc[k].data();
    }
    const void* g = nullptr;
    if (has_grad && t == GradType::kFloat32) {
      g32[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g32[k][i] = r.value();
      g = g32[k].data();
    } else if (has_grad) {
      g16[k] = Buf<uint16_t>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g16[k][i] = t == GradType::kFloat16 ? r.half_bits() : r.bf16_bits();
      g = g16[k].data();
    }
    const float wd = static_cast<float>(r.uniform(0, 3)) * 1e-2f;
    ts[k] = {param[k].data(), m1[k].data(), m2[k].data(), ap, g, t, m, wd};
  }
  cpu::adamw_update(ts, sc);
  const double lr = sc.lr, b1 = sc.beta1, b2 = sc.beta2, eps = sc.eps, gs = sc.grad_scale;
  const double bc1 = sc.bias_correction1, bc2 = sc.bias_correction2;
  for (size_t k = 0; k < n; ++k) {
    const AdamWTensor& t = ts[k];
    const double wd = t.weight_decay;
    for (int64_t i = 0; i < sizes[k]; ++i) {
      double summed = 0, smag = 0;
      if (t.acc) summed += a0[k][i], smag += finite_abs(a0[k][i]);
      if (t.grad) {
        const double gv = grad_at(t.grad_type, t.grad, i);
        summed += gv, smag += finite_abs(gv);
      }
      const double p = p0[k][i];
      const double g = summed * gs;
      const double mo = b1 * m10[k][i] + (1 - b1) * g;
      const double v = b2 * m20[k][i] + (1 - b2) * g * g;
      const double u = (mo / bc1) / (std::sqrt(v) / std::sqrt(bc2) + eps);
      const double pn = p - lr * wd * p - lr * u;
      // magnitudes of the terms (finite parts); beyond ~1e37 a float32 intermediate (g * g) may
      // overflow where the double one does not: such elements are not compared
      const double gmag = smag * gs;
      const double mmag = b1 * finite_abs(m10[k][i]) + (1 - b1) * gmag;
      const double vmag = b2 * finite_abs(m20[k][i]) + (1 - b2) * gmag * gmag;
      const double den = std::sqrt(finite_abs(v)) / std::sqrt(bc2) + eps;
      const double umag = mmag / bc1 / den;
      const double pmag = finite_abs(p) * (1 + lr * wd) + lr * umag;
      if (t.acc && acc[k][i] != 0.0f) return fail(where("adamw acc", k, i, acc[k][i], 0.0));
      if (gmag * gmag >= 1e37 || umag >= 1e37 || pmag >= 1e37) continue;
      const double floor = 4 * (1 + lr / (bc1 * den));
      if (!close(m1[k][i], mo, 4 * mmag, 4)) return fail(where("adamw exp_avg", k, i, m1[k][i], mo));
      if (!close(m2[k][i], v, 4 * vmag, 4)) return fail(where("adamw exp_avg_sq", k, i, m2[k][i], v));
      if (!close(param[k][i], pn, 4 * pmag, floor)) return fail(where("adamw param", k, i, param[k][i], pn));
    }
    g_elements += sizes[k];
  }
  ++g_checks;
}

// ---------------------------------------------------------------- zero() and axpy_ceiling()

void run_zero_axpy(Rng& r, const std::vector<int64_t>& sizes) {
  const size_t n = sizes.size();
  std::vector<Buf<float>> a(n), b(n);
  std::vector<float*> pa(n);
  std::vector<const float*> pb(n);
  std::vector<std::vector<float>> a0(n);
  for (size_t k = 0; k < n; ++k) {
    a[k] = Buf<float>(sizes[k], static_cast<int>(r.uniform(0, 3)));
    b[k] = Buf<float>(sizes[k], static_cast<int>(r.uniform(0, 3)));
    for (int64_t i = 0; i < sizes[k]; ++i) a[k][i] = r.value(), b[k][i] = r.value();
    a0[k].assign(a[k].data(), a[k].data() + sizes[k]);
    pa[k] = a[k].data();
    pb[k] = b[k].data();
  }
  cpu::axpy_ceiling(pa, pb, sizes, -0.75f);
  for (size_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < sizes[k]; ++i) {
      const double ref = a0[k][i] + -0.75 * static_cast<double>(b[k][i]);
      if (!close(a[k][i], ref, std::fabs(a0[k][i]) + std::fabs(b[k][i]), 1)) return fail(where("axpy", k, i, a[k][i], ref));
    }
  cpu::zero(pa, sizes);
  for (size_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < sizes[k]; ++i)
      if (a[k][i] != 0.0f || std::signbit(a[k][i])) return fail(where("zero", k, i, a[k][i], 0.0));
  ++g_checks;
}

// ---------------------------------------------------------------- sum_of_squares()

// Reference: each square in double, +inf where the float32 square overflows (the kernel squares in
// float32); NaN if any element is NaN, else inf if any square is, else the sum, within 65 float32
// ulps relative (16 lanes of <= 64 terms each, see accum_math.h) plus a floor for squares that
// underflow float32.
void run_squares(Rng& r, const std::vector<int64_t>& sizes, int grad_type) {
  const size_t n = sizes.size();
  std::vector<Buf<float>> g32(n);
  std::vector<Buf<uint16_t>> g16(n);
  std::vector<msaccum::SquaresTensor> ts(n);
  for (size_t k = 0; k < n; ++k) {
    const int64_t m = sizes[k];
    const GradType t = pick_type(r, grad_type);
    if (t == GradType::kFloat32) {
      g32[k] = Buf<float>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g32[k][i] = r.value(r.uniform(0, 3) == 0 ? 10.0 : 1.0);
      ts[k] = {g32[k].data(), t, m};
    } else {
      g16[k] = Buf<uint16_t>(m, static_cast<int>(r.uniform(0, 3)));
      for (int64_t i = 0; i < m; ++i) g16[k][i] = t == GradType::kFloat16 ? r.half_bits() : r.bf16_bits();
      ts[k] = {g16[k].data(), t, m};
    }
  }
  // Half the cases without specials: their finite sums are the ones compared to a tolerance.
  if (r.uniform(0, 1) == 0) {
    for (size_t k = 0; k < n; ++k)
      for (int64_t i = 0; i < sizes[k]; ++i) {
        if (std::isfinite(grad_at(ts[k].type, ts[k].data, i))) continue;
        if (ts[k].type == GradType::kFloat32) g32[k][i] = 1.5f;
        else g16[k][i] = ts[k].type == GradType::kFloat16 ? 0x3e00 : 0x3fc0;  // 1.5 in both formats
      }
  }
  const double got = cpu::sum_of_squares(ts);
  bool any_nan = false, any_inf = false;
  double ref = 0.0;
  int64_t count = 0;
  for (size_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < sizes[k]; ++i, ++count) {
      const double x = grad_at(ts[k].type, ts[k].data, i);
      const double sq = x * x;
      any_nan |= std::isnan(sq);
      any_inf |= !std::isnan(sq) && sq > 3.4028234663852886e38;
      if (std::isfinite(sq)) ref += sq;
    }
  char buf[200];
  std::snprintf(buf, sizeof buf, "sum_of_squares of %lld elements: kernel %.17g, reference %.17g (nan %d, inf %d, "
                "isa %s, threads %d)", static_cast<long long>(count), got, ref, any_nan, any_inf, cpu::vector_isa(),
                cpu::num_threads());
  bool ok;
  if (any_nan) ok = std::isnan(got);
  else if (any_inf) ok = std::isinf(got) && got > 0;
  else if (ref >= 1e37 && std::isinf(got)) ok = true;  // a float32 lane may overflow first
  else ok = std::isfinite(got) && std::fabs(got - ref) <= 65 * std::ldexp(1.0, -24) * ref + 1e-37 * (1 + count);
  if (!ok) return fail(buf);
  g_elements += count;
  ++g_checks;
}

// ---------------------------------------------------------------- size plans

constexpr int64_t kPerThread = 32768;  // cpu_kernels.cpp: kMinElementsPerThread

std::vector<std::vector<int64_t>> size_plans(Rng& r, bool quick) {
  std::vector<std::vector<int64_t>> plans;
  plans.push_back({});                               // empty list
  plans.push_back({0, 0, 0});                        // only empty tensors
  for (int64_t n : {1, 3, 15, 16, 17, 31, 33, 63, 65, 1023, 1024, 1025, 2047, 4099})  // tails
    plans.push_back({n});
  // one tensor just below / at / above the thread thresholds, odd tails
  for (int64_t n : {2 * kPerThread - 1, 2 * kPerThread, 2 * kPerThread + 17, 3 * kPerThread + 1023,
                    7 * kPerThread + 5})
    plans.push_back({n});
  // many small tensors in one call: thread ranges cut across tensor boundaries
  const int many = quick ? 2 : 4;
  for (int p = 0; p < many; ++p) {
    std::vector<int64_t> v;
    int64_t total = 0;
    const int64_t target = (p + 2) * kPerThread + r.uniform(0, 999);
    while (total < target) {
      const int64_t m = r.uniform(0, 1) ? r.uniform(0, 40) : r.uniform(0, 300);
      v.push_back(m);
      total += m;
    }
    plans.push_back(v);
  }
  // mixed: small, empty and big tensors
  plans.push_back({5, 0, kPerThread + 3, 1, 0, 2 * kPerThread - 7, 1025, 3});
  plans.push_back({3 * kPerThread + 1, 0, 0, 1, 17});
  return plans;
}

void run_all_sizes(Rng& r, bool quick) {
  const auto plans = size_plans(r, quick);
  int index = 0;
  for (const auto& sizes : plans) {
    const int gt = index % 4 == 3 ? -1 : index % 4;  // f32, f16, bf16, or mixed per tensor
    run_accumulate(r, sizes, gt, index % 2 ? 0.37f : -1.5f);
    run_accumulate(r, sizes, gt, index % 2 ? -0.75f : 2.0f, /*overwrite=*/true);
    run_momentum(r, sizes, gt, index % 2 == 0);
    run_adamw(r, sizes, gt, index % 2 == 1);
    if (index % 3 == 0) run_zero_axpy(r, sizes);
    run_squares(r, sizes, gt);
    ++index;
  }
}

// ---------------------------------------------------------------- scenarios

void scenario_isa_threads(bool quick, const std::string& only_isa) {
  const int thread_counts[] = {1, 2, 3, 4, 7};
  for (const char* isa : {"avx512", "avx2", "baseline"}) {
    if (!only_isa.empty() && only_isa != isa) continue;
    if (!cpu::set_vector_isa(isa)) {
      std::fprintf(stderr, "note: this CPU has no %s; skipped\n", isa);
      continue;
    }
    ++g_isas;
    for (int t : thread_counts) {
      if (quick && t != 2 && t != 7) continue;
      cpu::set_num_threads(t);
      Rng r(1000 + t * 17 + std::strlen(isa));
      run_all_sizes(r, quick);
    }
  }
}

// Many calls alternating thread counts: the pool grows to 7 workers, then calls use fewer
// (idle workers must skip them) and more again; small calls run on the caller alone.
void scenario_varying_threads(bool quick) {
  Rng r(77);
  const int counts[] = {2, 7, 1, 3, 2, 5, 1, 4, 6, 2};
  const int rounds = quick ? 30 : 120;
  for (int i = 0; i < rounds; ++i) {
    cpu::set_num_threads(counts[i % 10]);
    const int64_t big = (1 + i % 4) * kPerThread + r.uniform(0, 100);
    run_accumulate(r, {big, r.uniform(0, 50)}, i % 3, 0.5f);
    if (i % 5 == 0) run_momentum(r, {r.uniform(0, 70000), 17}, i % 3, i % 2);
    if (i % 5 == 1) run_squares(r, {big, r.uniform(0, 70000)}, i % 3);
    if (i % 5 == 2) run_adamw(r, {r.uniform(0, 70000), big}, i % 3, i % 2);
    if (i % 5 == 3) run_accumulate(r, {big, r.uniform(0, 50)}, i % 3, 1.5f, /*overwrite=*/true);
  }
  cpu::set_num_threads(0);  // back to the default
}

// Two application threads calling the kernels at once (the pool serialises parallel calls).
void scenario_concurrent_callers(bool quick) {
  cpu::set_num_threads(3);
  auto work = [quick](uint64_t seed) {
    Rng r(seed);
    for (int i = 0; i < (quick ? 6 : 20); ++i) {
      run_accumulate(r, {3 * kPerThread + r.uniform(0, 99), r.uniform(0, 9)}, -1, 2.0f);
      run_momentum(r, {2 * kPerThread + r.uniform(0, 99)}, -1, true);
      run_adamw(r, {2 * kPerThread + r.uniform(0, 99)}, -1, true);
      run_squares(r, {3 * kPerThread + r.uniform(0, 99), r.uniform(0, 9)}, -1);
    }
  };
  std::thread a(work, 5), b(work, 6);
  a.join();
  b.join();
  cpu::set_num_threads(0);
}

// fork() after the pool has workers: the child has none; it must recreate them and compute
// correctly (and not deadlock on a lock a vanished worker held).
void scenario_fork(bool quick) {
  cpu::set_num_threads(4);
  Rng r(9);
  run_accumulate(r, {5 * kPerThread}, 0, 1.0f);  // make sure workers exist
  for (int round = 0; round < (quick ? 1 : 3); ++round) {
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      fail("fork failed");
      return;
    }
    if (pid == 0) {
      const int before = g_failures.load();
      Rng rc(100 + round);
      for (int t : {4, 2, 3}) {
        cpu::set_num_threads(t);
        run_accumulate(rc, {4 * kPerThread + 3, 5}, -1, 0.25f);
        run_momentum(rc, {3 * kPerThread + 1}, -1, false);
        run_adamw(rc, {3 * kPerThread + 1}, -1, true);
        run_accumulate(rc, {2 * kPerThread + 7}, -1, 0.5f, /*overwrite=*/true);
      }
      std::fflush(nullptr);
      _exit(g_failures.load() == before ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fail("forked child failed (status " + std::to_string(status) + ")");
      return;
    }
    // the parent's pool still works
    run_accumulate(r, {3 * kPerThread + 11}, 1, -0.5f);
  }
  cpu::set_num_threads(0);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, do_fork = true;
  std::string only_isa;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--no-fork") do_fork = false;
    else if (a == "--isa" && i + 1 < argc) only_isa = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--isa NAME] [--no-fork]\n", argv[0]);
      return 2;
    }
  }
  scenario_isa_threads(quick, only_isa);
  scenario_varying_threads(quick);
  scenario_concurrent_callers(quick);
  if (do_fork) scenario_fork(quick);
  if (g_failures.load()) {
    std::fprintf(stderr, "%d mismatch(es)\n", g_failures.load());
    return 1;
  }
  std::printf("ok checks=%lld elements=%lld isas=%d\n", g_checks.load(), g_elements.load(), g_isas);
  return 0;
}
