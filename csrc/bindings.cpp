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

#include "cpu/cpu_kernels.h"
#include "overlap.h"

#ifdef MSACCUM_WITH_CUDA
#include "cuda/cuda_kernels.h"
#endif

namespace py = pybind11;
using msaccum::AccumulateTensor;
using msaccum::FlushScalars;
using msaccum::FlushTensor;
using msaccum::GradType;

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

float to_float(const py::handle& obj, const char* name) {
  if (obj.is_none()) throw py::type_error(std::string(name) + " must be a real number, got None");
  if (py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj))
    throw py::type_error(std::string(name) + " must be a real number, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  const double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be a real number, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  return static_cast<float>(v);
}

void accumulate(const py::object& acc_obj, const py::object& grad_obj, const py::object& scale_obj) {
  ArrayList acc = take_list(acc_obj, "acc", false);
  ArrayList grad = take_list(grad_obj, "grad", false);
  const float scale = to_float(scale_obj, "scale");
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
  msaccum::cpu::accumulate(tensors, scale);
}

void momentum_flush(const py::object& param_obj, const py::object& moment_obj, const py::object& acc_obj,
                    const py::object& grad_obj, const py::object& lr_obj, const py::object& momentum_obj,
                    const py::object& grad_scale_obj, const py::object& weight_decay_obj, bool nesterov) {
  ArrayList param = take_list(param_obj, "param", false);
  ArrayList moment = take_list(moment_obj, "moment", false);
  ArrayList acc = take_list(acc_obj, "acc", true);
  ArrayList grad = take_list(grad_obj, "grad", true);
  const FlushScalars scalars{to_float(lr_obj, "lr"), to_float(momentum_obj, "momentum"),
                             to_float(grad_scale_obj, "grad_scale"), nesterov};
  const size_t n = param.arrays.size();
  std::vector<float> weight_decay(n);
  const bool zero_d_array = py::isinstance<py::array>(weight_decay_obj) && weight_decay_obj.cast<py::array>().ndim() == 0;
  if (!zero_d_array && (py::isinstance<py::list>(weight_decay_obj) || py::isinstance<py::tuple>(weight_decay_obj) ||
                        py::isinstance<py::array>(weight_decay_obj))) {
    py::sequence seq = weight_decay_obj.cast<py::sequence>();
    if (py::isinstance<py::array>(weight_decay_obj) && weight_decay_obj.cast<py::array>().ndim() != 1)
      throw py::value_error("weight_decay must be a float or a 1-D sequence with one float per tensor");
    if (seq.size() != n)
      throw py::value_error("weight_decay has " + std::to_string(seq.size()) + " values but param has " +
                            std::to_string(n) + " tensors");
    for (size_t i = 0; i < n; ++i) weight_decay[i] = to_float(seq[i], ("weight_decay[" + std::to_string(i) + "]").c_str());
  } else {
    const py::object scalar = zero_d_array ? py::object(weight_decay_obj.attr("item")()) : weight_decay_obj;
    std::fill(weight_decay.begin(), weight_decay.end(), to_float(scalar, "weight_decay"));
  }

  check_matches(param, moment);
  if (acc.present) check_matches(param, acc);
  if (grad.present) check_matches(param, grad);
  check_float32_list(param, true);
  check_float32_list(moment, true);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&param, true}, {&moment, true}, {&acc, true}, {&grad, false}});

  std::vector<FlushTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    FlushTensor& t = tensors[i];
    t.param = static_cast<float*>(param.arrays[i].mutable_data());
    t.moment = static_cast<float*>(moment.arrays[i].mutable_data());
    t.acc = acc.present ? static_cast<float*>(acc.arrays[i].mutable_data()) : nullptr;
    t.grad = grad.present ? grad.arrays[i].data() : nullptr;
    t.grad_type = grad.present ? grad_type_of(grad.arrays[i], label(grad, i)) : GradType::kFloat32;
    t.numel = static_cast<int64_t>(param.arrays[i].size());
    t.weight_decay = weight_decay[i];
  }
  py::gil_scoped_release release;
  msaccum::cpu::momentum_flush(tensors, scalars);
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
  m.doc() = "mindspore_accum kernels: fused gradient accumulation and momentum update over tensor lists";
  m.def("accumulate", &accumulate, py::arg("acc"), py::arg("grad"), py::arg("scale"),
        "acc[i] += scale * grad[i] for every i, in place, in one multi-threaded call.");
  m.def("momentum_flush", &momentum_flush, py::arg("param"), py::arg("moment"), py::arg("acc"), py::arg("grad"),
        py::kw_only(), py::arg("lr"), py::arg("momentum"), py::arg("grad_scale"), py::arg("weight_decay") = 0.0,
        py::arg("nesterov") = false,
        "Fused end of an accumulation window: momentum update of param from (acc + grad) * grad_scale, then acc = 0.");
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
