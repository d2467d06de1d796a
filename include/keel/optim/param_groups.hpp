#pragma once
// keel::optim::ParamGroups: parameters selected by name (and shape) into param groups with
// hyper-parameters of their own, PyTorch's `optimizer(param_groups)`. The common case, no
// weight decay for biases and normalization weights:
//
//   keel::optim::ParamGroups({keel::optim::ParamGroup("no_decay", keel::optim::bias_or_norm).set("weight_decay", 0.0)})
//
// passed to the Trainer's constructor beside the optimizer's options. A parameter goes to the
// first group whose selector takes it; the parameters no group takes form the group "default"
// (first, with the optimizer's options as given). A group's settings override the options by
// the names the optimizer saves them under (keel-ckpt info lists them: lr, weight_decay,
// momentum, betas...). Each group is saved under its name, and a checkpoint's groups are
// matched to this run's by name.

#include <keel/error.hpp>

#include <torch/types.h>

#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace keel::optim {

/// Takes a parameter by its name in the module ("block.0.norm.weight") and its tensor.
using ParamSelector = std::function<bool(const std::string& name, const torch::Tensor& param)>;

/// Biases and every parameter with at most one dimension: the weights of normalization layers
/// (BatchNorm, LayerNorm, GroupNorm...), which weight decay should not pull towards zero
/// (timm's and most transformer recipes' rule).
inline bool bias_or_norm(const std::string& name, const torch::Tensor& param) {
  const std::string bias = ".bias";
  const bool is_bias =
      name == "bias" || (name.size() > bias.size() && name.compare(name.size() - bias.size(), bias.size(), bias) == 0);
  return is_bias || param.dim() <= 1;
}

/// Parameters whose name contains `text` (e.g. "embedding", "head.").
inline ParamSelector name_contains(std::string text) {
  return [text = std::move(text)](const std::string& name, const torch::Tensor&) {
    return name.find(text) != std::string::npos;
  };
}

/// One param group: a name (saved in the checkpoint), a selector, and hyper-parameter values.
class ParamGroup {
 public:
  ParamGroup(std::string name, ParamSelector selects) : name_(std::move(name)), selects_(std::move(selects)) {
    if (name_.empty() || name_ == "default")
      throw ConfigError("keel::optim::ParamGroup: the name '" + name_ +
                        "' is reserved (\"default\" holds the parameters no group takes); choose another");
    if (!selects_) throw ConfigError("keel::optim::ParamGroup '" + name_ + "': the selector is empty");
  }
  /// This group's value of a hyper-parameter, by the optimizer's name for it ("weight_decay", "lr").
  ParamGroup& set(std::string hyper_parameter, double value) {
    overrides_.emplace_back(std::move(hyper_parameter), value);
    return *this;
  }

  const std::string& name() const noexcept { return name_; }
  bool selects(const std::string& parameter, const torch::Tensor& tensor) const { return selects_(parameter, tensor); }
  const std::vector<std::pair<std::string, double>>& overrides() const noexcept { return overrides_; }

 private:
  std::string name_;
  ParamSelector selects_;
  std::vector<std::pair<std::string, double>> overrides_;
};

/// The groups besides "default", in the order they select parameters.
class ParamGroups {
 public:
  ParamGroups() = default;
  ParamGroups(std::initializer_list<ParamGroup> groups) : groups_(groups) {
    for (std::size_t i = 0; i < groups_.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (groups_[i].name() == groups_[j].name())
          throw ConfigError("keel::optim::ParamGroups: two groups are named '" + groups_[i].name() + "'");
  }
  const std::vector<ParamGroup>& groups() const noexcept { return groups_; }
  bool empty() const noexcept { return groups_.empty(); }

 private:
  std::vector<ParamGroup> groups_;
};

}  // namespace keel::optim
