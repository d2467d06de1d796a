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

template <class Model, class Batch>
constexpr bool check_training_step() {
  static_assert(detail::has_training_step<Model, Batch>::value,
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
