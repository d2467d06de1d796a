#pragma once
// Compile-time checks of the optimizer and scheduler policies, one static_assert per required
// member, each naming the member and its signature. keel's own policies pass; these messages
// are for a policy of your own.

#include <keel/fingerprint.hpp>
#include <keel/optim/torch_optimizer.hpp>

#include <torch/optim/optimizer.h>

#include <string>
#include <type_traits>
#include <utility>

namespace keel {

namespace detail {
#define KEEL_DETECT(trait, expression)                                       \
  template <class T, class = void>                                           \
  struct trait : std::false_type {};                                         \
  template <class T>                                                         \
  struct trait<T, std::void_t<decltype(expression)>> : std::true_type {};

KEEL_DETECT(has_options_type, std::declval<typename T::Options>())
KEEL_DETECT(optimizer_constructible,
            T(std::declval<const optim::NamedParameters&>(), std::declval<typename T::Options>()))
KEEL_DETECT(has_step, std::declval<T&>().step())
KEEL_DETECT(has_zero_grad, std::declval<T&>().zero_grad())
KEEL_DETECT(has_lr, double(std::declval<const T&>().lr(std::size_t{0})))
KEEL_DETECT(has_group_count, std::size_t(std::declval<const T&>().group_count()))
KEEL_DETECT(has_torch_optimizer,
            static_cast<torch::optim::Optimizer&>(std::declval<T&>().torch_optimizer()))
KEEL_DETECT(has_state, optim::OptimizerState(std::declval<const T&>().state()))
KEEL_DETECT(has_check, std::vector<std::string>(std::declval<const T&>().check(
                           std::declval<const optim::OptimizerState&>())))
KEEL_DETECT(has_apply, std::declval<T&>().apply(std::declval<const optim::OptimizerState&>()))
KEEL_DETECT(has_describe_prefix, std::declval<const T&>().describe(std::declval<Fingerprint&>(),
                                                                   std::declval<const std::string&>()))
KEEL_DETECT(scheduler_constructible,
            T(std::declval<torch::optim::Optimizer&>(), std::declval<typename T::Options>()))
KEEL_DETECT(has_base_lrs, std::declval<const T&>().base_lrs().size())
#undef KEEL_DETECT
}  // namespace detail

template <class O>
constexpr bool check_optimizer() {
  static_assert(detail::has_options_type<O>::value, "keel optimizer policy: needs a nested type `Options`.");
  if constexpr (detail::has_options_type<O>::value) {
    static_assert(detail::optimizer_constructible<O>::value,
                  "keel optimizer policy: needs a constructor O(const keel::optim::NamedParameters&, O::Options).");
  }
  static_assert(detail::has_step<O>::value, "keel optimizer policy: needs `void step()`.");
  static_assert(detail::has_zero_grad<O>::value, "keel optimizer policy: needs `void zero_grad()`.");
  static_assert(detail::has_lr<O>::value, "keel optimizer policy: needs `double lr(std::size_t group) const`.");
  static_assert(detail::has_group_count<O>::value, "keel optimizer policy: needs `std::size_t group_count() const`.");
  static_assert(detail::has_torch_optimizer<O>::value,
                "keel optimizer policy: needs `torch::optim::Optimizer& torch_optimizer()` (schedulers drive it).");
  static_assert(detail::has_state<O>::value,
                "keel optimizer policy: needs `keel::optim::OptimizerState state() const` (what a checkpoint saves).");
  static_assert(detail::has_check<O>::value,
                "keel optimizer policy: needs `std::vector<std::string> check(const keel::optim::OptimizerState&) const`.");
  static_assert(detail::has_apply<O>::value,
                "keel optimizer policy: needs `void apply(const keel::optim::OptimizerState&)`.");
  static_assert(detail::has_describe_prefix<O>::value,
                "keel optimizer policy: needs `void describe(keel::Fingerprint&, const std::string& prefix) const`.");
  return true;
}

template <class S>
constexpr bool check_scheduler() {
  static_assert(detail::has_options_type<S>::value, "keel scheduler policy: needs a nested type `Options`.");
  if constexpr (detail::has_options_type<S>::value) {
    static_assert(detail::scheduler_constructible<S>::value,
                  "keel scheduler policy: needs a constructor S(torch::optim::Optimizer&, S::Options).");
  }
  static_assert(detail::has_step<S>::value, "keel scheduler policy: needs `void step()`, called after every optimizer step.");
  static_assert(detail::has_base_lrs<S>::value,
                "keel scheduler policy: needs `const std::vector<double>& base_lrs() const`.");
  static_assert(detail::has_describe_prefix<S>::value,
                "keel scheduler policy: needs `void describe(keel::Fingerprint&, const std::string& prefix) const`.");
  return true;
}

}  // namespace keel
