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
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cpu/cpu_kernels.h"
#include "../third_party/dlpack.h"
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

namespace dl = msaccum::dlpack;

// ---- tensors: NumPy arrays (the 0.2 path, unchanged) or any DLPack exporter ----

// A consumed DLPack capsule: the managed tensor is ours (the capsule was renamed "used_..."),
// and its deleter runs when this is destroyed, with the GIL held (the lists outlive the GIL
// release of the kernel call).
struct DLPackImport {
  dl::DLManagedTensorVersioned* versioned = nullptr;
  dl::DLManagedTensor* legacy = nullptr;
  DLPackImport() = default;
  DLPackImport(const DLPackImport&) = delete;
  DLPackImport& operator=(const DLPackImport&) = delete;
  ~DLPackImport() {
    if (versioned && versioned->deleter) versioned->deleter(versioned);
    if (legacy && legacy->deleter) legacy->deleter(legacy);
  }
  const dl::DLTensor& tensor() const { return versioned ? versioned->dl_tensor : legacy->dl_tensor; }
  uint64_t flags() const { return versioned ? versioned->flags : 0; }
};

struct Device {
  int32_t type = dl::kDLCPU;
  int32_t id = 0;
  bool operator==(const Device& o) const { return type == o.type && id == o.id; }
};

std::string device_str(const Device& d) {
  switch (d.type) {
    case dl::kDLCPU: return "cpu";
    case dl::kDLCUDA: return "cuda:" + std::to_string(d.id);
    case dl::kDLCUDAHost: return "cuda_host";
    case dl::kDLCUDAManaged: return "cuda_managed:" + std::to_string(d.id);
    case dl::kDLROCM: return "rocm:" + std::to_string(d.id);
    default: return "DLPack device type " + std::to_string(d.type) + ":" + std::to_string(d.id);
  }
}

// One element of an argument list.
struct Tensor {
  bool numpy = false;
  py::array array;                     // numpy: the array
  py::object exporter;                 // otherwise: the object with __dlpack__
  Device device;                       // numpy: the CPU
  std::unique_ptr<DLPackImport> dl;    // after import (place())
};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t d = 0; d < shape.size(); ++d) {
    if (d) s += ", ";
    s += std::to_string(shape[d]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

std::vector<int64_t> shape_of(const Tensor& t) {
  if (t.numpy) {
    std::vector<int64_t> shape(t.array.ndim());
    for (py::ssize_t d = 0; d < t.array.ndim(); ++d) shape[d] = t.array.shape(d);
    return shape;
  }
  const dl::DLTensor& x = t.dl->tensor();
  return std::vector<int64_t>(x.shape, x.shape + x.ndim);
}

int64_t numel_of(const Tensor& t) {
  if (t.numpy) return static_cast<int64_t>(t.array.size());
  int64_t n = 1;
  for (int64_t d : shape_of(t)) n *= d;
  return n;
}

void* data_of(const Tensor& t) {
  if (t.numpy) return const_cast<void*>(t.array.data());
  const dl::DLTensor& x = t.dl->tensor();
  return static_cast<char*>(x.data) + x.byte_offset;
}

std::string dl_dtype_str(const dl::DLDataType& d) {
  std::string base;
  switch (d.code) {
    case dl::kDLInt: base = "int" + std::to_string(d.bits); break;
    case dl::kDLUInt: base = "uint" + std::to_string(d.bits); break;
    case dl::kDLFloat: base = "float" + std::to_string(d.bits); break;
    case dl::kDLBfloat: base = "bfloat" + std::to_string(d.bits); break;
    case dl::kDLComplex: base = "complex" + std::to_string(d.bits); break;
    case dl::kDLBool: base = "bool"; break;
    default: base = "DLPack dtype code " + std::to_string(d.code) + " (" + std::to_string(d.bits) + " bits)";
  }
  return d.lanes == 1 ? base : base + "x" + std::to_string(d.lanes);
}

std::string dtype_str(const Tensor& t) {
  return t.numpy ? py::str(t.array.dtype()).cast<std::string>() : dl_dtype_str(t.dl->tensor().dtype);
}

// An argument that is a list/tuple of arrays (or None where allowed).
struct ArrayList {
  std::string name;
  std::vector<Tensor> tensors;
  bool present = false;
};

std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")).cast<std::string>(); }

ArrayList take_list(const py::object& obj, const char* name, bool allow_none) {
  ArrayList out;
  out.name = name;
  if (obj.is_none()) {
    if (!allow_none) throw py::type_error(std::string(name) + " must be a list or tuple of numpy arrays, got None");
    return out;
  }
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    throw py::type_error(std::string(name) + " must be a list or tuple of numpy arrays, got " + type_name(obj));
  out.present = true;
  py::sequence seq = obj.cast<py::sequence>();
  for (size_t i = 0; i < seq.size(); ++i) {
    py::object item = seq[i];
    Tensor t;
    if (py::isinstance<py::array>(item)) {
      t.numpy = true;
      t.array = item.cast<py::array>();
    } else if (py::hasattr(item, "__dlpack__") && py::hasattr(item, "__dlpack_device__")) {
      t.exporter = item;
    } else {
      throw py::type_error(std::string(name) + "[" + std::to_string(i) +
                           "] must be a numpy.ndarray or an array with __dlpack__ and __dlpack_device__ "
                           "(DLPack), got " + type_name(item));
    }
    out.tensors.push_back(std::move(t));
  }
  return out;
}

std::string label(const ArrayList& l, size_t i) { return l.name + "[" + std::to_string(i) + "]"; }

std::string python_error_text(py::error_already_set& e) {
  return std::string(e.type() ? py::str(e.type().attr("__name__")).cast<std::string>() : "error") + ": " +
         py::str(e.value()).cast<std::string>();
}

// Where the tensors of one call live and, for CUDA, the stream the kernels run on.
struct Placement {
  Device device;
  void* stream = nullptr;  // a cudaStream_t: 1 legacy default, 2 per-thread default, else a handle
};

// The `stream` argument for CUDA tensors, as DLPack's __dlpack__(stream=...) takes it: None is
// the legacy default stream (1); an int >= 1, or a stream object with an int `cuda_stream`
// (PyTorch) or `ptr` (CuPy) attribute. 0 is refused (ambiguous in DLPack), as is a negative value.
int64_t cuda_stream_value(const py::object& stream) {
  if (stream.is_none()) return 1;
  py::object value = stream;
  if (!PyIndex_Check(stream.ptr()) || py::isinstance<py::bool_>(stream)) {
    if (py::hasattr(stream, "cuda_stream")) value = stream.attr("cuda_stream");
    else if (py::hasattr(stream, "ptr")) value = stream.attr("ptr");
    else
      throw py::type_error("stream must be None, an int (a cudaStream_t, 1 or 2) or a stream object with "
                           "`cuda_stream` or `ptr`, got " + type_name(stream));
  }
  if (py::isinstance<py::bool_>(value) || !PyIndex_Check(value.ptr()))
    throw py::type_error("stream must be an int, got " + type_name(value));
  const int64_t s = value.cast<int64_t>();
  if (s == 0)
    throw py::value_error("stream=0 is ambiguous in DLPack: pass None or 1 (the legacy default stream), 2 (the "
                          "per-thread default stream) or a cudaStream_t handle");
  if (s < 0) throw py::value_error("stream must be >= 1, got " + std::to_string(s));
  return s;
}

// Calls obj.__dlpack__ (DLPack 1.0 with max_version and copy=False first, then without copy,
// then with `stream` only, as NumPy 1.x: a TypeError moves to the next) and takes ownership of
// the capsule it returns.
std::unique_ptr<DLPackImport> import_dlpack(const py::object& obj, const py::object& stream, const std::string& what) {
  const auto refuse = [&](py::error_already_set& e) {
    std::string msg = what + " could not be exported through DLPack (" + type_name(obj) + ".__dlpack__ raised " +
                      python_error_text(e) + ")";
    if (msg.find("gradient") != std::string::npos || msg.find("requires_grad") != std::string::npos)
      msg += "; pass a tensor that does not require grad, e.g. tensor.detach() (it shares the storage)";
    return py::value_error(msg);
  };
  const py::object export_fn = obj.attr("__dlpack__");
  const py::tuple max_version = py::make_tuple(dl::kMajorVersion, dl::kMinorVersion);
  py::object capsule;
  for (int attempt = 0; !capsule; ++attempt) {
    try {
      if (attempt == 0)
        capsule = export_fn(py::arg("stream") = stream, py::arg("max_version") = max_version, py::arg("copy") = false);
      else if (attempt == 1)
        capsule = export_fn(py::arg("stream") = stream, py::arg("max_version") = max_version);
      else
        capsule = export_fn(py::arg("stream") = stream);
    } catch (py::error_already_set& e) {
      if (attempt == 2 || !e.matches(PyExc_TypeError)) throw refuse(e);
    }
  }
  auto imp = std::make_unique<DLPackImport>();
  PyObject* cap = capsule.ptr();
  if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
    imp->versioned = static_cast<dl::DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
    if (PyCapsule_SetName(cap, "used_dltensor_versioned") != 0) throw py::error_already_set();
    if (imp->versioned->version.major != dl::kMajorVersion)
      throw py::value_error(what + " was exported as DLPack " + std::to_string(imp->versioned->version.major) + "." +
                            std::to_string(imp->versioned->version.minor) + "; mindspore_accum reads DLPack " +
                            std::to_string(dl::kMajorVersion) + ".x");
  } else if (PyCapsule_IsValid(cap, "dltensor")) {
    imp->legacy = static_cast<dl::DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    if (PyCapsule_SetName(cap, "used_dltensor") != 0) throw py::error_already_set();
  } else {
    throw py::type_error(what + ".__dlpack__() returned " + type_name(capsule) +
                         ", not an unused DLPack capsule (\"dltensor\" or \"dltensor_versioned\")");
  }
  return imp;
}

// Checks that every tensor of the call is on one device that has kernels here, resolves the
// stream, and imports the DLPack tensors. Nothing is written; called before the other checks.
Placement place(const std::vector<ArrayList*>& lists, const py::object& stream, bool cuda_allowed = true) {
  Placement where;
  const ArrayList* first_list = nullptr;
  size_t first_index = 0;
  for (ArrayList* list : lists) {
    for (size_t i = 0; i < list->tensors.size(); ++i) {
      Tensor& t = list->tensors[i];
      if (!t.numpy) {
        try {
          py::tuple dev = t.exporter.attr("__dlpack_device__")();
          if (dev.size() != 2) throw py::value_error("not a pair");
          t.device = {dev[0].cast<int32_t>(), dev[1].cast<int32_t>()};
        } catch (py::error_already_set& e) {
          throw py::value_error(label(*list, i) + ".__dlpack_device__() failed: " + python_error_text(e));
        } catch (py::cast_error&) {
          throw py::type_error(label(*list, i) + ".__dlpack_device__() must return (device_type, device_id) ints");
        }
      }
      if (t.device.type != dl::kDLCPU && t.device.type != dl::kDLCUDA)
        throw py::value_error(label(*list, i) + " is on " + device_str(t.device) +
                              "; mindspore_accum runs on CPU (kDLCPU) and CUDA (kDLCUDA) tensors only");
      if (!first_list) {
        first_list = list;
        first_index = i;
        where.device = t.device;
      } else if (!(t.device == where.device)) {
        throw py::value_error(label(*list, i) + " is on " + device_str(t.device) + " but " +
                              label(*first_list, first_index) + " is on " + device_str(where.device) +
                              "; all tensors of one call must be on one device");
      }
    }
  }
  py::object dlpack_stream = py::none();
  if (where.device.type == dl::kDLCUDA) {
    const std::string who = label(*first_list, first_index);
    if (!cuda_allowed) throw py::value_error(who + " is a CUDA tensor; this function runs on the CPU only");
#ifndef MSACCUM_WITH_CUDA
    throw py::value_error(who + " is a CUDA tensor but mindspore_accum was built without CUDA (build_info()['cuda'] "
                          "is False): rebuild with nvcc on PATH (MSACCUM_CUDA=ON)");
#endif
    const int64_t s = cuda_stream_value(stream);
    dlpack_stream = py::int_(s);
    where.stream = reinterpret_cast<void*>(static_cast<uintptr_t>(s));
  } else if (!stream.is_none()) {
    throw py::value_error("stream is for CUDA tensors only; these tensors are on the CPU (pass stream=None)");
  }
  for (ArrayList* list : lists) {
    for (size_t i = 0; i < list->tensors.size(); ++i) {
      Tensor& t = list->tensors[i];
      if (t.numpy) continue;
      t.dl = import_dlpack(t.exporter, dlpack_stream, label(*list, i));
      const dl::DLTensor& x = t.dl->tensor();
      const Device got{x.device.device_type, x.device.device_id};
      if (!(got == t.device))
        throw py::value_error(label(*list, i) + " was exported on " + device_str(got) + " but __dlpack_device__() said " +
                              device_str(t.device));
      if (x.ndim < 0 || (x.ndim > 0 && x.shape == nullptr))
        throw py::value_error(label(*list, i) + " has an invalid DLPack shape (ndim " + std::to_string(x.ndim) + ")");
      for (int d = 0; d < x.ndim; ++d)
        if (x.shape[d] < 0) throw py::value_error(label(*list, i) + " has a negative DLPack dimension");
    }
  }
  return where;
}

bool native_order(const py::array& a) { return a.dtype().attr("isnative").cast<bool>(); }

bool is_float32(const Tensor& t) {
  if (t.numpy) return t.array.dtype().kind() == 'f' && t.array.itemsize() == 4 && native_order(t.array);
  const dl::DLDataType d = t.dl->tensor().dtype;
  return d.code == dl::kDLFloat && d.bits == 32 && d.lanes == 1;
}

std::optional<GradType> grad_type(const Tensor& t) {
  if (is_float32(t)) return GradType::kFloat32;
  if (t.numpy) {
    const py::array& a = t.array;
    if (a.dtype().kind() == 'f' && a.itemsize() == 2 && native_order(a)) return GradType::kFloat16;
    if (a.itemsize() == 2 && py::str(a.dtype().attr("name")).cast<std::string>() == "bfloat16")
      return GradType::kBFloat16;
    return std::nullopt;
  }
  const dl::DLDataType d = t.dl->tensor().dtype;
  if (d.lanes != 1 || d.bits != 16) return std::nullopt;
  if (d.code == dl::kDLFloat) return GradType::kFloat16;
  if (d.code == dl::kDLBfloat) return GradType::kBFloat16;
  return std::nullopt;
}

GradType grad_type_of(const Tensor& t, const std::string& what) {
  if (const auto type = grad_type(t)) return *type;
  throw py::type_error(what + " has dtype " + dtype_str(t) + "; gradients must be float32, float16 or bfloat16");
}

size_t itemsize_of(const Tensor& t) {
  return t.numpy ? static_cast<size_t>(t.array.itemsize()) : t.dl->tensor().dtype.bits / 8u;
}

// Layout of a DLPack tensor whose dtype is already checked: compact row-major (strides null,
// or equal to the compact ones wherever a dimension has more than one element), aligned to the
// element size, not flagged read-only or copied when it is written.
void check_dlpack_layout(const Tensor& t, const std::string& what, bool written) {
  const dl::DLTensor& x = t.dl->tensor();
  const int64_t n = numel_of(t);
  if (x.strides != nullptr && n > 0) {
    int64_t expected = 1;
    for (int d = x.ndim - 1; d >= 0; --d) {
      if (x.shape[d] != 1 && x.strides[d] != expected) {
        std::vector<int64_t> strides(x.strides, x.strides + x.ndim);
        throw py::value_error(what + " must be C-contiguous (its DLPack strides " + shape_str(strides) +
                              " for shape " + shape_str(shape_of(t)) +
                              " are not compact row-major; make it contiguous, e.g. .contiguous())");
      }
      expected *= x.shape[d];
    }
  }
  const size_t item = itemsize_of(t);
  const uintptr_t begin = reinterpret_cast<uintptr_t>(x.data);
  if (n > 0) {
    if (x.data == nullptr) throw py::value_error(what + " has a null DLPack data pointer");
    const uint64_t bytes = static_cast<uint64_t>(n) * item;
    if (x.byte_offset > UINTPTR_MAX - begin || bytes > UINTPTR_MAX - begin - x.byte_offset)
      throw py::value_error(what + " has a DLPack byte_offset (" + std::to_string(x.byte_offset) +
                            ") that overflows the address space");
  }
  if ((begin + x.byte_offset) % item != 0)
    throw py::value_error(what + " is not aligned to its element size (DLPack data + byte_offset " +
                          std::to_string(x.byte_offset) + " is not a multiple of " + std::to_string(item) + ")");
  if (written && (t.dl->flags() & dl::kFlagReadOnly))
    throw py::value_error(what + " is read-only (its DLPack export is flagged read-only) but is updated in place");
  if (written && (t.dl->flags() & dl::kFlagIsCopied))
    throw py::value_error(what + " was copied by its exporter (DLPack IS_COPIED flag): an in-place update would be lost");
}

void check_layout(const Tensor& t, const std::string& what, bool written) {
  if (!t.numpy) return check_dlpack_layout(t, what, written);
  const int flags = t.array.flags();
  if (!(flags & py::array::c_style))
    throw py::value_error(what + " must be C-contiguous (got strides that are not; use numpy.ascontiguousarray)");
  if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(what + " is not aligned to its element size");
  if (written && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
    throw py::value_error(what + " is read-only but is updated in place");
}

void check_float32_list(const ArrayList& l, bool written) {
  for (size_t i = 0; i < l.tensors.size(); ++i) {
    if (!is_float32(l.tensors[i]))
      throw py::type_error(label(l, i) + " has dtype " + dtype_str(l.tensors[i]) + "; it must be float32");
    check_layout(l.tensors[i], label(l, i), written);
  }
}

void check_grad_list(const ArrayList& l) {
  for (size_t i = 0; i < l.tensors.size(); ++i) {
    grad_type_of(l.tensors[i], label(l, i));
    check_layout(l.tensors[i], label(l, i), false);
  }
}

void check_matches(const ArrayList& ref, const ArrayList& other) {
  if (other.tensors.size() != ref.tensors.size())
    throw py::value_error(other.name + " has " + std::to_string(other.tensors.size()) + " arrays but " + ref.name +
                          " has " + std::to_string(ref.tensors.size()));
  for (size_t i = 0; i < ref.tensors.size(); ++i) {
    const std::vector<int64_t> a = shape_of(ref.tensors[i]), b = shape_of(other.tensors[i]);
    if (a != b)
      throw py::value_error(label(other, i) + " has shape " + shape_str(b) + " but " + label(ref, i) + " has shape " +
                            shape_str(a));
  }
}

// No array that is written may share memory with any other array of the call: one tensor
// updated twice, or a gradient read after part of it was overwritten, corrupts the result.
// (All tensors of a call are on one device, place(), so their addresses are comparable.)
void check_no_overlap(const std::vector<std::pair<const ArrayList*, bool>>& lists) {
  std::vector<msaccum::ByteRange> ranges;
  std::vector<std::string> labels;
  for (const auto& [list, written] : lists) {
    for (size_t i = 0; i < list->tensors.size(); ++i) {
      const Tensor& t = list->tensors[i];
      const auto begin = reinterpret_cast<uintptr_t>(data_of(t));
      const auto bytes = static_cast<uintptr_t>(numel_of(t)) * itemsize_of(t);
      ranges.push_back({begin, begin + bytes, written, static_cast<int>(labels.size())});
      labels.push_back(label(*list, i));
    }
  }
  const auto [first, second] = msaccum::find_overlap(std::move(ranges));
  if (first >= 0)
    throw py::value_error(labels[first] + " shares memory with " + labels[second] +
                          "; arrays that are updated in place must not overlap any other argument");
}

// A failed CUDA call of the host-argument launchers, as a Python RuntimeError.
void check_cuda(int rc, const char* op) {
#ifdef MSACCUM_WITH_CUDA
  if (rc != 0)
    throw std::runtime_error(std::string("mindspore_accum: CUDA error in ") + op + ": " +
                             msaccum::cuda::error_string(rc) + " (" + std::to_string(rc) + ")");
#else
  (void)rc;
  (void)op;
#endif
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
                const py::object& overwrite_obj, const py::object& stream) {
  ArrayList acc = take_list(acc_obj, "acc", false);
  ArrayList grad = take_list(grad_obj, "grad", false);
  const float scale = to_float(scale_obj, "scale");
  const bool overwrite = to_bool(overwrite_obj, "overwrite");
  const Placement where = place({&acc, &grad}, stream);
  check_matches(acc, grad);
  check_float32_list(acc, true);
  check_grad_list(grad);
  check_no_overlap({{&acc, true}, {&grad, false}});

  std::vector<AccumulateTensor> tensors(acc.tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    tensors[i] = {static_cast<float*>(data_of(acc.tensors[i])), data_of(grad.tensors[i]),
                  grad_type_of(grad.tensors[i], label(grad, i)), numel_of(acc.tensors[i])};
  }
  int rc = 0;
  {
    py::gil_scoped_release release;
    if (where.device.type == msaccum::dlpack::kDLCUDA) {
#ifdef MSACCUM_WITH_CUDA
      rc = msaccum::cuda::accumulate_host(tensors.data(), static_cast<int>(tensors.size()), scale, overwrite,
                                          where.device.id, where.stream);
#endif
    } else {
      msaccum::cpu::accumulate(tensors, scale, overwrite);
    }
  }
  check_cuda(rc, "accumulate");
}

float* float_data(ArrayList& l, size_t i) { return static_cast<float*>(data_of(l.tensors[i])); }

// The fields every update tensor has (kernel_api.h MomentumTensor, AdamWTensor), for tensor i of
// already checked lists: param, acc and grad (null when the list is None), the gradient type
// (float32 when absent), the size and the weight decay.
template <typename Tensor>
void fill_update_tensor(Tensor& t, size_t i, ArrayList& param, ArrayList& acc, const ArrayList& grad,
                        float weight_decay) {
  t.param = float_data(param, i);
  t.acc = acc.present ? float_data(acc, i) : nullptr;
  t.grad = grad.present ? data_of(grad.tensors[i]) : nullptr;
  t.grad_type = grad.present ? grad_type_of(grad.tensors[i], label(grad, i)) : GradType::kFloat32;
  t.numel = numel_of(param.tensors[i]);
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
                    const py::object& grad_scale_obj, const py::object& weight_decay_obj, bool nesterov,
                    const py::object& stream) {
  ArrayList param = take_list(param_obj, "param", false);
  ArrayList moment = take_list(moment_obj, "moment", false);
  ArrayList acc = take_list(acc_obj, "acc", true);
  ArrayList grad = take_list(grad_obj, "grad", true);
  const MomentumScalars scalars{to_float(lr_obj, "lr"), to_float(momentum_obj, "momentum"),
                                to_float(grad_scale_obj, "grad_scale"), nesterov};
  const size_t n = param.tensors.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", false);
  const Placement where = place({&param, &moment, &acc, &grad}, stream);

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
  int rc = 0;
  {
    py::gil_scoped_release release;
    if (where.device.type == msaccum::dlpack::kDLCUDA) {
#ifdef MSACCUM_WITH_CUDA
      rc = msaccum::cuda::momentum_update_host(tensors.data(), static_cast<int>(n), scalars, where.device.id,
                                               where.stream);
#endif
    } else {
      msaccum::cpu::momentum_update(tensors, scalars);
    }
  }
  check_cuda(rc, "momentum_update");
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
                 const py::object& bias_correction_obj, const py::object& stream) {
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
  const size_t n = param.tensors.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", true);
  const Placement where = place({&param, &exp_avg, &exp_avg_sq, &acc, &grad}, stream);

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
  int rc = 0;
  {
    py::gil_scoped_release release;
    if (where.device.type == msaccum::dlpack::kDLCUDA) {
#ifdef MSACCUM_WITH_CUDA
      rc = msaccum::cuda::adamw_update_host(tensors.data(), static_cast<int>(n), scalars, where.device.id,
                                            where.stream);
#endif
    } else {
      msaccum::cpu::adamw_update(tensors, scalars);
    }
  }
  check_cuda(rc, "adamw_update");
}

// LAMB (accum_math.h): the checks of adamw_update (bias correction always on); returns the
// per-tensor trust ratios r.
std::vector<float> lamb_update(const py::object& param_obj, const py::object& exp_avg_obj,
                               const py::object& exp_avg_sq_obj, const py::object& acc_obj,
                               const py::object& grad_obj, const py::object& lr_obj, const py::object& beta1_obj,
                               const py::object& beta2_obj, const py::object& eps_obj,
                               const py::object& weight_decay_obj, const py::object& step_obj,
                               const py::object& grad_scale_obj, const py::object& stream) {
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
  const size_t n = param.tensors.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", true);

  // CPU arrays (NumPy or DLPack): on CUDA, LAMB runs through the AOT op only (no _C launcher yet).
  place({&param, &exp_avg, &exp_avg_sq, &acc, &grad}, stream, false);

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
                               const py::object& lars_obj, const py::object& stream) {
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
  const size_t n = param.tensors.size();
  const std::vector<float> weight_decay = weight_decay_list(weight_decay_obj, n, "param", true);
  const std::vector<float> flags = lars_flags(lars_obj, n);
  // CPU arrays (NumPy or DLPack): on CUDA, LARS runs through the AOT op only (no _C launcher yet).
  place({&param, &moment, &acc, &grad}, stream, false);

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

double sum_of_squares(const py::object& tensors_obj, const py::object& stream) {
  ArrayList tensors = take_list(tensors_obj, "tensors", false);
  const Placement where = place({&tensors}, stream);
  check_grad_list(tensors);
  std::vector<msaccum::SquaresTensor> views(tensors.tensors.size());
  for (size_t i = 0; i < views.size(); ++i)
    views[i] = {data_of(tensors.tensors[i]), grad_type_of(tensors.tensors[i], label(tensors, i)),
                numel_of(tensors.tensors[i])};
  int rc = 0;
  double result = 0.0;
  {
    py::gil_scoped_release release;
    if (where.device.type == msaccum::dlpack::kDLCUDA) {
#ifdef MSACCUM_WITH_CUDA
      rc = msaccum::cuda::sum_of_squares_host(views.data(), static_cast<int>(views.size()), &result, where.device.id,
                                              where.stream);
#endif
    } else {
      result = msaccum::cpu::sum_of_squares(views);
    }
  }
  check_cuda(rc, "sum_of_squares");
  return result;
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
  place({&a, &b}, py::none(), false);
  check_matches(a, b);
  check_float32_list(a, true);
  check_float32_list(b, false);
  check_no_overlap({{&a, true}, {&b, false}});
  std::vector<float*> pa;
  std::vector<const float*> pb;
  std::vector<int64_t> numel;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    pa.push_back(static_cast<float*>(data_of(a.tensors[i])));
    pb.push_back(static_cast<const float*>(data_of(b.tensors[i])));
    numel.push_back(numel_of(a.tensors[i]));
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
        py::arg("overwrite") = false, py::arg("stream") = py::none(),
        "acc[i] += scale * grad[i] for every i, in place, in one multi-threaded call; with overwrite=True "
        "acc[i] = scale * grad[i], the accumulators' previous content never read. Lists of NumPy arrays or of "
        "DLPack arrays on one device (CPU, or CUDA: launched on `stream`, default the legacy default stream).");
  m.def("momentum_update", &momentum_update, py::arg("param"), py::arg("moment"), py::arg("acc"), py::arg("grad"),
        py::kw_only(), py::arg("lr"), py::arg("momentum"), py::arg("grad_scale"), py::arg("weight_decay") = 0.0,
        py::arg("nesterov") = false, py::arg("stream") = py::none(),
        "Fused end of an accumulation window: momentum update of param from (acc + grad) * grad_scale, then acc = 0.");
  m.def("adamw_update", &adamw_update, py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("acc"),
        py::arg("grad"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), py::arg("grad_scale"), py::arg("bias_correction"), py::arg("stream") = py::none(),
        "Fused end of an accumulation window: AdamW update (decoupled weight decay) of param from "
        "(acc + grad) * grad_scale, then acc = 0; bias corrections 1 - beta**step when bias_correction.");
  m.def("lamb_update", &lamb_update, py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("acc"),
        py::arg("grad"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), py::arg("grad_scale"), py::arg("stream") = py::none(),
        "Fused end of an accumulation window: LAMB update (bias-corrected moments, layer-wise trust ratio "
        "||w|| / ||u||) of param from (acc + grad) * grad_scale, then acc = 0, in two passes. Returns the ratios.");
  m.def("lars_update", &lars_update, py::arg("param"), py::arg("moment"), py::arg("acc"), py::arg("grad"),
        py::kw_only(), py::arg("lr"), py::arg("momentum"), py::arg("grad_scale"), py::arg("weight_decay") = 0.0,
        py::arg("coefficient") = 0.001, py::arg("epsilon") = 1e-5, py::arg("lars") = true,
        py::arg("stream") = py::none(),
        "Fused end of an accumulation window: LARS (layer-wise trust ratio) around momentum SGD, of param from "
        "(acc + grad) * grad_scale, then acc = 0, in two passes. Returns the trust ratios (1 where lars is False).");
  // The window-end kernels are updates; their 0.2 names stay as aliases of the same functions
  // for one release (deprecated).
  m.attr("momentum_flush") = m.attr("momentum_update");
  m.attr("adamw_flush") = m.attr("adamw_update");
  m.def("sum_of_squares", &sum_of_squares, py::arg("tensors"), py::kw_only(), py::arg("stream") = py::none(),
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
