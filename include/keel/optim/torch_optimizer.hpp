#pragma once
// The common half of keel's optimizer policies: a LibTorch optimizer whose state is saved in
// keel's format, matched to parameters by their names in the module (LibTorch keys its state
// by TensorImpl address, which means nothing in another process).
//
// Each policy supplies a Traits type: the LibTorch optimizer, options and per-parameter state
// types, the hyper-parameters of a param group as named doubles, and the named tensors (and
// step count) of a parameter's state.

#include <keel/detail/torch_compat.hpp>
#include <keel/fingerprint.hpp>
#include <keel/serialize_tensor.hpp>

#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>
#include <torch/optim/optimizer.h>
#include <torch/ordered_dict.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace keel::optim {

/// The saved state of one parameter: its step count (0 where the optimizer keeps none) and
/// its named state tensors (momentum buffer, Adam moments...); undefined tensors are kept.
struct ParamState {
  std::string name;
  std::int64_t step = 0;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("name", name), cereal::make_nvp("step", step),
            cereal::make_nvp("tensors", tensors));
  }
};

/// The saved state of one param group: hyper-parameters (the scheduler changes `lr`) and the
/// names of its parameters.
struct GroupState {
  std::vector<std::pair<std::string, double>> hyper_parameters;
  std::vector<std::string> params;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("hyper_parameters", hyper_parameters),
            cereal::make_nvp("params", params));
  }
};

/// The whole saved state of an optimizer.
struct OptimizerState {
  std::vector<GroupState> groups;
  std::vector<ParamState> params;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("groups", groups), cereal::make_nvp("params", params));
  }
};

using NamedParameters = torch::OrderedDict<std::string, torch::Tensor>;

/// The key of `param`'s entry in a LibTorch optimizer's state map, on every LibTorch version
/// (a string in 1.x, a TensorImpl pointer from 2.x on): for an optimizer of one's own.
inline detail::OptimizerStateKey state_key(const torch::Tensor& param) { return detail::optimizer_state_key(param); }

template <class Traits>
class TorchOptimizer {
 public:
  using Options = typename Traits::Options;
  using TorchType = typename Traits::TorchType;
  /// Its data is saved through state() (the section "optimizer"); a policy derived from it
  /// declares what it adds with BOOST_HANA_DEFINE_STRUCT (the section "optimizer.members").
  using torch_optimizer_base = TorchOptimizer;

  TorchOptimizer(const NamedParameters& params, Options options)
      : options_(std::move(options)), params_(params) {
    std::vector<torch::Tensor> tensors;
    for (const auto& item : params_) {
      tensors.push_back(item.value());
      names_.emplace(item.value().unsafeGetTensorImpl(), item.key());
    }
    optimizer_ = std::make_unique<TorchType>(std::move(tensors), options_);
  }

  /// One optimizer step on the accumulated gradients.
  void step() { optimizer_->step(); }

  /// Zeroes every gradient in place, allocating zero gradients for parameters that have none
  /// yet. The Trainer calls it before the first micro-batch of a fit and after every step, so
  /// backward always accumulates into zeroed tensors: a freshly resumed process (no gradients
  /// at all) and an uninterrupted one (zeroed gradients) then take the very same path.
  void zero_grad() {
    torch::NoGradGuard no_grad;
    for (auto& item : params_) {
      auto& param = item.value();
      if (!param.requires_grad()) continue;
      auto& grad = param.mutable_grad();
      if (grad.defined()) {
        grad.detach_();
        grad.zero_();
      } else {
        grad = torch::zeros_like(param);
      }
    }
  }

  std::size_t group_count() const { return optimizer_->param_groups().size(); }
  double lr(std::size_t group = 0) const {
    return optimizer_->param_groups().at(group).options().get_lr();
  }
  void set_lr(std::size_t group, double lr) {
    optimizer_->param_groups().at(group).options().set_lr(lr);
  }

  torch::optim::Optimizer& torch_optimizer() noexcept { return *optimizer_; }
  const Options& options() const noexcept { return options_; }
  const NamedParameters& named_parameters() const noexcept { return params_; }

  /// The state in keel's form, parameters in module order.
  OptimizerState state() const {
    OptimizerState out;
    const auto& groups = optimizer_->param_groups();
    for (const auto& group : groups) {
      GroupState g;
      g.hyper_parameters = Traits::hyper_parameters(static_cast<const Options&>(group.options()));
      for (const auto& p : group.params()) g.params.push_back(name_of(p));
      out.groups.push_back(std::move(g));
    }
    const auto& torch_state = optimizer_->state();
    for (const auto& item : params_) {
      auto found = torch_state.find(key_of(item.value()));
      if (found == torch_state.end()) continue;  // no step has touched this parameter yet
      ParamState p;
      p.name = item.key();
      Traits::capture(static_cast<const typename Traits::ParamState&>(*found->second), p);
      out.params.push_back(std::move(p));
    }
    return out;
  }

  /// Every reason `state` cannot be applied to this optimizer; empty when it can.
  std::vector<std::string> check(const OptimizerState& state) const {
    std::vector<std::string> problems;
    const auto& groups = optimizer_->param_groups();
    if (state.groups.size() != groups.size()) {
      problems.push_back("optimizer has " + std::to_string(state.groups.size()) +
                         " param groups in the checkpoint but " + std::to_string(groups.size()) +
                         " in this run");
    } else {
      for (std::size_t g = 0; g < groups.size(); ++g) {
        const auto expected = Traits::hyper_parameters(static_cast<const Options&>(groups[g].options()));
        if (!same_names(expected, state.groups[g].hyper_parameters))
          problems.push_back("optimizer param group " + std::to_string(g) +
                             " has different hyper-parameter names in the checkpoint");
        std::vector<std::string> names;
        for (const auto& p : groups[g].params()) names.push_back(name_of(p));
        if (names != state.groups[g].params)
          problems.push_back("optimizer param group " + std::to_string(g) +
                             " holds different parameters in the checkpoint");
      }
    }
    std::set<std::string> seen;
    for (const auto& p : state.params) {
      if (!seen.insert(p.name).second) {
        problems.push_back("optimizer state for parameter '" + p.name + "' appears twice");
        continue;
      }
      if (!params_.contains(p.name)) {
        problems.push_back("optimizer state for unexpected parameter '" + p.name + "'");
        continue;
      }
      const torch::Tensor& param = params_[p.name];
      std::vector<std::string> expected = Traits::tensor_names();
      std::vector<std::string> got;
      for (const auto& [tensor_name, tensor] : p.tensors) {
        got.push_back(tensor_name);
        if (!tensor.defined()) continue;
        if (tensor.sizes() != param.sizes())
          problems.push_back("optimizer state '" + tensor_name + "' of parameter '" + p.name +
                             "' has shape " + shape_string(tensor.sizes()) +
                             " in the checkpoint but the parameter has shape " +
                             shape_string(param.sizes()));
        else if (tensor.scalar_type() != param.scalar_type())
          problems.push_back("optimizer state '" + tensor_name + "' of parameter '" + p.name +
                             "' has dtype " + dtype_or_raw(tensor.scalar_type()) +
                             " in the checkpoint but the parameter has dtype " +
                             dtype_or_raw(param.scalar_type()));
      }
      if (got != expected)
        problems.push_back("optimizer state of parameter '" + p.name +
                           "' does not have the tensors " + Traits::keel_name + " keeps");
      if (p.step < 0)
        problems.push_back("optimizer step count of parameter '" + p.name + "' is negative (" +
                           std::to_string(p.step) + ")");
    }
    return problems;
  }

  /// Replaces the whole optimizer state; call only after check() found no problem.
  void apply(const OptimizerState& state) {
    auto& groups = optimizer_->param_groups();
    for (std::size_t g = 0; g < groups.size(); ++g)
      Traits::set_hyper_parameters(static_cast<Options&>(groups[g].options()),
                                   state.groups[g].hyper_parameters);
    auto& torch_state = optimizer_->state();
    torch_state.clear();
    for (const auto& p : state.params) {
      const torch::Tensor& param = params_[p.name];
      ParamState on_device = p;
      for (auto& item : on_device.tensors)
        if (item.second.defined()) item.second = item.second.to(param.device());
      torch_state[key_of(param)] = Traits::restore(on_device);
    }
  }

  /// A fork changed the optimizer's configuration: every param group takes the configured
  /// hyper-parameters again, except the learning rate, which the scheduler sets.
  void reconfigure() {
    for (auto& group : optimizer_->param_groups()) {
      const double lr = group.options().get_lr();
      Traits::set_hyper_parameters(static_cast<Options&>(group.options()), Traits::hyper_parameters(options_));
      group.options().set_lr(lr);
    }
  }
  /// The learning rate the optimizer was configured with (the schedule's base).
  double configured_lr() const { return options_.lr(); }

  /// Configuration that must match for a resume: the type and the initial hyper-parameters.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", Traits::keel_name);
    for (const auto& [name, value] : Traits::hyper_parameters(options_))
      fingerprint.add(prefix + name, value);
  }

 private:
  static detail::OptimizerStateKey key_of(const torch::Tensor& param) {
    return detail::optimizer_state_key(param);
  }
  std::string name_of(const torch::Tensor& param) const {
    auto found = names_.find(param.unsafeGetTensorImpl());
    return found == names_.end() ? std::string("<unnamed>") : found->second;
  }
  static bool same_names(const std::vector<std::pair<std::string, double>>& a,
                         const std::vector<std::pair<std::string, double>>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i].first != b[i].first) return false;
    return true;
  }
  static std::string dtype_or_raw(torch::ScalarType type) {
    const char* name = dtype_name(type);
    return name ? name : c10::toString(type);
  }

  Options options_;
  NamedParameters params_;
  std::unordered_map<const void*, std::string> names_;  // TensorImpl -> name in the module
  std::unique_ptr<TorchType> optimizer_;
};

namespace detail {
/// Looks up a hyper-parameter by name in a saved list (check() guarantees it is there).
inline double hyper(const std::vector<std::pair<std::string, double>>& values, const char* name) {
  for (const auto& [key, value] : values)
    if (key == name) return value;
  throw std::runtime_error(std::string("keel: hyper-parameter '") + name + "' missing");
}
}  // namespace detail

}  // namespace keel::optim
