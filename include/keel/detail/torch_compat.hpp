#pragma once
// Where the LibTorch versions keel supports (1.13 and 2.x) differ in API, one named shim each,
// decided from <torch/version.h>. keel code outside this header never tests the version.

#include <torch/optim/optimizer.h>
#include <torch/version.h>

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
/// printed as a string in 1.x, by the TensorImpl* itself in 2.x. keel saves optimizer state by
/// parameter name either way; this is only how to find a parameter's entry in the live map.
#if TORCH_VERSION_MAJOR >= 2
using OptimizerStateKey = void*;
inline OptimizerStateKey optimizer_state_key(const torch::Tensor& param) {
  return param.unsafeGetTensorImpl();
}
#else
using OptimizerStateKey = std::string;
inline OptimizerStateKey optimizer_state_key(const torch::Tensor& param) {
  std::ostringstream key;  // what c10::guts::to_string did, and 1.x's optimizers use
  key << param.unsafeGetTensorImpl();
  return key.str();
}
#endif
static_assert(
    std::is_same_v<OptimizerStateKey,
                   typename std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type>,
    "keel: this LibTorch keys optimizer state differently; update keel/detail/torch_compat.hpp");

}  // namespace keel::detail
