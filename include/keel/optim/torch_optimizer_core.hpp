#pragma once
// The half of keel::optim::TorchOptimizer that does not depend on the policy's Traits: the
// saved form of an optimizer's state, and the bookkeeping by parameter name (which parameter
// is which, the param groups' names and configured values, the checks of a checkpoint's state
// against the live optimizer). It is plain code, not a template: a program with several
// optimizer policies compiles it once per translation unit, not once per policy
// (bench/README.md, "Compile time").

#include <keel/checkpoint/deferred_tensor.hpp>
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
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace keel::optim {

/// A param group's hyper-parameters by the names the optimizer saves them under.
using HyperParameters = std::vector<std::pair<std::string, double>>;

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
  HyperParameters hyper_parameters;
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
inline keel::detail::OptimizerStateKey state_key(const torch::Tensor& param) {
  return keel::detail::optimizer_state_key(param);
}

namespace detail {

/// Looks up a hyper-parameter by name in a saved list (check() guarantees it is there).
inline double hyper(const HyperParameters& values, const char* name) {
  for (const auto& [key, value] : values)
    if (key == name) return value;
  throw std::runtime_error(std::string("keel: hyper-parameter '") + name + "' missing");
}

/// One param group as the constructor makes it: its name, configured values and parameters.
struct PlannedGroup {
  std::string name;
  HyperParameters values;
  std::vector<torch::Tensor> members;
};

/// The parameters by name, and the param groups by name and configured values, of one
/// optimizer; with what needs only that (checks, fingerprint, the groups of the saved state).
/// TorchOptimizer<Traits> supplies what needs the Traits: the hyper-parameters read from a
/// group's options, and the per-parameter state tensors.
class OptimizerBook {
 public:
  explicit OptimizerBook(const NamedParameters& params) : params_(params) {
    for (const auto& item : params_) names_.emplace(item.value().unsafeGetTensorImpl(), item.key());
  }

  /// Each parameter goes to the first group of `groups` that selects it, the others to
  /// "default" (first, with `defaults`); a group takes `defaults` with its own values set.
  /// Records the groups' names and configured values, and returns the groups in that order.
  std::vector<PlannedGroup> plan_groups(const ParamGroups& groups, const HyperParameters& defaults,
                                        const std::string& optimizer_name) {
    // Members of "default" (index 0) and of each group, in module order.
    std::vector<std::vector<torch::Tensor>> members(groups.groups().size() + 1);
    for (const auto& item : params_) {
      std::size_t index = 0;
      for (std::size_t g = 0; g < groups.groups().size() && index == 0; ++g)
        if (groups.groups()[g].selects(item.key(), item.value())) index = g + 1;
      members[index].push_back(item.value());
    }
    std::vector<PlannedGroup> planned;
    for (std::size_t index = 0; index < members.size(); ++index) {
      if (index == 0 && members[0].empty() && !groups.empty()) continue;  // every parameter is in a named group
      const std::string name = index == 0 ? "default" : groups.groups()[index - 1].name();
      if (members[index].empty() && !groups.empty())
        throw ConfigError("keel::optim::ParamGroup '" + name + "' selects no parameter of the model" +
                          (index > 1 ? " (an earlier group may have taken them: a parameter goes to the first that selects it)" : ""));
      HyperParameters values = defaults;
      if (index > 0) override_values(values, groups.groups()[index - 1], optimizer_name);
      group_names_.push_back(name);
      configured_.push_back(values);
      planned.push_back({name, std::move(values), std::move(members[index])});
    }
    return planned;
  }

  /// Zeroes every gradient in place, allocating zero gradients for parameters that have none.
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

  const NamedParameters& params() const noexcept { return params_; }
  const std::string& group_name(std::size_t group) const { return group_names_.at(group); }
  const std::vector<HyperParameters>& configured() const noexcept { return configured_; }

  /// Each param group's configured learning rate (a ParamGroup may set its own).
  std::vector<double> configured_lrs() const {
    std::vector<double> lrs;
    for (const auto& values : configured_)
      for (const auto& value : values)
        if (value.first == "lr") lrs.push_back(value.second);
    return lrs;
  }

  /// The groups of the saved state: names, `current` hyper-parameters, parameters by name.
  std::vector<GroupState> saved_groups(const torch::optim::Optimizer& optimizer,
                                       const std::vector<HyperParameters>& current) const {
    std::vector<GroupState> out;
    const auto& groups = optimizer.param_groups();
    for (std::size_t index = 0; index < groups.size(); ++index) {
      GroupState g;
      g.name = group_names_.at(index);
      g.hyper_parameters = current.at(index);
      for (const auto& p : groups[index].params()) g.params.push_back(name_of(p));
      out.push_back(std::move(g));
    }
    return out;
  }

  /// Every reason `state` cannot be applied to `optimizer` (whose groups hold `current`, and
  /// whose parameters keep the state tensors `tensor_names`); empty when it can.
  std::vector<std::string> check(const OptimizerState& state, const torch::optim::Optimizer& optimizer,
                                 const std::vector<HyperParameters>& current,
                                 const std::vector<std::string>& tensor_names, const std::string& optimizer_name) const {
    std::vector<std::string> problems;
    const auto& groups = optimizer.param_groups();
    const auto order = saved_group_order(state, groups.size(), problems);
    for (std::size_t g = 0; g < order.size(); ++g) {
      if (order[g] < 0) continue;
      const GroupState& saved = state.groups[static_cast<std::size_t>(order[g])];
      const std::string label = "optimizer param group '" + group_names_.at(g) + "'";
      if (!same_names(current.at(g), saved.hyper_parameters))
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
      if (got != tensor_names)
        problems.push_back("optimizer state of parameter '" + p.name +
                           "' does not have the tensors " + optimizer_name + " keeps");
      if (p.step < 0)
        problems.push_back("optimizer step count of parameter '" + p.name + "' is negative (" +
                           std::to_string(p.step) + ")");
    }
    return problems;
  }

  /// For each of this run's `count` groups, the index of its saved group (-1: none). Files
  /// with named groups match by name (and must have this run's order); files of keel 0.2
  /// (unnamed) by position.
  std::vector<long> saved_group_order(const OptimizerState& state, std::size_t count,
                                      std::vector<std::string>& problems) const {
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

  /// Configuration that must match for a resume: the type, the configured hyper-parameters
  /// (`defaults`), and the groups' names and values where they differ from `defaults`.
  void describe(Fingerprint& fingerprint, const std::string& prefix, const std::string& optimizer_name,
                const HyperParameters& defaults) const {
    fingerprint.add(prefix + "type", optimizer_name);
    for (const auto& [name, value] : defaults) fingerprint.add(prefix + name, value);
    if (group_names_.size() == 1 && group_names_[0] == "default") return;  // no ParamGroups: as before them
    std::string names;
    for (const auto& name : group_names_) names += (names.empty() ? "" : ",") + name;
    fingerprint.add(prefix + "groups", names);
    for (std::size_t g = 0; g < group_names_.size(); ++g)
      for (std::size_t i = 0; i < defaults.size(); ++i)
        if (configured_[g][i].second != defaults[i].second)
          fingerprint.add(prefix + "group." + group_names_[g] + "." + defaults[i].first, configured_[g][i].second);
  }

  /// The live parameter of this name (check() found it there).
  const torch::Tensor& param(const std::string& name) const { return params_[name]; }
  /// A copy of a parameter's saved state with its tensors on that parameter's device.
  static ParamState on_device_of(const ParamState& state, const torch::Tensor& param) {
    ParamState moved = state;
    for (auto& item : moved.tensors)
      if (item.second.defined()) item.second = item.second.to(param.device());
    return moved;
  }

  /// A parameter's saved state, ready to become the live one: each tensor a load left in the
  /// file (ckpt::is_deferred) is read straight into the tensor of the same name, shape and
  /// dtype in `live` (the optimizer's current state of that parameter, if it has one), which
  /// then takes its place: no new memory. The others get memory of their own. Then every
  /// tensor goes onto the parameter's device (on_device_of).
  static ParamState placed(ParamState saved, const ParamState* live, const torch::Tensor& param) {
    for (auto& [name, tensor] : saved.tensors) {
      if (!ckpt::is_deferred(tensor)) continue;
      const torch::Tensor* reuse = nullptr;
      if (live)
        for (const auto& [live_name, live_tensor] : live->tensors)
          if (live_name == name && live_tensor.defined() && live_tensor.sizes() == tensor.sizes() &&
              live_tensor.scalar_type() == tensor.scalar_type() && live_tensor.device() == param.device())
            reuse = &live_tensor;
      if (reuse) {
        ckpt::copy_into(*reuse, tensor);
        tensor = *reuse;
      } else {
        ckpt::materialize(tensor);
      }
    }
    return on_device_of(saved, param);
  }

  std::string name_of(const torch::Tensor& param) const {
    auto found = names_.find(param.unsafeGetTensorImpl());
    return found == names_.end() ? std::string("<unnamed>") : found->second;
  }

 private:
  /// Replaces the values `group` sets; an unknown name is refused with the names there are.
  static void override_values(HyperParameters& values, const ParamGroup& group, const std::string& optimizer_name) {
    for (const auto& item : group.overrides()) {  // (not a structured binding: clang 14 cannot capture one)
      const std::string& name = item.first;
      const double value = item.second;
      auto found = std::find_if(values.begin(), values.end(), [&](const auto& v) { return v.first == name; });
      if (found == values.end()) {
        std::string known;
        for (const auto& v : values) known += (known.empty() ? "" : ", ") + v.first;
        throw ConfigError("keel::optim::ParamGroup '" + group.name() + "': " + optimizer_name +
                          " has no hyper-parameter '" + name + "'; it has " + known);
      }
      found->second = value;
    }
  }
  static bool same_names(const HyperParameters& a, const HyperParameters& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i].first != b[i].first) return false;
    return true;
  }
  static std::string dtype_or_raw(torch::ScalarType type) {
    const char* name = dtype_name(type);
    return name ? name : c10::toString(type);
  }

  NamedParameters params_;
  std::vector<std::string> group_names_;  // "default" and the ParamGroups' names, in LibTorch's group order
  std::vector<HyperParameters> configured_;  // each group's configured values
  std::unordered_map<const void*, std::string> names_;  // TensorImpl -> name in the module
};

}  // namespace detail
}  // namespace keel::optim
