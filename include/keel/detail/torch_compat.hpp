#pragma once
// Where the LibTorch versions keel supports (1.13 and 2.x) differ in API: one named shim per
// difference, all here. keel code outside this header never tests the version.

#include <ATen/autocast_mode.h>
#include <torch/optim/optimizer.h>
#include <torch/version.h>

#include <cstdio>
#include <locale>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

/// LibTorch's version as one number, 2.6.0 -> 20600.
#define KEEL_TORCH_VERSION \
  (TORCH_VERSION_MAJOR * 10000 + TORCH_VERSION_MINOR * 100 + TORCH_VERSION_PATCH)

#if KEEL_TORCH_VERSION < 11300
#error "keel needs LibTorch 1.13 or newer"
#endif

namespace keel::detail {

/// torch::optim::Optimizer::state() is keyed by the parameter's TensorImpl: by its address
/// printed as a string in 1.13 and early 2.x releases, by the TensorImpl* itself in later ones
/// (2.6 among them). The key type is read off the map itself rather than decided from the
/// version number, so no release in between can be misjudged. keel saves optimizer state by
/// parameter name either way; this is only how to find a parameter's entry in the live map.
using OptimizerStateKey =
    typename std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;
static_assert(std::is_same_v<OptimizerStateKey, std::string> || std::is_same_v<OptimizerStateKey, void*>,
              "keel: this LibTorch keys optimizer state by neither a string nor a TensorImpl pointer; "
              "teach keel/detail/torch_compat.hpp the new key");

template <class Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& param) {
  if constexpr (std::is_same_v<Key, std::string>) {
    // What LibTorch's own optimizers use, c10::guts::to_string(impl): the address as an
    // ostringstream in the global locale prints it. In the classic locale that is "0x" and
    // lowercase hex, which is also what glibc's %p prints for a pointer that is not null:
    // snprintf then, not a stream (a save looks up every parameter's state, and a stream costs
    // a locale each time). Another locale may group the digits: the stream, as LibTorch's.
    const void* impl = param.unsafeGetTensorImpl();
    if (std::locale() == std::locale::classic()) {
      char key[2 + 2 * sizeof(void*) + 1];
      const int length = std::snprintf(key, sizeof key, "%p", impl);
      return std::string(key, static_cast<std::size_t>(length));
    }
    std::ostringstream key;
    key << impl;
    return key.str();
  } else {
    return param.unsafeGetTensorImpl();
  }
}

/// Autocast's per-device switches: one function per device in 1.13 (set_cpu_enabled for the
/// CPU, set_enabled for CUDA), one taking the device type from 2.4 on (the old names remain,
/// deprecated).
inline bool autocast_enabled(c10::DeviceType device) {
#if KEEL_TORCH_VERSION >= 20400
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}
inline void set_autocast_enabled(c10::DeviceType device, bool enabled) {
#if KEEL_TORCH_VERSION >= 20400
  at::autocast::set_autocast_enabled(device, enabled);
#else
  if (device == c10::DeviceType::CPU) {
    at::autocast::set_cpu_enabled(enabled);
  } else {
    at::autocast::set_enabled(enabled);
  }
#endif
}
inline c10::ScalarType autocast_dtype(c10::DeviceType device) {
#if KEEL_TORCH_VERSION >= 20400
  return at::autocast::get_autocast_dtype(device);
#else
  return device == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
#endif
}
inline void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype) {
#if KEEL_TORCH_VERSION >= 20400
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == c10::DeviceType::CPU) {
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}

}  // namespace keel::detail
