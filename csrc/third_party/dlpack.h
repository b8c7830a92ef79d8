// The DLPack structures mindspore_accum reads (https://dmlc.github.io/dlpack/latest/, dlpack.h of
// DLPack 1.0; the 1.x layout is the same, later minors only add dtype codes and device types).
// Only the subset the frontend consumes, written here so the build needs no extra download.
// Plain C-compatible declarations; the field order and types are the ABI and must not change.
#pragma once

#include <cstdint>

namespace msaccum {
namespace dlpack {

// The DLPack version this consumer understands (passed as max_version to __dlpack__).
constexpr uint32_t kMajorVersion = 1;
constexpr uint32_t kMinorVersion = 0;

// DLDeviceType (an int-sized C enum in dlpack.h).
enum DeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
};

struct DLDevice {
  int32_t device_type;  // DeviceType
  int32_t device_id;
};

// DLDataTypeCode
enum DataTypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLOpaqueHandle = 3,
  kDLBfloat = 4,
  kDLComplex = 5,
  kDLBool = 6,
};

struct DLDataType {
  uint8_t code;  // DataTypeCode
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;  // the element at index 0 is at (char*)data + byte_offset
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;    // ndim values
  int64_t* strides;  // ndim values in elements, or null: compact row-major
  uint64_t byte_offset;
};

// The legacy (unversioned) capsule "dltensor".
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

constexpr uint64_t kFlagReadOnly = 1ull << 0;  // DLPACK_FLAG_BITMASK_READ_ONLY
constexpr uint64_t kFlagIsCopied = 1ull << 1;  // DLPACK_FLAG_BITMASK_IS_COPIED

// The versioned capsule "dltensor_versioned" (DLPack >= 1.0).
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};

}  // namespace dlpack
}  // namespace msaccum
