#pragma once
// The policy wrappers a Trainer is composed of, and their lookup. Each wrapper is a named
// type, so the policies may be listed in any order, and each role has a default.

#include <cstddef>
#include <tuple>
#include <type_traits>

namespace keel {

namespace detail {
struct model_role {};
struct optimizer_role {};
struct scheduler_role {};
struct callbacks_role {};
struct checkpoint_role {};
struct strategy_role {};
}  // namespace detail

struct parameters_only;

/// The LibTorch module to train (a torch::nn::Module subclass or its TORCH_MODULE holder).
/// `keel::model<M, keel::parameters_only>` opts a module that cannot be changed out of the
/// model's state rule: only its parameters and buffers are saved (keel/model_check.hpp).
template <class Module, class... Options>
struct model {
  static_assert((std::is_same_v<Options, parameters_only> && ...),
                "keel::model<M, ...>: the only option is keel::parameters_only.");
  using role = detail::model_role;
  using type = Module;
  static constexpr bool saves_parameters_only = sizeof...(Options) > 0;
};

/// The optimizer, e.g. keel::optim::AdamW.
template <class Optimizer>
struct optimizer {
  using role = detail::optimizer_role;
  using type = Optimizer;
};

/// The learning-rate scheduler, e.g. keel::sched::CosineWarmup.
template <class Scheduler>
struct scheduler {
  using role = detail::scheduler_role;
  using type = Scheduler;
};

/// The callbacks, called in this order for every event.
template <class... Callbacks>
struct callbacks {
  using role = detail::callbacks_role;
  using type = std::tuple<Callbacks...>;
};

/// The checkpoint format, e.g. keel::format::Binary.
template <class Format>
struct checkpoint {
  using role = detail::checkpoint_role;
  using type = Format;
};

/// How many processes train, and how they share the work, e.g. keel::DataParallel
/// (<keel/distributed.hpp>). Without it: keel::SingleProcess.
template <class Strategy>
struct strategy {
  using role = detail::strategy_role;
  using type = Strategy;
};

namespace detail {

template <class T, class = void>
struct is_policy : std::false_type {};
template <class T>
struct is_policy<T, std::void_t<typename T::role>> : std::true_type {};

template <class Role, class T>
constexpr std::size_t plays_role() {
  if constexpr (is_policy<T>::value) {
    return std::is_same_v<typename T::role, Role> ? 1 : 0;
  } else {
    return 0;
  }
}

template <class Type>
struct default_policy {
  using type = Type;
  static constexpr bool saves_parameters_only = false;
};

template <class Role, class Default, class... Policies>
struct find_policy {
  static constexpr std::size_t count = (std::size_t{0} + ... + plays_role<Role, Policies>());
  static_assert(!std::is_same_v<Role, model_role> || count <= 1,
                "keel::Trainer: the role 'model' is given twice (two keel::model<>); give it once.");
  static_assert(!std::is_same_v<Role, optimizer_role> || count <= 1,
                "keel::Trainer: the role 'optimizer' is given twice (two keel::optimizer<>); give it once.");
  static_assert(!std::is_same_v<Role, scheduler_role> || count <= 1,
                "keel::Trainer: the role 'scheduler' is given twice (two keel::scheduler<>); give it once.");
  static_assert(!std::is_same_v<Role, callbacks_role> || count <= 1,
                "keel::Trainer: the role 'callbacks' is given twice (two keel::callbacks<>); list every callback "
                "in one keel::callbacks<A, B, ...>.");
  static_assert(!std::is_same_v<Role, checkpoint_role> || count <= 1,
                "keel::Trainer: the role 'checkpoint' is given twice (two keel::checkpoint<>); give it once.");
  static_assert(!std::is_same_v<Role, strategy_role> || count <= 1,
                "keel::Trainer: the role 'strategy' is given twice (two keel::strategy<>); give it once.");
  template <class First, class... Rest>
  static auto pick(std::tuple<First, Rest...>*) {
    if constexpr (plays_role<Role, First>() == 1) {
      return static_cast<First*>(nullptr);
    } else {
      return pick(static_cast<std::tuple<Rest...>*>(nullptr));
    }
  }
  static auto pick(std::tuple<>*) { return static_cast<default_policy<Default>*>(nullptr); }
  /// The policy wrapper (keel::model<M>...), or default_policy<Default>.
  using policy = std::remove_pointer_t<decltype(pick(static_cast<std::tuple<Policies...>*>(nullptr)))>;
  using type = typename policy::type;
};

/// Stands in for a role nobody filled and that has no default (the model).
struct no_policy {};

}  // namespace detail
}  // namespace keel
