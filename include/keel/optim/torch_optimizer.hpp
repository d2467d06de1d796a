#pragma once
// The common half of keel's optimizer policies: a LibTorch optimizer whose state is saved in
// keel's format, matched to parameters by their names in the module (LibTorch keys its state
// by TensorImpl address, which means nothing in another process).
//
// Each policy supplies a Traits type: the LibTorch optimizer, options and per-parameter state
// types, the hyper-parameters of a param group as named doubles, and the named tensors (and
// step count) of a parameter's state. Param groups (keel/optim/param_groups.hpp) are saved with
// their names and matched by name on load.

#include <keel/fingerprint.hpp>
#include <keel/optim/torch_optimizer_core.hpp>

#include <torch/optim/optimizer.h>

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::optim {

template <class Traits>
class TorchOptimizer;

/// Whether optimizer policy O applies a loaded state with TorchOptimizer's own apply(), which
/// reads the tensors a load left in the file into place (ckpt::copy_into). A policy that
/// replaces apply() is given real tensors instead.
template <class O, class = void>
inline constexpr bool applies_deferred_tensors = false;
template <class O>
inline constexpr bool applies_deferred_tensors<O, std::void_t<typename O::torch_optimizer_base, decltype(&O::apply)>> =
    std::is_same_v<decltype(&O::apply), decltype(&O::torch_optimizer_base::apply)>;

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
      : options_(std::move(options)), book_(params) {
    auto planned = book_.plan_groups(groups, Traits::hyper_parameters(options_), Traits::keel_name);
    if (groups.empty()) {
      optimizer_ = std::make_unique<TorchType>(std::move(planned.at(0).members), options_);
      return;
    }
    std::vector<torch::optim::OptimizerParamGroup> torch_groups;
    for (auto& group : planned) {
      auto group_options = std::make_unique<Options>(options_);
      Traits::set_hyper_parameters(*group_options, group.values);
      torch_groups.emplace_back(std::move(group.members), std::move(group_options));
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
  void zero_grad() { book_.zero_grad(); }

  std::size_t group_count() const { return optimizer_->param_groups().size(); }
  /// The name of param group `group` ("default" without ParamGroups).
  const std::string& group_name(std::size_t group) const { return book_.group_name(group); }
  double lr(std::size_t group = 0) const {
    return optimizer_->param_groups().at(group).options().get_lr();
  }
  void set_lr(std::size_t group, double lr) {
    optimizer_->param_groups().at(group).options().set_lr(lr);
  }

  torch::optim::Optimizer& torch_optimizer() noexcept { return *optimizer_; }
  const Options& options() const noexcept { return options_; }
  const NamedParameters& named_parameters() const noexcept { return book_.params(); }

  /// The state in keel's form, parameters in module order.
  OptimizerState state() const {
    OptimizerState out;
    out.groups = book_.saved_groups(*optimizer_, current_values());
    const auto& torch_state = optimizer_->state();
    for (const auto& item : book_.params()) {
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
    return book_.check(state, *optimizer_, current_values(), Traits::tensor_names(), Traits::keel_name);
  }

  /// Replaces the whole optimizer state; call only after check() found no problem.
  void apply(const OptimizerState& state) {
    auto& groups = optimizer_->param_groups();
    std::vector<std::string> ignored;
    const auto order = book_.saved_group_order(state, groups.size(), ignored);
    for (std::size_t g = 0; g < groups.size(); ++g)
      Traits::set_hyper_parameters(static_cast<Options&>(groups[g].options()),
                                   state.groups.at(static_cast<std::size_t>(order.at(g))).hyper_parameters);
    // Each parameter's new state is placed first, reading into the current state's tensors
    // where they fit (OptimizerBook::placed), then the whole state is replaced.
    auto& torch_state = optimizer_->state();
    std::vector<std::pair<keel::detail::OptimizerStateKey, ParamState>> placed;
    for (const auto& p : state.params) {
      const torch::Tensor& param = book_.param(p.name);
      std::optional<ParamState> live;
      if (auto found = torch_state.find(key_of(param)); found != torch_state.end()) {
        live.emplace();
        Traits::capture(static_cast<const typename Traits::ParamState&>(*found->second), *live);
      }
      placed.emplace_back(key_of(param), detail::OptimizerBook::placed(p, live ? &*live : nullptr, param));
    }
    torch_state.clear();
    for (const auto& [key, p] : placed) torch_state[key] = Traits::restore(p);
  }

  /// A fork changed the optimizer's configuration: every param group takes the configured
  /// hyper-parameters again, except the learning rate, which the scheduler sets.
  void reconfigure() {
    auto& groups = optimizer_->param_groups();
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const double lr = groups[g].options().get_lr();
      Traits::set_hyper_parameters(static_cast<Options&>(groups[g].options()), book_.configured().at(g));
      groups[g].options().set_lr(lr);
    }
  }
  /// The learning rate the optimizer was configured with (the schedule's base).
  double configured_lr() const { return options_.lr(); }
  /// Each param group's configured learning rate (a ParamGroup may set its own).
  std::vector<double> configured_lrs() const { return book_.configured_lrs(); }

  /// Configuration that must match for a resume: the type and the initial hyper-parameters.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    book_.describe(fingerprint, prefix, Traits::keel_name, Traits::hyper_parameters(options_));
  }

 private:
  /// Each param group's hyper-parameters as its options hold them now.
  std::vector<HyperParameters> current_values() const {
    std::vector<HyperParameters> values;
    for (const auto& group : optimizer_->param_groups())
      values.push_back(Traits::hyper_parameters(static_cast<const Options&>(group.options())));
    return values;
  }
  static keel::detail::OptimizerStateKey key_of(const torch::Tensor& param) {
    return keel::detail::optimizer_state_key(param);
  }

  Options options_;
  detail::OptimizerBook book_;  // parameters and groups by name: the part that needs no Traits
  std::unique_ptr<TorchType> optimizer_;
};

}  // namespace keel::optim
