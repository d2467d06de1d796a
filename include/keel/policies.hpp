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
}  // namespace detail

/// The LibTorch module to train (a torch::nn::Module subclass or its TORCH_MODULE holder).
template <class Module>
struct model {
  using role = detail::model_role;
  using type = Module;
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

template <class Role, class Default, class... Policies>
struct find_policy {
  static constexpr std::size_t count = (std::size_t{0} + ... + plays_role<Role, Policies>());
  static_assert(count <= 1, "keel::Trainer: a policy role is given twice (two keel::model<>, "
                            "keel::optimizer<>, keel::scheduler<>, keel::callbacks<> or "
                            "keel::checkpoint<>); give each at most once.");
  template <class First, class... Rest>
  static auto pick(std::tuple<First, Rest...>*) {
    if constexpr (plays_role<Role, First>() == 1) {
      return static_cast<typename First::type*>(nullptr);
    } else {
      return pick(static_cast<std::tuple<Rest...>*>(nullptr));
    }
  }
  static auto pick(std::tuple<>*) { return static_cast<Default*>(nullptr); }
  using type = std::remove_pointer_t<decltype(pick(static_cast<std::tuple<Policies...>*>(nullptr)))>;
};

/// Stands in for a role nobody filled and that has no default (the model).
struct no_policy {};

}  // namespace detail
}  // namespace keel
