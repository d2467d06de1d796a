#pragma once
// The Trainer's constructor arguments, gathered by type so that they may come in any order:
// TrainerOptions, the model (a shared_ptr to the module, or its TORCH_MODULE holder), the
// optimizer's and the scheduler's options, the optimizer's param groups, and callback objects. Anything left out is
// default-constructed, or refused with a message saying what to pass.

#include <keel/detail/type_count.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/error.hpp>
#include <keel/optim/param_groups.hpp>
#include <keel/trainer_options.hpp>

#include <torch/nn/pimpl.h>
#include <torch/ordered_dict.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace keel::detail {

template <class>
inline constexpr bool always_false = false;

template <class T, class Tuple>
struct index_in_tuple;
template <class T, class... Ts>
struct index_in_tuple<T, std::tuple<Ts...>> {
  static constexpr std::size_t count = type_count<T, Ts...>;
  static constexpr std::size_t value = [] {
    std::size_t i = 0;
    static_cast<void>(((std::is_same_v<T, Ts> ? false : (++i, true)) && ...));
    return i;
  }();
};

/// Instantiated with the argument's type and the options types this Trainer takes, so that the
/// compiler's "in instantiation of unexpected_argument<...>" line names all three.
template <class Given, class ExpectedOptimizerOptions, class ExpectedSchedulerOptions>
constexpr bool unexpected_argument() {
  static_assert(always_false<Given>,
                "keel::Trainer: a constructor argument matches no component. Pass any of: keel::TrainerOptions, the "
                "model (std::shared_ptr<Impl> or its holder), the optimizer's options, keel::optim::ParamGroups, the "
                "scheduler's options, a callback of the Trainer. The instantiation line of this error names the argument's type (Given) "
                "and the options types this Trainer's optimizer and scheduler take (ExpectedOptimizerOptions, "
                "ExpectedSchedulerOptions).");
  return false;
}

template <class Module, class Optimizer, class Scheduler, class Callbacks>
class ConstructorArgs {
  using OptimizerOptions = typename Optimizer::Options;
  using SchedulerOptions = typename Scheduler::Options;
  template <class Tuple>
  struct OptionalTuple;
  template <class... C>
  struct OptionalTuple<std::tuple<C...>> {
    using type = std::tuple<std::optional<C>...>;
  };

 public:
  template <class... Args>
  explicit ConstructorArgs(Args&&... args) {
    (take(std::forward<Args>(args)), ...);
  }

  TrainerOptions options() { return std::move(options_); }

  std::shared_ptr<Module> model() {
    if (model_) return std::move(model_);
    if constexpr (std::is_default_constructible_v<Module>) {
      return std::make_shared<Module>();
    } else {
      throw ConfigError("keel::Trainer: pass the model (std::shared_ptr<" + type_name<Module>() +
                        ">) to the constructor; it has no default constructor");
    }
  }

  OptimizerOptions optimizer_options() {
    if (optimizer_options_) return std::move(*optimizer_options_);
    if constexpr (std::is_default_constructible_v<OptimizerOptions>) {
      return OptimizerOptions{};
    } else {
      throw ConfigError("keel::Trainer: " + component_name<Optimizer>() +
                        " has no default options; pass its options (e.g. torch::optim::SGDOptions(lr))"
                        " to the Trainer's constructor");
    }
  }

  SchedulerOptions scheduler_options() {
    if (scheduler_options_) return std::move(*scheduler_options_);
    if constexpr (std::is_default_constructible_v<SchedulerOptions>) {
      return SchedulerOptions{};
    } else {
      throw ConfigError("keel::Trainer: " + component_name<Scheduler>() +
                        " has no default options; pass its Options to the Trainer's constructor");
    }
  }

  /// The optimizer's param groups (none: one group).
  optim::ParamGroups param_groups() { return std::move(param_groups_); }

  Callbacks callbacks() { return callbacks(std::make_index_sequence<std::tuple_size_v<Callbacks>>{}); }

 private:
  template <class Arg>
  void take(Arg&& arg) {
    using A = std::decay_t<Arg>;
    if constexpr (std::is_same_v<A, TrainerOptions>) {
      options_ = std::forward<Arg>(arg);
    } else if constexpr (std::is_convertible_v<A, std::shared_ptr<Module>>) {
      model_ = std::forward<Arg>(arg);
    } else if constexpr (std::is_base_of_v<torch::nn::ModuleHolder<Module>, A>) {
      model_ = arg.ptr();
    } else if constexpr (std::is_same_v<A, OptimizerOptions>) {
      optimizer_options_ = std::forward<Arg>(arg);
    } else if constexpr (std::is_same_v<A, optim::ParamGroups>) {
      static_assert(std::is_constructible_v<Optimizer, torch::OrderedDict<std::string, torch::Tensor>, OptimizerOptions,
                                            optim::ParamGroups>,
                    "keel::Trainer: keel::optim::ParamGroups was passed, but this optimizer policy takes none (a "
                    "policy on keel::optim::TorchOptimizer does: its constructor's third argument)");
      param_groups_ = std::forward<Arg>(arg);
    } else if constexpr (std::is_same_v<A, SchedulerOptions>) {
      scheduler_options_ = std::forward<Arg>(arg);
    } else if constexpr (index_in_tuple<A, Callbacks>::count == 1) {
      std::get<index_in_tuple<A, Callbacks>::value>(callbacks_) = std::forward<Arg>(arg);
    } else {
      static_assert(unexpected_argument<A, OptimizerOptions, SchedulerOptions>());
    }
  }

  template <std::size_t I>
  auto callback() {
    using C = std::tuple_element_t<I, Callbacks>;
    auto& given = std::get<I>(callbacks_);
    if (given) return C(std::move(*given));
    if constexpr (std::is_default_constructible_v<C>) {
      return C{};
    } else {
      throw ConfigError("keel::Trainer: callback " + type_name<C>() +
                        " has no default constructor; pass an instance to the Trainer's constructor");
      return C(std::move(*given));  // unreachable; gives the function its return type
    }
  }
  template <std::size_t... I>
  Callbacks callbacks(std::index_sequence<I...>) {
    return Callbacks(callback<I>()...);
  }

  TrainerOptions options_;
  std::shared_ptr<Module> model_;
  std::optional<OptimizerOptions> optimizer_options_;
  std::optional<SchedulerOptions> scheduler_options_;
  optim::ParamGroups param_groups_;
  typename OptionalTuple<Callbacks>::type callbacks_;
};

}  // namespace keel::detail
