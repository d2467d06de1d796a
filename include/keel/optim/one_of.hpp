#pragma once
// keel::optim::OneOf<Policies...>: an optimizer chosen at run time among optimizer policies, for
// programs that take the optimizer from a flag or a configuration file without instantiating a
// Trainer per choice:
//
//   using Optimizer = keel::optim::OneOf<keel::optim::SGD, keel::optim::Adam, keel::optim::AdamW>;
//   keel::Trainer<keel::model<Net>, keel::optimizer<Optimizer>, ...> trainer(
//       net, options, Optimizer::Options(torch::optim::AdamWOptions(3e-4).weight_decay(0.05)), ...);
//
// Its Options is a std::variant of the policies' options (which must differ in type); the one it
// holds chooses the policy. The chosen policy does everything: its fingerprint, its checkpoint
// sections (a checkpoint of OneOf running Adam is a checkpoint of keel::optim::Adam, and either
// resumes the other), param groups, forks. The policies are built on keel::optim::TorchOptimizer
// (keel's own and those of keel/optim/torch_optimizer.hpp's recipe) and keep all of their state
// in state(): one that adds members of its own is refused at compile time.

#include <keel/checkpoint/deferred_tensor.hpp>
#include <keel/detail/type_count.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/optim/param_groups.hpp>
#include <keel/optim/torch_optimizer.hpp>

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace keel::optim {

template <class... Policies>
class OneOf {
  static_assert(sizeof...(Policies) > 0, "keel::optim::OneOf needs at least one optimizer policy");
  static_assert(((keel::detail::type_count<typename Policies::Options, typename Policies::Options...> == 1) && ...),
                "keel::optim::OneOf: two policies take the same Options type, so the options cannot say which "
                "policy they choose");

 public:
  static constexpr const char* keel_name = "keel::optim::OneOf";
  /// The policies, for keel's compile-time checks (each is checked as if it stood alone).
  using alternatives = std::tuple<Policies...>;
  using Options = std::variant<typename Policies::Options...>;
  /// apply() passes a load's placeholders on only when every policy reads them itself.
  static constexpr bool reads_deferred_tensors = (applies_deferred_tensors<Policies> && ...);

  OneOf(const NamedParameters& params, Options options, const ParamGroups& groups = {})
      : chosen_(make(params, std::move(options), groups)) {}

  /// The chosen policy's keel name ("keel::optim::AdamW").
  std::string keel_component_name() const {
    return std::visit([](const auto& o) { return keel::detail::component_name<std::decay_t<decltype(o)>>(); }, chosen_);
  }
  /// The chosen policy, if it is P (else null).
  template <class P>
  P* get_if() noexcept {
    return std::get_if<P>(&chosen_);
  }

  void step() {
    std::visit([](auto& o) { o.step(); }, chosen_);
  }
  void zero_grad() {
    std::visit([](auto& o) { o.zero_grad(); }, chosen_);
  }
  std::size_t group_count() const {
    return std::visit([](const auto& o) { return o.group_count(); }, chosen_);
  }
  std::string group_name(std::size_t group) const {
    return std::visit([&](const auto& o) { return std::string(o.group_name(group)); }, chosen_);
  }
  double lr(std::size_t group = 0) const {
    return std::visit([&](const auto& o) { return o.lr(group); }, chosen_);
  }
  void set_lr(std::size_t group, double lr) {
    std::visit([&](auto& o) { o.set_lr(group, lr); }, chosen_);
  }
  torch::optim::Optimizer& torch_optimizer() noexcept {
    return std::visit([](auto& o) -> torch::optim::Optimizer& { return o.torch_optimizer(); }, chosen_);
  }
  OptimizerState state() const {
    return std::visit([](const auto& o) { return o.state(); }, chosen_);
  }
  std::vector<std::string> check(const OptimizerState& state) const {
    return std::visit([&](const auto& o) { return o.check(state); }, chosen_);
  }
  void apply(const OptimizerState& state) {
    std::visit([&](auto& o) { o.apply(state); }, chosen_);
  }
  void reconfigure() {
    std::visit([](auto& o) { o.reconfigure(); }, chosen_);
  }
  double configured_lr() const {
    return std::visit([](const auto& o) { return o.configured_lr(); }, chosen_);
  }
  std::vector<double> configured_lrs() const {
    return std::visit([](const auto& o) { return o.configured_lrs(); }, chosen_);
  }
  /// The chosen policy's configuration: the same entries as that policy on its own.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    std::visit([&](const auto& o) { o.describe(fingerprint, prefix); }, chosen_);
  }

 private:
  using Chosen = std::variant<Policies...>;

  template <std::size_t I = 0>
  static Chosen make(const NamedParameters& params, Options&& options, const ParamGroups& groups) {
    if constexpr (I + 1 < sizeof...(Policies)) {
      if (options.index() != I) return make<I + 1>(params, std::move(options), groups);
    }
    using Policy = std::variant_alternative_t<I, Chosen>;
    auto&& chosen_options = std::get<I>(std::move(options));
    if constexpr (std::is_constructible_v<Policy, const NamedParameters&, typename Policy::Options, const ParamGroups&>) {
      if (!groups.empty()) return Chosen(std::in_place_index<I>, params, std::move(chosen_options), groups);
    } else {
      if (!groups.empty())
        throw ConfigError("keel::optim::OneOf: " + keel::detail::component_name<Policy>() +
                          " takes no keel::optim::ParamGroups");
    }
    return Chosen(std::in_place_index<I>, params, std::move(chosen_options));
  }

  Chosen chosen_;
};

}  // namespace keel::optim
