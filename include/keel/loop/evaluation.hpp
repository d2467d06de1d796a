#pragma once
// Evaluation: the model's validation_step over a dataset, in order, without gradients, and the
// sample-weighted means of its metrics. Draws no random numbers, so validating in the middle
// of training changes nothing that follows. In a data-parallel job each rank evaluates its share
// of the samples (each sample once) and the strategy adds up the ranks' sums: every rank gets the
// same means, so it must be called on every rank.

#include <keel/context.hpp>
#include <keel/data/dataset.hpp>
#include <keel/data/loader.hpp>
#include <keel/data/sampler.hpp>
#include <keel/hooks.hpp>
#include <keel/loop/precision.hpp>
#include <keel/loop/requirements.hpp>

#include <torch/types.h>
#include <torch/utils.h>

#include <cstdint>
#include <map>
#include <string>

namespace keel::loop {

/// Runs validation over `dataset`; with `with_hooks`, callbacks see the validation events and
/// the results land in the view (Context::metrics).
template <class State, class Dataset>
Metrics evaluate(State& s, Dataset& dataset, bool with_hooks) {
  static_assert(data::check_dataset<Dataset>());
  static_assert(check_validation_step<typename State::Module, data::batch_t<Dataset>>());
  const auto& options = s.options;
  data::SamplerOptions in_order;
  in_order.batch_size = options.validation_batch_size() > 0 ? options.validation_batch_size() : options.batch_size();
  in_order.shuffle = false;
  in_order = s.strategy.shard(in_order);
  in_order.even = false;  // (no step to take together: each sample once)
  const data::EpochSampler sampler(data::dataset_size(dataset), in_order, 0);
  if (with_hooks) s.dispatch(event::on_validation_start{});
  s.model->eval();
  std::map<std::string, double> sums;
  std::int64_t seen = 0;
  {
    torch::NoGradGuard no_grad;
    data::BatchLoader<Dataset> loader(dataset, sampler, 0, 0,
                                      data::SampleContext(s.loop.data_seed, s.loop.epoch, /*training=*/false),
                                      options.workers(), options.prefetch_batches());
    for (std::int64_t b = 0; b < sampler.batches_per_epoch(); ++b) {
      if (with_hooks) s.dispatch(event::on_validation_batch_start{});
      auto batch = data::to_device(loader.next(), options.device());
      Metrics batch_metrics;
      {
        AutocastScope autocast(options);
        batch_metrics = s.model->validation_step(batch);
      }
      const std::int64_t n = data::batch_size_of(batch);
      for (const auto& [name, value] : batch_metrics) sums[name] += value * static_cast<double>(n);
      seen += n;
      if (with_hooks) {
        s.view.batch_metrics = std::move(batch_metrics);
        s.dispatch(event::on_validation_batch_end{});
      }
    }
  }
  s.model->train();
  s.strategy.add_up(sums, seen);
  Metrics means;
  for (const auto& [name, sum] : sums) means[name] = seen ? sum / static_cast<double>(seen) : 0.0;
  if (with_hooks) {
    s.view.metrics = means;
    s.dispatch(event::on_validation_end{});
  }
  return means;
}

}  // namespace keel::loop
