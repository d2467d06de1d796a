#pragma once
// cereal serialization of tensors: dtype name, shape, then the raw bytes in little-endian
// order (binary archives write them straight from the tensor's memory; text archives encode
// them in base64). Reading validates the shape before allocating anything.

#include <keel/checkpoint/bounded_archive.hpp>
#include <keel/checkpoint/deferred_tensor.hpp>
#include <keel/checkpoint/tensor_capture.hpp>
#include <keel/error.hpp>

#include <cereal/cereal.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <torch/types.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace keel {

/// Stable names for the dtypes keel stores; they appear in files and error messages.
inline const char* dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kInt64: return "int64";
    case torch::kInt32: return "int32";
    case torch::kInt16: return "int16";
    case torch::kInt8: return "int8";
    case torch::kUInt8: return "uint8";
    case torch::kBool: return "bool";
    default: return nullptr;
  }
}

inline bool dtype_from_name(const std::string& name, torch::ScalarType& out) {
  for (auto type : {torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16,
                    torch::kInt64, torch::kInt32, torch::kInt16, torch::kInt8, torch::kUInt8,
                    torch::kBool}) {
    if (name == dtype_name(type)) {
      out = type;
      return true;
    }
  }
  return false;
}

inline std::string shape_string(torch::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

/// Same dtype, shape and bytes (unlike torch::equal, -0.0 differs from 0.0 and NaN equals
/// an identical NaN): the equality that bitwise-exact resume promises.
inline bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // (an empty tensor's data may be null)
  const auto ca = a.detach().to(torch::kCPU).contiguous();
  const auto cb = b.detach().to(torch::kCPU).contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), static_cast<std::size_t>(ca.numel()) * ca.element_size()) == 0;
}

namespace detail {
template <std::size_t N>
struct uint_of_size;
template <> struct uint_of_size<1> { using type = std::uint8_t; };
template <> struct uint_of_size<2> { using type = std::uint16_t; };
template <> struct uint_of_size<4> { using type = std::uint32_t; };
template <> struct uint_of_size<8> { using type = std::uint64_t; };

/// Calls f with a pointer type whose size equals the element size, so that portable binary
/// archives swap bytes per element on big-endian hosts.
template <class F>
void with_element_pointer(std::size_t element_size, void* data, F&& f) {
  switch (element_size) {
    case 1: f(static_cast<std::uint8_t*>(data)); break;
    case 2: f(static_cast<std::uint16_t*>(data)); break;
    case 4: f(static_cast<std::uint32_t*>(data)); break;
    case 8: f(static_cast<std::uint64_t*>(data)); break;
    default: throw std::runtime_error("keel: unsupported element size " + std::to_string(element_size));
  }
}

/// Checked product of a shape; throws on negative or overflowing extents.
inline std::uint64_t checked_byte_count(const std::vector<std::int64_t>& shape,
                                        std::size_t element_size) {
  std::uint64_t count = element_size;
  for (auto extent : shape) {
    if (extent < 0)
      throw std::runtime_error("tensor shape " + shape_string(shape) + " has a negative extent");
    if (extent != 0 && count > std::numeric_limits<std::uint64_t>::max() / std::uint64_t(extent))
      throw std::runtime_error("tensor shape " + shape_string(shape) + " overflows 64 bits");
    count *= std::uint64_t(extent);
  }
  if (shape.size() > 64)
    throw std::runtime_error("tensor has " + std::to_string(shape.size()) + " dimensions (at most 64)");
  return count;
}
}  // namespace detail

}  // namespace keel

namespace cereal {
// In namespace cereal, like cereal's support for std types (found through the archive type).

template <class Archive>
void save(Archive& archive, const at::Tensor& tensor) {
  const bool defined = tensor.defined();
  archive(cereal::make_nvp("defined", defined));
  if (!defined) return;
  if (keel::ckpt::is_deferred(tensor))  // a load's placeholder never reached live state: a keel bug if it did
    throw std::logic_error("keel: a tensor still waiting to be read from a checkpoint cannot be saved");
  const char* dtype = keel::dtype_name(tensor.scalar_type());
  if (!dtype)
    throw std::runtime_error(std::string("keel: cannot save a tensor of dtype ") +
                             c10::toString(tensor.scalar_type()));
  std::vector<std::int64_t> shape(tensor.sizes().begin(), tensor.sizes().end());
  archive(cereal::make_nvp("dtype", std::string(dtype)), cereal::make_nvp("shape", shape));
  const std::size_t bytes = static_cast<std::size_t>(tensor.numel()) * tensor.element_size();
  if (auto* capture = keel::ckpt::capture_for(archive, bytes)) {  // a snapshot for a background write
    capture->capture(tensor);
    return;
  }
  // A contiguous CPU tensor is written from where it lies (most are: no new tensor for each);
  // another is copied to one first.
  const bool in_place = tensor.is_cpu() && tensor.is_contiguous();
  const at::Tensor cpu = in_place ? tensor : tensor.detach().to(at::kCPU).contiguous();
  if constexpr (cereal::traits::is_text_archive<Archive>::value) {
    char none = 0;  // an empty tensor's data may be null, which memcpy must not see
    archive.saveBinaryValue(bytes ? cpu.data_ptr() : &none, bytes, "data");
  } else {
    keel::detail::with_element_pointer(cpu.element_size(), cpu.data_ptr(), [&](auto* data) {
      archive(cereal::binary_data(data, bytes));
    });
  }
}

template <class Archive>
void load(Archive& archive, at::Tensor& tensor) {
  bool defined = false;
  archive(cereal::make_nvp("defined", defined));
  if (!defined) {
    tensor = at::Tensor();
    return;
  }
  std::string dtype;
  std::vector<std::int64_t> shape;
  archive(cereal::make_nvp("dtype", dtype), cereal::make_nvp("shape", shape));
  at::ScalarType type;
  if (!keel::dtype_from_name(dtype, type))
    throw std::runtime_error("unknown tensor dtype '" + dtype + "'");
  const std::size_t element_size = c10::elementSize(type);
  const std::uint64_t bytes = keel::detail::checked_byte_count(shape, element_size);
  if (bytes > (std::uint64_t(1) << 40))
    throw std::runtime_error("tensor shape " + keel::shape_string(shape) + " needs " +
                             std::to_string(bytes) + " bytes (over 1 TiB)");
  if constexpr (keel::ckpt::knows_remaining<Archive>::value) {
    if (bytes > archive.remaining())
      throw std::runtime_error("tensor shape " + keel::shape_string(shape) + " needs " + std::to_string(bytes) +
                               " bytes but only " + std::to_string(archive.remaining()) + " are left");
  }
  if constexpr (std::is_same_v<Archive, keel::ckpt::BoundedInputArchive>) {
    // Large tensors of a load stay in the file until applied (deferred_tensor.hpp). Not bool:
    // its bytes are checked here, before anything is applied.
    if (type != at::kBool && archive.defers(bytes)) {
      tensor = keel::ckpt::deferred_tensor(archive.deferral_source(), archive.position(), bytes, type, shape,
                                           archive.swaps_bytes());
      archive.skip(bytes);
      return;
    }
  }
  at::Tensor result = at::empty(shape, at::TensorOptions().dtype(type));
  if constexpr (cereal::traits::is_text_archive<Archive>::value) {
    char none = 0;
    archive.loadBinaryValue(bytes ? result.data_ptr() : &none, bytes, "data");
  } else {
    keel::detail::with_element_pointer(element_size, result.data_ptr(), [&](auto* data) {
      archive(cereal::binary_data(data, bytes));
    });
  }
  if (type == at::kBool && result.numel() > 0 && result.view(at::kByte).gt(1).any().item<bool>())
    throw std::runtime_error("a bool tensor of shape " + keel::shape_string(shape) + " holds bytes other than 0 and 1");
  tensor = std::move(result);
}

}  // namespace cereal
