#pragma once
// The common half of keel's optimizer policies: a LibTorch optimizer whose state is saved in
// keel's format, matched to parameters by their names in the module (LibTorch keys its state
// by TensorImpl address, which means nothing in another process).
//
// Each policy supplies a Traits type: the LibTorch optimizer, options and per-parameter state
// types, the hyper-parameters of a param group as named doubles, and the named tensors (and
// step count) of a parameter's state. Param groups (keel/optim/param_groups.hpp) are saved with
// their names and matched by name on load.

#include <keel/detail/torch_compat.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/optim/param_groups.hpp>
#include <keel/serialize_tensor.hpp>

#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>
#include <torch/optim/optimizer.h>
#include <torch/ordered_dict.h>

#include <algorithm>
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

/// The saved state of one param group: its name (ParamGroups; "default" for the parameters no
/// group takes; empty in files of keel 0.2 and before), hyper-parameters (the scheduler changes
/// `lr`) and the names of its parameters.
struct GroupState {
  std::string name;  // saved by OptimizerState (layout 2), after the groups
  std::vector<std::pair<std::string, double>> hyper_parameters;
  std::vector<std::string> params;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("hyper_parameters", hyper_parameters),
            cereal::make_nvp("params", params));
  }
};

/// The whole saved state of an optimizer. Layout 2 (keel 0.3) added the groups' names, written
/// after everything layout 1 holds; `layout` (not saved) is the layout being read.
struct OptimizerState {
  static constexpr std::uint32_t current_layout = 2;
  std::vector<GroupState> groups;
  std::vector<ParamState> params;
  std::uint32_t layout = current_layout;

  template <class Archive>
  void save(Archive& archive) const {
    archive(cereal::make_nvp("groups", groups), cereal::make_nvp("params", params));
    std::vector<std::string> names;
    for (const auto& g : groups) names.push_back(g.name);
    archive(cereal::make_nvp("group_names", names));
  }
  template <class Archive>
  void load(Archive& archive) {
    archive(cereal::make_nvp("groups", groups), cereal::make_nvp("params", params));
    if (layout < 2) return;  // unnamed groups, matched by position
    std::vector<std::string> names;
    archive(cereal::make_nvp("group_names", names));
    if (names.size() != groups.size())
      throw std::runtime_error("the optimizer state names " + std::to_string(names.size()) + " param groups but holds " +
                               std::to_string(groups.size()));
    for (std::size_t g = 0; g < groups.size(); ++g) groups[g].name = std::move(names[g]);
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

  /// One param group with `options`, or the groups of `groups` (each parameter in the first
  /// group that selects it; the others in "default", with `options` as given).
  TorchOptimizer(const NamedParameters& params, Options options, const ParamGroups& groups = {})
      : options_(std::move(options)), params_(params) {
    for (const auto& item : params_) names_.emplace(item.value().unsafeGetTensorImpl(), item.key());
    // Members of "default" (index 0) and of each group, in module order.
    std::vector<std::vector<torch::Tensor>> members(groups.groups().size() + 1);
    for (const auto& item : params_) {
      std::size_t index = 0;
      for (std::size_t g = 0; g < groups.groups().size() && index == 0; ++g)
        if (groups.groups()[g].selects(item.key(), item.value())) index = g + 1;
      members[index].push_back(item.value());
    }
    if (groups.empty()) {
      group_names_ = {"default"};
      configured_ = {Traits::hyper_parameters(options_)};
      optimizer_ = std::make_unique<TorchType>(std::move(members[0]), options_);
      return;
    }
    std::vector<torch::optim::OptimizerParamGroup> torch_groups;
    for (std::size_t index = 0; index < members.size(); ++index) {
      if (index == 0 && members[0].empty()) continue;  // every parameter is in a named group
      const std::string name = index == 0 ? "default" : groups.groups()[index - 1].name();
      if (members[index].empty())
        throw ConfigError("keel::optim::ParamGroup '" + name + "' selects no parameter of the model" +
                          (index > 1 ? " (an earlier group may have taken them: a parameter goes to the first that selects it)" : ""));
      auto values = Traits::hyper_parameters(options_);
      if (index > 0) override_values(values, groups.groups()[index - 1]);
      auto group_options = std::make_unique<Options>(options_);
      Traits::set_hyper_parameters(*group_options, values);
      group_names_.push_back(name);
      configured_.push_back(std::move(values));
      torch_groups.emplace_back(std::move(members[index]), std::move(group_options));
    }
    if constexpr (std::is_constructible_v<TorchType, std::vector<torch::optim::OptimizerParamGroup>, Options>) {
      optimizer_ = std::make_unique<TorchType>(std::move(torch_groups), options_);
    } else {
      throw ConfigError(std::string(Traits::keel_name) + " takes no param groups (its LibTorch optimizer has no "
                        "constructor from std::vector<torch::optim::OptimizerParamGroup>)");
    }
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
  /// The name of param group `group` ("default" without ParamGroups).
  const std::string& group_name(std::size_t group) const { return group_names_.at(group); }
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
    for (std::size_t index = 0; index < groups.size(); ++index) {
      const auto& group = groups[index];
      GroupState g;
      g.name = group_names_.at(index);
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
    const auto order = saved_group_order(state, problems);
    for (std::size_t g = 0; g < order.size(); ++g) {
      if (order[g] < 0) continue;
      const GroupState& saved = state.groups[static_cast<std::size_t>(order[g])];
      const std::string label = "optimizer param group '" + group_names_.at(g) + "'";
      const auto expected = Traits::hyper_parameters(static_cast<const Options&>(groups[g].options()));
      if (!same_names(expected, saved.hyper_parameters))
        problems.push_back(label + " has different hyper-parameter names in the checkpoint");
      std::vector<std::string> names;
      for (const auto& p : groups[g].params()) names.push_back(name_of(p));
      if (names != saved.params)
        problems.push_back(label + " holds different parameters in the checkpoint (the groups' selectors changed?)");
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
    std::vector<std::string> ignored;
    const auto order = saved_group_order(state, ignored);
    for (std::size_t g = 0; g < groups.size(); ++g)
      Traits::set_hyper_parameters(static_cast<Options&>(groups[g].options()),
                                   state.groups.at(static_cast<std::size_t>(order.at(g))).hyper_parameters);
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
    auto& groups = optimizer_->param_groups();
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const double lr = groups[g].options().get_lr();
      Traits::set_hyper_parameters(static_cast<Options&>(groups[g].options()), configured_.at(g));
      groups[g].options().set_lr(lr);
    }
  }
  /// The learning rate the optimizer was configured with (the schedule's base).
  double configured_lr() const { return options_.lr(); }
  /// Each param group's configured learning rate (a ParamGroup may set its own).
  std::vector<double> configured_lrs() const {
    std::vector<double> lrs;
    for (const auto& values : configured_)
      for (const auto& value : values)
        if (value.first == "lr") lrs.push_back(value.second);
    return lrs;
  }

  /// Configuration that must match for a resume: the type and the initial hyper-parameters.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", Traits::keel_name);
    for (const auto& [name, value] : Traits::hyper_parameters(options_))
      fingerprint.add(prefix + name, value);
    if (group_names_.size() == 1 && group_names_[0] == "default") return;  // no ParamGroups: as before them
    std::string names;
    for (const auto& name : group_names_) names += (names.empty() ? "" : ",") + name;
    fingerprint.add(prefix + "groups", names);
    const auto defaults = Traits::hyper_parameters(options_);
    for (std::size_t g = 0; g < group_names_.size(); ++g)
      for (std::size_t i = 0; i < defaults.size(); ++i)
        if (configured_[g][i].second != defaults[i].second)
          fingerprint.add(prefix + "group." + group_names_[g] + "." + defaults[i].first, configured_[g][i].second);
  }

 private:
  /// For each of this run's groups, the index of its saved group (-1: none). Files with named
  /// groups match by name (and must have this run's order); files of keel 0.2 (unnamed) by
  /// position.
  std::vector<long> saved_group_order(const OptimizerState& state, std::vector<std::string>& problems) const {
    const std::size_t count = optimizer_->param_groups().size();
    std::vector<long> order(count, -1);
    const bool named = std::any_of(state.groups.begin(), state.groups.end(), [](const GroupState& g) { return !g.name.empty(); });
    if (!named) {
      if (state.groups.size() != count)
        problems.push_back("optimizer has " + std::to_string(state.groups.size()) + " param groups in the checkpoint but " +
                           std::to_string(count) + " in this run");
      else
        for (std::size_t g = 0; g < count; ++g) order[g] = static_cast<long>(g);
      return order;
    }
    std::set<std::string> matched;
    for (std::size_t s = 0; s < state.groups.size(); ++s) {
      const std::string& name = state.groups[s].name;
      if (!matched.insert(name).second) {
        problems.push_back("optimizer param group '" + name + "' appears twice in the checkpoint");
        continue;
      }
      auto found = std::find(group_names_.begin(), group_names_.end(), name);
      if (found == group_names_.end())
        problems.push_back("optimizer param group '" + name + "' is in the checkpoint but not in this run");
      else
        order[static_cast<std::size_t>(found - group_names_.begin())] = static_cast<long>(s);
    }
    for (std::size_t g = 0; g < count; ++g)
      if (order[g] < 0 && !matched.count(group_names_[g]))
        problems.push_back("optimizer param group '" + group_names_[g] + "' of this run is not in the checkpoint");
    // The same groups in another order: the scheduler's per-group state follows LibTorch's group
    // order, so the order must be the checkpoint's too.
    bool reordered = false;
    for (std::size_t g = 0; g < count; ++g) reordered = reordered || (order[g] >= 0 && order[g] != static_cast<long>(g));
    if (reordered) {
      std::string saved, here;
      for (const auto& group : state.groups) saved += (saved.empty() ? "" : ", ") + group.name;
      for (const auto& name : group_names_) here += (here.empty() ? "" : ", ") + name;
      problems.push_back("optimizer param groups are in another order in the checkpoint (" + saved + ") than in this run (" +
                         here + "); list the ParamGroups in the checkpoint's order");
    }
    return order;
  }

  /// Replaces the values `group` sets; an unknown name is refused with the names there are.
  static void override_values(std::vector<std::pair<std::string, double>>& values, const ParamGroup& group) {
    for (const auto& item : group.overrides()) {  // (not a structured binding: clang 14 cannot capture one)
      const std::string& name = item.first;
      const double value = item.second;
      auto found = std::find_if(values.begin(), values.end(), [&](const auto& v) { return v.first == name; });
      if (found == values.end()) {
        std::string known;
        for (const auto& v : values) known += (known.empty() ? "" : ", ") + v.first;
        throw ConfigError("keel::optim::ParamGroup '" + group.name() + "': " + Traits::keel_name +
                          " has no hyper-parameter '" + name + "'; it has " + known);
      }
      found->second = value;
    }
  }

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
  std::vector<std::string> group_names_;  // "default" and the ParamGroups' names, in LibTorch's group order
  std::vector<std::vector<std::pair<std::string, double>>> configured_;  // each group's configured values
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
