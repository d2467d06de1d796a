#pragma once
// What the loop needs of the model, checked at compile time with messages that name the
// member and its signature.

#include <keel/context.hpp>

#include <torch/types.h>

#include <type_traits>
#include <utility>

namespace keel::loop {

namespace detail {
template <class Model, class Batch, class = void>
struct has_training_step : std::false_type {};
template <class Model, class Batch>
struct has_training_step<Model, Batch,
                         std::void_t<decltype(std::declval<Model&>().training_step(std::declval<const Batch&>()))>>
    : std::is_convertible<decltype(std::declval<Model&>().training_step(std::declval<const Batch&>())),
                          torch::Tensor> {};

template <class Model, class Batch, class = void>
struct has_validation_step : std::false_type {};
template <class Model, class Batch>
struct has_validation_step<
    Model, Batch, std::void_t<decltype(std::declval<Model&>().validation_step(std::declval<const Batch&>()))>>
    : std::is_convertible<decltype(std::declval<Model&>().validation_step(std::declval<const Batch&>())),
                          Metrics> {};
}  // namespace detail

/// Instantiated with the type a training_step returned, so that the compiler's "in
/// instantiation of training_step_returned<...>" line shows it.
template <class Returned>
constexpr bool training_step_returned() {
  static_assert(std::is_convertible_v<Returned, torch::Tensor>,
                "keel: the model's training_step must return torch::Tensor, the scalar loss of the batch; the "
                "type it returns is the template argument of keel::loop::training_step_returned<...> on the "
                "instantiation line of this error.");
  return true;
}

template <class Model, class Batch, class = void>
struct training_step_result {
  using type = void;
};
template <class Model, class Batch>
struct training_step_result<Model, Batch,
                            std::void_t<decltype(std::declval<Model&>().training_step(std::declval<const Batch&>()))>> {
  using type = decltype(std::declval<Model&>().training_step(std::declval<const Batch&>()));
  static constexpr bool checked = training_step_returned<type>();
};

template <class Model, class Batch>
constexpr bool check_training_step() {
  if constexpr (!std::is_void_v<typename training_step_result<Model, Batch>::type>) {
    static_assert(training_step_result<Model, Batch>::checked);
    return true;
  }
  static_assert(!std::is_void_v<typename training_step_result<Model, Batch>::type>,
                "keel: the model needs `torch::Tensor training_step(const Batch& batch)` "
                "returning the scalar loss of one batch (Batch is what the dataset's get_batch "
                "returns, torch::data::Example<> by default).");
  return true;
}

template <class Model, class Batch>
constexpr bool check_validation_step() {
  static_assert(detail::has_validation_step<Model, Batch>::value,
                "keel: validation needs the model's `keel::Metrics validation_step(const Batch& batch)`, "
                "returning per-batch mean metrics.");
  return true;
}

}  // namespace keel::loop
