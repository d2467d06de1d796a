#pragma once
// What the Trainer needs of a dataset: `size()` and one of
//
//   Batch   get_batch(const std::vector<std::int64_t>& indices, const keel::data::SampleContext&)
//   Batch   get_batch(const std::vector<std::int64_t>& indices)
//   Example get(std::size_t index, const keel::data::SampleContext&)
//   Example get(std::size_t index)
//
// (the first one present is used). Examples from `get` are batched by stacking `data` and
// `target` (torch::data::Example<>). The SampleContext gives each sample its own random
// generator, a pure function of (seed, epoch, sample index): augmentation drawn from it is the
// same whatever the worker count, the order of loading or a resume. Datasets are read from
// several worker threads at once, so `get`/`get_batch` must be safe to call concurrently, and
// must not draw from LibTorch's global generator (that stream belongs to the training step).

#include <keel/data/sampler.hpp>
#include <keel/error.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/data/example.h>
#include <torch/types.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::data {

using Example = torch::data::Example<>;

/// Per-epoch facts a dataset may use while loading: whether this is training (augment) or
/// evaluation (do not), the epoch, and a random generator per sample.
class SampleContext {
 public:
  SampleContext(std::uint64_t seed, std::int64_t epoch, bool training)
      : seed_(seed), epoch_(epoch), training_(training) {}

  bool training() const noexcept { return training_; }
  std::int64_t epoch() const noexcept { return epoch_; }

  /// A seed for sample `index` of this epoch, for engines of your own.
  std::uint64_t sample_seed(std::int64_t index) const {
    return derive_seed(seed_, 0x617567u /* "aug" */, static_cast<std::uint64_t>(epoch_),
                       static_cast<std::uint64_t>(index));
  }
  /// A LibTorch generator for sample `index` of this epoch (pass it to torch::rand & co.).
  at::Generator generator(std::int64_t index) const { return at::detail::createCPUGenerator(sample_seed(index)); }

 private:
  std::uint64_t seed_;
  std::int64_t epoch_;
  bool training_;
};

/// A failure while loading a sample, with the sample index; re-raised in the training thread.
class LoadError : public Error {
 public:
  LoadError(std::int64_t sample, const std::string& what)
      : Error("keel: loading sample " + std::to_string(sample) + " failed: " + what), sample_(sample) {}
  std::int64_t sample() const noexcept { return sample_; }

 private:
  std::int64_t sample_;
};

namespace detail {
using Indices = std::vector<std::int64_t>;

template <class D, class = void>
struct has_get_batch_ctx : std::false_type {};
template <class D>
struct has_get_batch_ctx<D, std::void_t<decltype(std::declval<D&>().get_batch(std::declval<const Indices&>(),
                                                                                std::declval<const SampleContext&>()))>>
    : std::true_type {};
template <class D, class = void>
struct has_get_batch : std::false_type {};
template <class D>
struct has_get_batch<D, std::void_t<decltype(std::declval<D&>().get_batch(std::declval<const Indices&>()))>>
    : std::true_type {};
template <class D, class = void>
struct has_get_ctx : std::false_type {};
template <class D>
struct has_get_ctx<D, std::void_t<decltype(std::declval<D&>().get(std::size_t{}, std::declval<const SampleContext&>()))>>
    : std::true_type {};
template <class D, class = void>
struct has_get : std::false_type {};
template <class D>
struct has_get<D, std::void_t<decltype(std::declval<D&>().get(std::size_t{}))>> : std::true_type {};
template <class D, class = void>
struct has_size : std::false_type {};
template <class D>
struct has_size<D, std::void_t<decltype(std::declval<const D&>().size())>> : std::true_type {};

template <class D>
auto get_one(D& dataset, std::int64_t index, const SampleContext& ctx) {
  if constexpr (has_get_ctx<D>::value) {
    return dataset.get(static_cast<std::size_t>(index), ctx);
  } else {
    return dataset.get(static_cast<std::size_t>(index));
  }
}
}  // namespace detail

template <class D>
constexpr bool check_dataset() {
  static_assert(detail::has_size<D>::value,
                "keel: a dataset needs `size()`, the number of samples (as in torch::data).");
  static_assert(detail::has_get_batch_ctx<D>::value || detail::has_get_batch<D>::value ||
                    detail::has_get_ctx<D>::value || detail::has_get<D>::value,
                "keel: a dataset needs `get(std::size_t index)` returning one example, or "
                "`get_batch(const std::vector<std::int64_t>& indices)` returning a batch (either "
                "may take a `const keel::data::SampleContext&` second argument).");
  return true;
}

/// Loads the samples `indices` as one batch. A failure becomes a LoadError naming the sample
/// (or, for get_batch, the first sample of the batch).
template <class D>
auto fetch_batch(D& dataset, const std::vector<std::int64_t>& indices, const SampleContext& ctx) {
  auto guarded = [&](std::int64_t sample, auto&& load) {
    try {
      return load();
    } catch (const LoadError&) {
      throw;
    } catch (const std::exception& e) {
      throw LoadError(sample, e.what());
    }
  };
  const std::int64_t first = indices.empty() ? -1 : indices.front();
  if constexpr (detail::has_get_batch_ctx<D>::value) {
    return guarded(first, [&] { return dataset.get_batch(indices, ctx); });
  } else if constexpr (detail::has_get_batch<D>::value) {
    return guarded(first, [&] { return dataset.get_batch(indices); });
  } else {
    std::vector<torch::Tensor> data;
    std::vector<torch::Tensor> target;
    data.reserve(indices.size());
    target.reserve(indices.size());
    for (auto index : indices) {
      auto example = guarded(index, [&] { return detail::get_one(dataset, index, ctx); });
      data.push_back(std::move(example.data));
      target.push_back(std::move(example.target));
    }
    return Example(torch::stack(data), torch::stack(target));
  }
}

/// The batch type a dataset yields.
template <class D>
using batch_t = decltype(fetch_batch(std::declval<D&>(), std::declval<const std::vector<std::int64_t>&>(),
                                     std::declval<const SampleContext&>()));

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
  // Checked here: a call to to() costs a dispatch even when there is nothing to move.
  if (batch.data.defined() && batch.data.device() != device) batch.data = batch.data.to(device);
  if (batch.target.defined() && batch.target.device() != device) batch.target = batch.target.to(device);
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
  return static_cast<std::int64_t>(batch.size());
}

/// Adapts a LibTorch dataset (torch::data::datasets::Dataset, e.g. MNIST) in one line:
///   auto train = keel::data::from_torch(torch::data::datasets::MNIST(root));
template <class TorchDataset>
class TorchDatasetAdapter {
 public:
  explicit TorchDatasetAdapter(TorchDataset dataset) : dataset_(std::move(dataset)) {}
  std::size_t size() const { return dataset_.size().value(); }
  auto get(std::size_t index) { return dataset_.get(index); }
  TorchDataset& dataset() noexcept { return dataset_; }

 private:
  TorchDataset dataset_;
};

template <class TorchDataset>
TorchDatasetAdapter<std::decay_t<TorchDataset>> from_torch(TorchDataset&& dataset) {
  return TorchDatasetAdapter<std::decay_t<TorchDataset>>(std::forward<TorchDataset>(dataset));
}

}  // namespace keel::data
