// pybind11 frontend of mindspore_accum: `_C`.
//
// Every argument is checked here, before any kernel runs, so that bad input raises a Python
// exception naming the argument and index and no array is written. Kernels then run with the
// GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "../cpu/cpu_kernels.h"
#include "overlap.h"

#ifdef MSACCUM_WITH_CUDA
#include "../cuda/cuda_kernels.h"
#endif

namespace py = pybind11;
using msaccum::AccumulateTensor;
using msaccum::AdamWScalars;
using msaccum::AdamWTensor;
using msaccum::GradType;
using msaccum::LambScalars;
using msaccum::LambTensor;
using msaccum::LarsScalars;
using msaccum::LarsTensor;
using msaccum::MomentumScalars;
using msaccum::MomentumTensor;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(a.shape(d));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// An argument that is a list/tuple of arrays (or None where allowed), converted and checked.
struct ArrayList {
  std::string name;
  std::vector<py::array> arrays;
  bool present = false;
};

ArrayList take_list(const py::object& obj, const char* name, bool allow_none) {
  ArrayList out;
  out.name = name;
  if (obj.is_none()) {
    if (!allow_none) throw py::type_error(std::string(name) + " must be a list or tuple of numpy arrays, got None");
    return out;
  }
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    throw py::type_error(std::string(name) + " must be a list or tuple of numpy arrays, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  out.present = true;
  py::sequence seq = obj.cast<py::sequence>();
  for (size_t i = 0; i < seq.size(); ++i) {
    py::object item = seq[i];
    if (!py::isinstance<py::array>(item))
      throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] must be a numpy.ndarray, got " +
                           py::str(py::type::of(item).attr("__name__")).cast<std::string>());
    out.arrays.push_back(item.cast<py::array>());
  }
  return out;
}

std::string label(const ArrayList& l, size_t i) { return l.name + "[" + std::to_string(i) + "]"; }

bool native_order(const py::array& a) { return a.dtype().attr("isnative").cast<bool>(); }

bool is_float32(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 4 && native_order(a); }

GradType grad_type_of(const py::array& a, const std::string& what) {
  if (is_float32(a)) return GradType::kFloat32;
  if (a.dtype().kind() == 'f' && a.itemsize() == 2 && native_order(a)) return GradType::kFloat16;
  if (a.itemsize() == 2 && py::str(a.dtype().attr("name")).cast<std::string>() == "bfloat16")
    return GradType::kBFloat16;
  throw py::type_error(what + " has dtype " + dtype_str(a) + "; gradients must be float32, float16 or bfloat16");
}

void check_layout(const py::array& a, const std::string& what, bool written) {
  const int flags = a.flags();
  if (!(flags & py::array::c_style))
    throw py::value_error(what + " must be C-contiguous (got strides that are not; use numpy.ascontiguousarray)");
  if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(what + " is not aligned to its element size");
  if (written && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
    throw py::value_error(what + " is read-only but is updated in place");
}

void check_float32_list(const ArrayList& l, bool written) {
  for (size_t i = 0; i < l.arrays.size(); ++i) {
    if (!is_float32(l.arrays[i]))
      throw py::type_error(label(l, i) + " has dtype " + dtype_str(l.arrays[i]) + "; it must be float32");
    check_layout(l.arrays[i], label(l, i), written);
  }
}

void check_grad_list(const ArrayList& l) {
  for (size_t i = 0; i < l.arrays.size(); ++i) {
    grad_type_of(l.arrays[i], label(l, i));
    check_layout(l.arrays[i], label(l, i), false);
  }
}

void check_matches(const ArrayList& ref, const ArrayList& other) {
  if (other.arrays.size() != ref.arrays.size())
    throw py::value_error(other.name + " has " + std::to_string(other.arrays.size()) + " arrays but " + ref.name +
                          " has " + std::to_string(ref.arrays.size()));
  for (size_t i = 0; i < ref.arrays.size(); ++i) {
    const py::array &a = ref.arrays[i], &b = other.arrays[i];
    bool same = a.ndim() == b.ndim();
    for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == b.shape(d);
    if (!same)
      throw py::value_error(label(other, i) + " has shape " + shape_str(b) + " but " + label(ref, i) + " has shape " +
                            shape_str(a));
  }
}

// No array that is written may share memory with any other array of the call: one tensor
// updated twice, or a gradient read after part of it was overwritten, corrupts the result.
void check_no_overlap(const std::vector<std::pair<const ArrayList*, bool>>& lists) {
  std::vector<msaccum::ByteRange> ranges;
  std::vector<std::string> labels;
  for (const auto& [list, written] : lists) {
    for (size_t i = 0; i < list->arrays.size(); ++i) {
      const py::array& a = list->arrays[i];
      const auto begin = reinterpret_cast<uintptr_t>(a.data());
      ranges.push_back({begin, begin + static_cast<uintptr_t>(a.nbytes()), written, static_cast<int>(labels.size())});
      labels.push_back(label(*list, i));
    }
  }
  const auto [first, second] = msaccum::find_overlap(std::move(ranges));
  if (first >= 0)
    throw py::value_error(labels[first] + " shares memory with " + labels[second] +
                          "; arrays that are updated in place must not overlap any other argument");
}

// The one parser of Python numbers: a real number (int, float, NumPy scalar, anything with
// __float__ or __index__, but not None, str or bytes) as a double; TypeError naming the argument.
double real_number(const py::handle& obj, const char* name) {
  if (obj.is_none()) throw py::type_error(std::string(name) + " must be a real number, got None");
  const auto not_real = [&] {
    return py::type_error(std::string(name) + " must be a real number, got " +
                          py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  };
  if (py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj)) throw not_real();
  const double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    throw not_real();
  }
  return v;
}

// A real number rounded to float32 (no range check: the kernels' contract covers any value).
float to_float(const py::handle& obj, const char* name) { return static_cast<float>(real_number(obj, name)); }

// A Python bool or numpy.bool_ (not an int: overwrite=1 is more likely a mistake than a flag).
bool to_bool(const py::handle& obj, const char* name) {
  if (py::isinstance<py::bool_>(obj)) return obj.cast<bool>();
  const std::string type = py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
  if (type == "bool_" || type == "bool") return PyObject_IsTrue(obj.ptr()) == 1;
  throw py::type_error(std::string(name) + " must be a bool, got " + type);
}

void accumulate(const py::object& acc_obj, const py::object& grad_obj, const py::object& scale_obj,
                const py::object& overwrite_obj) {
  ArrayList acc = take_list(acc_obj, "acc", false);
  ArrayList grad = take_list(grad_obj, "grad", false);
  const float scale = to_float(scale_obj, "scale");
  const bool overwrite = to_bool(overwrite_obj, "overwrite");
  check_matches(acc, grad);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&acc, true}, {&grad, false}});

  std::vector<AccumulateTensor> tensors(acc.arrays.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    tensors[i] = {static_cast<float*>(acc.arrays[i].mutable_data()), grad.arrays[i].data(),
                  grad_type_of(grad.arrays[i], label(grad, i)), static_cast<int64_t>(acc.arrays[i].size())};
  }
  py::gil_scoped_release release;
  msaccum::cpu::accumulate(tensors, scale, overwrite);
}

float* float_data(ArrayList& l, size_t i) { return static_cast<float*>(l.arrays[i].mutable_data()); }

// The fields every update tensor has (kernel_api.h MomentumTensor, AdamWTensor), for tensor i of
// already checked lists: param, acc and grad (null when the list is None), the gradient type
// (float32 when absent), the size and the weight decay.
template <typename Tensor>
void fill_update_tensor(Tensor& t, size_t i, ArrayList& param, ArrayList& acc, const ArrayList& grad,
                        float weight_decay) {
  t.param = float_data(param, i);
  t.acc = acc.present ? float_data(acc, i) : nullptr;
  t.grad = grad.present ? grad.arrays[i].data() : nullptr;
  t.grad_type = grad.present ? grad_type_of(grad.arrays[i], label(grad, i)) : GradType::kFloat32;
  t.numel = static_cast<int64_t>(param.arrays[i].size());
  t.weight_decay = weight_decay;
}

// weight_decay: a real number, a 0-d array, or a 1-D list/tuple/array of one real number per tensor.
// finite: also refuse nan/inf (ValueError naming weight_decay or weight_decay[i]).
std::vector<float> weight_decay_list(const py::object& obj, size_t n, const char* tensors_name, bool finite) {
  auto check = [finite](float v, const std::string& what) {
    if (finite && !std::isfinite(v))
      throw py::value_error(what + " must be finite, got " + py::str(py::float_(v)).cast<std::string>());
    return v;
  };
  std::vector<float> weight_decay(n);
  const bool zero_d_array = py::isinstance<py::array>(obj) && obj.cast<py::array>().ndim() == 0;
  if (!zero_d_array && (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj) || py::isinstance<py::array>(obj))) {
    py::sequence seq = obj.cast<py::sequence>();
    if (py::isinstance<py::array>(obj) && obj.cast<py::array>().ndim() != 1)
      throw py::value_error("weight_decay must be a float or a 1-D sequence with one float per tensor");
    if (seq.size() != n)
      throw py::value_error("weight_decay has " + std::to_string(seq.size()) + " values but " + tensors_name +
                            " has " + std::to_string(n) + " tensors");
    for (size_t i = 0; i < n; ++i) {
      const std::string what = "weight_decay[" + std::to_string(i) + "]";
      weight_decay[i] = check(to_float(seq[i], what.c_str()), what);
    }
  } else {
    const py::object scalar = zero_d_array ? py::object(obj.attr("item")()) : obj;
    std::fill(weight_decay.begin(), weight_decay.end(), check(to_float(scalar, "weight_decay"), "weight_decay"));
  }
  return weight_decay;
}

void momentum_update(const py::object& param_obj, const py::object& moment_obj, const py::object& acc_obj,
                    const py::object& grad_obj, const py::object& lr_obj, const py::object& momentum_obj,
                    const py::object& grad_scale_obj, const py::object& weight_decay_obj, bool nesterov) {
  ArrayList param = take_list(param_obj, "param", false);
  ArrayList moment = take_list(moment_obj, "moment", false);
  ArrayList acc = take_list(acc_obj, "acc", true);
  ArrayList grad = take_list(grad_obj, "grad", true);
  const MomentumScalars scalars{to_float(lr_obj, "lr"), to_float(momentum_obj, "momentum"),
                                to_float(grad_scale_obj, "grad_scale"), nesterov};
  const size_t n = param.arrays.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", false);

  check_matches(param, moment);
  if (acc.present) check_matches(param, acc);
  if (grad.present) check_matches(param, grad);
  check_float32_list(param, true);
  check_float32_list(moment, true);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&param, true}, {&moment, true}, {&acc, true}, {&grad, false}});

  std::vector<MomentumTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    MomentumTensor& t = tensors[i];
    t.moment = float_data(moment, i);
    fill_update_tensor(t, i, param, acc, grad, weight_decay[i]);
  }
  py::gil_scoped_release release;
  msaccum::cpu::momentum_update(tensors, scalars);
}

// A real number as a double, checked: finite, and within [lo, hi] (hi_open: hi excluded;
// lo_open: lo excluded). The message names the argument and the rule it breaks.
double checked_real(const py::handle& obj, const char* name, double lo, bool lo_open, double hi, bool hi_open) {
  const double v = real_number(obj, name);
  const auto bound = [](double b) { return py::str(py::float_(b)).cast<std::string>(); };
  if (!std::isfinite(v)) throw py::value_error(std::string(name) + " must be finite, got " + bound(v));
  if (static_cast<float>(v) != 0.0f && !std::isfinite(static_cast<float>(v)))
    throw py::value_error(std::string(name) + " = " + bound(v) + " does not fit in float32");
  const bool low = lo_open ? !(v > lo) : !(v >= lo);
  const bool high = hi_open ? !(v < hi) : !(v <= hi);
  if (low || high)
    throw py::value_error(std::string(name) + " must be in " + (lo_open ? "(" : "[") +
                          (std::isinf(lo) ? "-inf" : bound(lo)) + ", " + (std::isinf(hi) ? "inf" : bound(hi)) +
                          (hi_open ? ")" : "]") + ", got " + bound(v));
  return v;
}

// step: an int >= 1 (Python int or NumPy integer; not a bool, not a float), as a double.
double step_number(const py::object& step_obj) {
  const std::string step_type = py::str(py::type::of(step_obj).attr("__name__")).cast<std::string>();
  if (py::isinstance<py::bool_>(step_obj) || !PyIndex_Check(step_obj.ptr()))
    throw py::type_error("step must be an int >= 1, got " + step_type);
  const py::int_ step_int = py::reinterpret_steal<py::int_>(PyNumber_Index(step_obj.ptr()));
  if (!step_int) throw py::error_already_set();
  if (step_int < py::int_(1))
    throw py::value_error("step must be an int >= 1, got " + py::str(step_int).cast<std::string>());
  double step = PyLong_AsDouble(step_int.ptr());
  if (step == -1.0 && PyErr_Occurred()) {  // beyond double: beta**step is 0 long before that
    PyErr_Clear();
    step = INFINITY;
  }
  return step;
}

void adamw_update(const py::object& param_obj, const py::object& exp_avg_obj, const py::object& exp_avg_sq_obj,
                 const py::object& acc_obj, const py::object& grad_obj, const py::object& lr_obj,
                 const py::object& beta1_obj, const py::object& beta2_obj, const py::object& eps_obj,
                 const py::object& weight_decay_obj, const py::object& step_obj, const py::object& grad_scale_obj,
                 const py::object& bias_correction_obj) {
  ArrayList param = take_list(param_obj, "param", false);
  ArrayList exp_avg = take_list(exp_avg_obj, "exp_avg", false);
  ArrayList exp_avg_sq = take_list(exp_avg_sq_obj, "exp_avg_sq", false);
  ArrayList acc = take_list(acc_obj, "acc", true);
  ArrayList grad = take_list(grad_obj, "grad", true);
  const double inf = INFINITY;
  const double lr = checked_real(lr_obj, "lr", 0.0, false, inf, true);
  const double beta1 = checked_real(beta1_obj, "beta1", 0.0, false, 1.0, true);
  const double beta2 = checked_real(beta2_obj, "beta2", 0.0, false, 1.0, true);
  const double eps = checked_real(eps_obj, "eps", 0.0, true, inf, true);
  if (!(static_cast<float>(eps) > 0.0f))
    throw py::value_error("eps must be > 0 in float32, got " + py::str(py::float_(eps)).cast<std::string>() +
                          " (rounds to 0)");
  const double grad_scale = checked_real(grad_scale_obj, "grad_scale", -inf, true, inf, true);
  const double step = step_number(step_obj);
  const bool bias_correction = to_bool(bias_correction_obj, "bias_correction");
  const size_t n = param.arrays.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", true);

  check_matches(param, exp_avg);
  check_matches(param, exp_avg_sq);
  if (acc.present) check_matches(param, acc);
  if (grad.present) check_matches(param, grad);
  check_float32_list(param, true);
  check_float32_list(exp_avg, true);
  check_float32_list(exp_avg_sq, true);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&param, true}, {&exp_avg, true}, {&exp_avg_sq, true}, {&acc, true}, {&grad, false}});

  // Bias corrections in double from the unrounded betas, then rounded to float32 once.
  AdamWScalars scalars{static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
                       static_cast<float>(eps), static_cast<float>(grad_scale), 1.0f, 1.0f};
  if (bias_correction) {
    scalars.bias_correction1 = static_cast<float>(1.0 - std::pow(beta1, step));
    scalars.bias_correction2 = static_cast<float>(1.0 - std::pow(beta2, step));
  }
  std::vector<AdamWTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    AdamWTensor& t = tensors[i];
    t.exp_avg = float_data(exp_avg, i);
    t.exp_avg_sq = float_data(exp_avg_sq, i);
    fill_update_tensor(t, i, param, acc, grad, weight_decay[i]);
  }
  py::gil_scoped_release release;
  msaccum::cpu::adamw_update(tensors, scalars);
}

// LAMB (accum_math.h): the checks of adamw_update (bias correction always on); returns the
// per-tensor trust ratios r.
std::vector<float> lamb_update(const py::object& param_obj, const py::object& exp_avg_obj,
                               const py::object& exp_avg_sq_obj, const py::object& acc_obj,
                               const py::object& grad_obj, const py::object& lr_obj, const py::object& beta1_obj,
                               const py::object& beta2_obj, const py::object& eps_obj,
                               const py::object& weight_decay_obj, const py::object& step_obj,
                               const py::object& grad_scale_obj) {
  ArrayList param = take_list(param_obj, "param", false);
  ArrayList exp_avg = take_list(exp_avg_obj, "exp_avg", false);
  ArrayList exp_avg_sq = take_list(exp_avg_sq_obj, "exp_avg_sq", false);
  ArrayList acc = take_list(acc_obj, "acc", true);
  ArrayList grad = take_list(grad_obj, "grad", true);
  const double inf = INFINITY;
  const double lr = checked_real(lr_obj, "lr", 0.0, false, inf, true);
  const double beta1 = checked_real(beta1_obj, "beta1", 0.0, false, 1.0, true);
  const double beta2 = checked_real(beta2_obj, "beta2", 0.0, false, 1.0, true);
  const double eps = checked_real(eps_obj, "eps", 0.0, true, inf, true);
  if (!(static_cast<float>(eps) > 0.0f))
    throw py::value_error("eps must be > 0 in float32, got " + py::str(py::float_(eps)).cast<std::string>() +
                          " (rounds to 0)");
  const double grad_scale = checked_real(grad_scale_obj, "grad_scale", -inf, true, inf, true);
  const double step = step_number(step_obj);
  const size_t n = param.arrays.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", true);

  check_matches(param, exp_avg);
  check_matches(param, exp_avg_sq);
  if (acc.present) check_matches(param, acc);
  if (grad.present) check_matches(param, grad);
  check_float32_list(param, true);
  check_float32_list(exp_avg, true);
  check_float32_list(exp_avg_sq, true);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&param, true}, {&exp_avg, true}, {&exp_avg_sq, true}, {&acc, true}, {&grad, false}});

  const LambScalars scalars{static_cast<float>(lr),
                            static_cast<float>(beta1),
                            static_cast<float>(beta2),
                            static_cast<float>(eps),
                            static_cast<float>(grad_scale),
                            static_cast<float>(1.0 - std::pow(beta1, step)),
                            static_cast<float>(1.0 - std::pow(beta2, step))};
  std::vector<LambTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    LambTensor& t = tensors[i];
    t.exp_avg = float_data(exp_avg, i);
    t.exp_avg_sq = float_data(exp_avg_sq, i);
    fill_update_tensor(t, i, param, acc, grad, weight_decay[i]);
  }
  std::vector<float> ratios(n);
  py::gil_scoped_release release;
  msaccum::cpu::lamb_update(tensors, scalars, ratios.data());
  return ratios;
}

// lars: a bool for every tensor, or a list/tuple with one bool per tensor.
std::vector<float> lars_flags(const py::object& obj, size_t n) {
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    py::sequence seq = obj.cast<py::sequence>();
    if (seq.size() != n)
      throw py::value_error("lars has " + std::to_string(seq.size()) + " values but param has " + std::to_string(n) +
                            " tensors");
    std::vector<float> flags(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string what = "lars[" + std::to_string(i) + "]";
      flags[i] = to_bool(seq[i], what.c_str()) ? 1.0f : 0.0f;
    }
    return flags;
  }
  return std::vector<float>(n, to_bool(obj, "lars") ? 1.0f : 0.0f);
}

// LARS around momentum (accum_math.h); returns the per-tensor trust ratios (1 without LARS).
std::vector<float> lars_update(const py::object& param_obj, const py::object& moment_obj, const py::object& acc_obj,
                               const py::object& grad_obj, const py::object& lr_obj, const py::object& momentum_obj,
                               const py::object& grad_scale_obj, const py::object& weight_decay_obj,
                               const py::object& coefficient_obj, const py::object& epsilon_obj,
                               const py::object& lars_obj) {
  ArrayList param = take_list(param_obj, "param", false);
  ArrayList moment = take_list(moment_obj, "moment", false);
  ArrayList acc = take_list(acc_obj, "acc", true);
  ArrayList grad = take_list(grad_obj, "grad", true);
  const double inf = INFINITY;
  const double lr = checked_real(lr_obj, "lr", 0.0, false, inf, true);
  const double momentum = checked_real(momentum_obj, "momentum", 0.0, false, inf, true);
  const double grad_scale = checked_real(grad_scale_obj, "grad_scale", -inf, true, inf, true);
  const double coefficient = checked_real(coefficient_obj, "coefficient", 0.0, false, inf, true);
  const double epsilon = checked_real(epsilon_obj, "epsilon", 0.0, false, inf, true);
  const size_t n = param.arrays.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", true);
  const std::vector<float> flags = lars_flags(lars_obj, n);

  check_matches(param, moment);
  if (acc.present) check_matches(param, acc);
  if (grad.present) check_matches(param, grad);
  check_float32_list(param, true);
  check_float32_list(moment, true);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&param, true}, {&moment, true}, {&acc, true}, {&grad, false}});

  const LarsScalars scalars{static_cast<float>(lr), static_cast<float>(momentum), static_cast<float>(grad_scale),
                            static_cast<float>(coefficient), static_cast<float>(epsilon)};
  std::vector<LarsTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    LarsTensor& t = tensors[i];
    t.moment = float_data(moment, i);
    fill_update_tensor(t, i, param, acc, grad, weight_decay[i]);
    t.lars = flags[i];
  }
  std::vector<float> ratios(n);
  py::gil_scoped_release release;
  msaccum::cpu::lars_update(tensors, scalars, ratios.data());
  return ratios;
}

double sum_of_squares(const py::object& tensors_obj) {
  ArrayList tensors = take_list(tensors_obj, "tensors", false);
  check_grad_list(tensors);
  std::vector<msaccum::SquaresTensor> views(tensors.arrays.size());
  for (size_t i = 0; i < views.size(); ++i)
    views[i] = {tensors.arrays[i].data(), grad_type_of(tensors.arrays[i], label(tensors, i)),
                static_cast<int64_t>(tensors.arrays[i].size())};
  py::gil_scoped_release release;
  return msaccum::cpu::sum_of_squares(views);
}

// Float64 workspace elements the MsAccumSumSquares AOT op needs for tensors of these sizes:
// the CUDA kernel's partial sums, or 1 (unused) on CPU.
long long sum_of_squares_workspace(const std::vector<int64_t>& numel, const std::string& device) {
  for (size_t i = 0; i < numel.size(); ++i)
    if (numel[i] < 0) throw py::value_error("numel[" + std::to_string(i) + "] is negative");
  if (device == "CPU") return 1;
  if (device != "GPU") throw py::value_error("device must be 'CPU' or 'GPU', got '" + device + "'");
#ifdef MSACCUM_WITH_CUDA
  return msaccum::cuda::sum_of_squares_workspace(numel.data(), static_cast<int>(numel.size()));
#else
  throw py::value_error("mindspore_accum was built without CUDA: no GPU kernels");
#endif
}

void axpy_ceiling(const py::object& a_obj, const py::object& b_obj, const py::object& s_obj) {
  ArrayList a = take_list(a_obj, "a", false);
  ArrayList b = take_list(b_obj, "b", false);
  const float s = to_float(s_obj, "s");
  check_matches(a, b);
  check_float32_list(a, true);
  check_float32_list(b, false);
  check_no_overlap({{&a, true}, {&b, false}});
  std::vector<float*> pa;
  std::vector<const float*> pb;
  std::vector<int64_t> numel;
  for (size_t i = 0; i < a.arrays.size(); ++i) {
    pa.push_back(static_cast<float*>(a.arrays[i].mutable_data()));
    pb.push_back(static_cast<const float*>(b.arrays[i].data()));
    numel.push_back(static_cast<int64_t>(a.arrays[i].size()));
  }
  py::gil_scoped_release release;
  msaccum::cpu::axpy_ceiling(pa, pb, numel, s);
}

py::dict build_info() {
  py::dict info;
  info["version"] = MSACCUM_VERSION;
#ifdef MSACCUM_WITH_CUDA
  info["cuda"] = true;
  info["cuda_architectures"] = py::str(MSACCUM_CUDA_ARCHITECTURES);
  info["cuda_runtime"] = msaccum::cuda::runtime_version();
#else
  info["cuda"] = false;
  info["cuda_architectures"] = py::str("");
  info["cuda_runtime"] = py::none();
#endif
  info["vector_isa"] = msaccum::cpu::vector_isa();
  info["num_threads"] = msaccum::cpu::num_threads();
  info["compiler"] = __VERSION__;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mindspore_accum kernels: fused gradient accumulation, window-end updates (momentum, AdamW) and sum of "
            "squares over tensor lists";
  m.def("accumulate", &accumulate, py::arg("acc"), py::arg("grad"), py::arg("scale"), py::kw_only(),
        py::arg("overwrite") = false,
        "acc[i] += scale * grad[i] for every i, in place, in one multi-threaded call; with overwrite=True "
        "acc[i] = scale * grad[i], the accumulators' previous content never read.");
  m.def("momentum_update", &momentum_update, py::arg("param"), py::arg("moment"), py::arg("acc"), py::arg("grad"),
        py::kw_only(), py::arg("lr"), py::arg("momentum"), py::arg("grad_scale"), py::arg("weight_decay") = 0.0,
        py::arg("nesterov") = false,
        "Fused end of an accumulation window: momentum update of param from (acc + grad) * grad_scale, then acc = 0.");
  m.def("adamw_update", &adamw_update, py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("acc"),
        py::arg("grad"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), py::arg("grad_scale"), py::arg("bias_correction"),
        "Fused end of an accumulation window: AdamW update (decoupled weight decay) of param from "
        "(acc + grad) * grad_scale, then acc = 0; bias corrections 1 - beta**step when bias_correction.");
  // The window-end kernels are updates; their 0.2 names stay as aliases of the same functions
  // for one release (deprecated).
  m.def("lamb_update", &lamb_update, py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("acc"),
        py::arg("grad"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), py::arg("grad_scale"),
        "Fused end of an accumulation window: LAMB update (bias-corrected moments, layer-wise trust ratio "
        "||w|| / ||u||) of param from (acc + grad) * grad_scale, then acc = 0, in two passes. Returns the ratios.");
  m.def("lars_update", &lars_update, py::arg("param"), py::arg("moment"), py::arg("acc"), py::arg("grad"),
        py::kw_only(), py::arg("lr"), py::arg("momentum"), py::arg("grad_scale"), py::arg("weight_decay") = 0.0,
        py::arg("coefficient") = 0.001, py::arg("epsilon") = 1e-5, py::arg("lars") = true,
        "Fused end of an accumulation window: LARS (layer-wise trust ratio) around momentum SGD, of param from "
        "(acc + grad) * grad_scale, then acc = 0, in two passes. Returns the trust ratios (1 where lars is False).");
  m.attr("momentum_flush") = m.attr("momentum_update");
  m.attr("adamw_flush") = m.attr("adamw_update");
  m.def("sum_of_squares", &sum_of_squares, py::arg("tensors"),
        "Sum over all elements of all tensors (float32, float16 or bfloat16) of x*x, squares in float32, "
        "partial sums in double; one multi-threaded pass. NaN/inf (or overflow) make the result non-finite.");
  m.def("sum_of_squares_workspace", &sum_of_squares_workspace, py::arg("numel"), py::arg("device"),
        "Float64 workspace elements the MsAccumSumSquares AOT op needs for tensors of these sizes on device "
        "'CPU' or 'GPU'.");
  m.def("axpy_ceiling", &axpy_ceiling, py::arg("a"), py::arg("b"), py::arg("s"),
        "a[i] += s * b[i] over float32 lists: the plain bandwidth ceiling used by the benchmarks.");
  m.def(
      "set_vector_isa",
      [](const std::string& isa) {
        if (isa != "avx512" && isa != "avx2" && isa != "baseline")
          throw py::value_error("isa must be 'avx512', 'avx2' or 'baseline', got '" + isa + "'");
        if (!msaccum::cpu::set_vector_isa(isa.c_str()))
          throw py::value_error("isa '" + isa + "' is not supported by this CPU");
      },
      py::arg("isa"),
      "Use the CPU kernels compiled for `isa` (for testing and benchmarking; the default is the best the CPU "
      "supports, capped by the MSACCUM_CPU_ISA environment variable).");
  m.def("build_info", &build_info, "How this extension was built and what it runs with.");
  m.def("num_threads", &msaccum::cpu::num_threads, "Threads the CPU kernels use.");
  m.def("set_num_threads", &msaccum::cpu::set_num_threads, py::arg("n"),
        "Set the CPU kernels' thread count, at most 256 (n <= 0 restores the default: MSACCUM_NUM_THREADS or the CPU affinity).");
  // Introspection of the one kernel library (libmsaccum_kernels.so) that _C and the AOT ops share.
  m.def("_pool_workers", &msaccum::cpu::pool_workers, "Worker threads the CPU kernels' pool has started.");
  m.def(
      "_kernel_calls", [](const std::string& isa) { return msaccum::cpu::kernel_calls(isa.c_str()); },
      py::arg("isa"), "CPU kernel calls (from _C or the AOT ops) that ran the span kernels of `isa`.");
}
