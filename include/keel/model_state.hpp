#pragma once
// The model's saved state: every parameter and every buffer
// (BatchNorm running statistics and counters included), by its name in the module.

#include <keel/serialize_tensor.hpp>

#include <cereal/types/vector.hpp>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>

#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace keel {

namespace detail {
template <class M, class = void>
struct module_impl {
  using type = M;
};
template <class M>
struct module_impl<M, std::void_t<typename M::ContainedType>> {
  using type = typename M::ContainedType;  // a TORCH_MODULE holder: train its Impl
};
}  // namespace detail

/// The torch::nn::Module subclass behind a model policy argument.
template <class M>
using module_impl_t = typename detail::module_impl<M>::type;

struct NamedTensor {
  std::string name;
  torch::Tensor tensor;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("name", name), cereal::make_nvp("tensor", tensor));
  }
};

struct ModelState {
  std::vector<NamedTensor> parameters;
  std::vector<NamedTensor> buffers;

  /// References the module's tensors (no copy).
  static ModelState capture(const torch::nn::Module& module) {
    ModelState state;
    for (const auto& item : module.named_parameters(true)) state.parameters.push_back({item.key(), item.value()});
    for (const auto& item : module.named_buffers(true)) state.buffers.push_back({item.key(), item.value()});
    return state;
  }

  /// How the saved tensors line up with a module's: those that fit it (same name, shape and
  /// dtype) and one line for every difference (missing, unexpected, wrong shape or dtype).
  struct Fit {
    std::vector<const NamedTensor*> parameters;
    std::vector<const NamedTensor*> buffers;
    std::vector<std::string> differences;
  };
  Fit fit(const torch::nn::Module& module) const {
    Fit out;
    compare("parameter", parameters, module.named_parameters(true), out.differences, out.parameters);
    compare("buffer", buffers, module.named_buffers(true), out.differences, out.buffers);
    return out;
  }

  /// Every difference from the module: missing, unexpected, wrong shape or dtype.
  std::vector<std::string> check(const torch::nn::Module& module) const { return fit(module).differences; }

  /// Copies the values into the module (onto its device); call only after check() passed.
  /// Tensors a load left in the file are read straight into the module's (ckpt::copy_into).
  void apply(torch::nn::Module& module) const {
    torch::NoGradGuard no_grad;
    auto params = module.named_parameters(true);
    for (const auto& item : parameters) ckpt::copy_into(params[item.name], item.tensor);
    auto bufs = module.named_buffers(true);
    for (const auto& item : buffers) ckpt::copy_into(bufs[item.name], item.tensor);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("parameters", parameters), cereal::make_nvp("buffers", buffers));
  }

 private:
  static void compare(const std::string& kind, const std::vector<NamedTensor>& saved,
                      const torch::OrderedDict<std::string, torch::Tensor>& live,
                      std::vector<std::string>& problems, std::vector<const NamedTensor*>& fits) {
    std::set<std::string> seen;
    for (const auto& item : saved) {
      if (!seen.insert(item.name).second) {
        problems.push_back("model " + kind + " '" + item.name + "' appears twice in the checkpoint");
        continue;
      }
      const torch::Tensor* target = live.find(item.name);
      if (!target) {
        problems.push_back("unexpected model " + kind + " '" + item.name +
                           "' in the checkpoint (this model has no such " + kind + ")");
        continue;
      }
      if (!item.tensor.defined() || !target->defined()) {
        if (item.tensor.defined() != target->defined())
          problems.push_back("model " + kind + " '" + item.name + "' is defined in only one of checkpoint and model");
        continue;
      }
      if (item.tensor.sizes() != target->sizes())
        problems.push_back("model " + kind + " '" + item.name + "' has shape " +
                           shape_string(item.tensor.sizes()) + " in the checkpoint but " +
                           shape_string(target->sizes()) + " in the model");
      else if (item.tensor.scalar_type() != target->scalar_type())
        problems.push_back("model " + kind + " '" + item.name + "' has dtype " +
                           dtype_name(item.tensor.scalar_type()) + " in the checkpoint but " +
                           (dtype_name(target->scalar_type()) ? dtype_name(target->scalar_type())
                                                              : c10::toString(target->scalar_type())) +
                           " in the model");
      else
        fits.push_back(&item);
    }
    for (const auto& item : live)
      if (!seen.count(item.key()))
        problems.push_back("model " + kind + " '" + item.key() + "' is missing from the checkpoint");
  }
};

}  // namespace keel
