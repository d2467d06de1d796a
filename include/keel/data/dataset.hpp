#pragma once
// What the Trainer needs of a dataset: `size()` and `get(index)` returning an example, or, for
// speed, `get_batch(indices)` returning a whole batch. A dataset with only `get` is batched by
// stacking `data` and `target` of torch::data::Example<> examples.

#include <keel/data/sampler.hpp>

#include <torch/data/example.h>
#include <torch/types.h>

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::data {

using Example = torch::data::Example<>;

template <class D, class = void>
struct has_get_batch : std::false_type {};
template <class D>
struct has_get_batch<D, std::void_t<decltype(std::declval<D&>().get_batch(
                            std::declval<const std::vector<std::int64_t>&>()))>> : std::true_type {};

template <class D, class = void>
struct has_get : std::false_type {};
template <class D>
struct has_get<D, std::void_t<decltype(std::declval<D&>().get(std::size_t{}))>> : std::true_type {};

template <class D, class = void>
struct has_size : std::false_type {};
template <class D>
struct has_size<D, std::void_t<decltype(std::declval<const D&>().size())>> : std::true_type {};

template <class D>
constexpr bool check_dataset() {
  static_assert(has_size<D>::value,
                "keel: a dataset needs `size()`, the number of samples (as in torch::data).");
  static_assert(has_get_batch<D>::value || has_get<D>::value,
                "keel: a dataset needs `get(std::size_t index)` returning one example, or "
                "`get_batch(const std::vector<std::int64_t>& indices)` returning a batch.");
  return true;
}

/// Loads the samples `indices` as one batch.
template <class D>
auto fetch_batch(D& dataset, const std::vector<std::int64_t>& indices) {
  if constexpr (has_get_batch<D>::value) {
    return dataset.get_batch(indices);
  } else {
    std::vector<torch::Tensor> data;
    std::vector<torch::Tensor> target;
    data.reserve(indices.size());
    target.reserve(indices.size());
    for (auto index : indices) {
      auto example = dataset.get(static_cast<std::size_t>(index));
      data.push_back(std::move(example.data));
      target.push_back(std::move(example.target));
    }
    return Example(torch::stack(data), torch::stack(target));
  }
}

template <class D>
std::int64_t dataset_size(const D& dataset) {
  const auto size = dataset.size();
  if constexpr (std::is_integral_v<std::decay_t<decltype(size)>>) {
    return static_cast<std::int64_t>(size);
  } else {
    return static_cast<std::int64_t>(size.value());  // torch::optional<size_t> in torch::data
  }
}

/// Moves every tensor of a batch to `device` (Example, or a type with `to(device)`).
inline Example to_device(Example batch, const torch::Device& device) {
  if (batch.data.defined()) batch.data = batch.data.to(device);
  if (batch.target.defined()) batch.target = batch.target.to(device);
  return batch;
}
template <class Batch>
Batch to_device(Batch batch, const torch::Device& device) {
  return batch.to(device);
}

/// The number of samples in a batch (its first dimension).
inline std::int64_t batch_size_of(const Example& batch) { return batch.data.size(0); }
template <class Batch>
std::int64_t batch_size_of(const Batch& batch) {
  return batch.size();
}

}  // namespace keel::data
