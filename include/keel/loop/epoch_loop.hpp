#pragma once
// One epoch of training, from the loop's position (a resume may start mid-epoch): micro-batches
// grouped into accumulation windows of `accumulate` (the epoch's last window may be shorter),
// an optimizer step at the end of each window, and at the end of the epoch validation, the
// epoch counters and the epoch-end save.

#include <keel/data/dataset.hpp>
#include <keel/data/loader.hpp>
#include <keel/data/sampler.hpp>
#include <keel/error.hpp>
#include <keel/hooks.hpp>
#include <keel/loop/evaluation.hpp>
#include <keel/loop/loss_scaler.hpp>
#include <keel/loop/nonfinite.hpp>
#include <keel/loop/optimizer_step.hpp>
#include <keel/loop/precision.hpp>
#include <keel/loop/scheduler_steps.hpp>
#include <keel/loop/stop_conditions.hpp>
#include <keel/serialize_tensor.hpp>
#include <keel/trainer_options.hpp>

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

namespace keel::loop {

/// A validation run in the loop: the metrics reach callbacks (through the hooks), the scheduler
/// and the saver (keep_best).
template <class State, class Saver, class ValidationSet>
void validate(State& s, Saver& saver, ValidationSet* validation) {
  if constexpr (!std::is_same_v<ValidationSet, NoValidation>) {
    if (!validation) return;
    const Metrics metrics = evaluate(s, *validation, /*with_hooks=*/true);
    scheduler_after_validation(s.scheduler, metrics);
    s.publish_lrs();
    saver.after_validation();
  }
}

/// Whether the optimizer step just taken is one that validate_every_steps validates after.
/// Computed from the loop's saved position, so a resumed run decides as the uninterrupted one.
inline bool step_validation_due(const LoopState& loop, const TrainerOptions& options) {
  const auto every = options.validate_every_steps();
  return every > 0 && loop.global_step > 0 && loop.global_step % every == 0;
}

/// Ends an epoch: validation (every validate_every_epochs epochs, unless the epoch's last step
/// was just validated), hooks, the scheduler's epoch step, counters, the epoch save.
template <class State, class Saver, class ValidationSet>
void end_epoch(State& s, Saver& saver, ValidationSet* validation) {
  const auto every = s.options.validate_every_epochs();
  if (every > 0 && (s.loop.epoch + 1) % every == 0 && !step_validation_due(s.loop, s.options))
    validate(s, saver, validation);
  s.dispatch(event::on_train_epoch_end{});
  scheduler_at_epoch_end(s.scheduler);
  s.publish_lrs();
  ++s.loop.epoch;
  s.loop.batch_in_epoch = 0;
  s.loop.epoch_offset = 0;
  saver.after_epoch();
}

/// Trains from the loop's position to the end of the epoch, or until a stop condition holds at
/// an optimizer-step boundary. `whole` samples whole epochs; an epoch resumed with another batch
/// size or number of processes takes the rest of its order, from loop.epoch_offset.
template <class State, class Saver, class TrainSet, class ValidationSet>
void run_epoch(State& s, Saver& saver, StopSignals& signals, TrainSet& train, ValidationSet* validation,
               const data::EpochSampler& whole) {
  // (An offset at or past the end: a checkpoint of the epoch's last step, before its end; the
  // rest is empty, and the epoch ends as the uninterrupted one did.)
  const data::EpochSampler sampler =
      s.loop.epoch_offset == 0 ? whole : whole.starting_at(std::min(s.loop.epoch_offset, whole.dataset_size()));
  const std::int64_t batches = sampler.batches_per_epoch();
  if (s.loop.batch_in_epoch > batches)
    throw ConfigError("keel: the checkpoint's position (batch " + std::to_string(s.loop.batch_in_epoch) +
                      ") lies past the end of an epoch of " + std::to_string(batches) + " batches");
  // Workers start loading at the resume position; earlier samples are never read.
  data::BatchLoader<TrainSet> loader(train, sampler, s.loop.epoch, s.loop.batch_in_epoch,
                                     data::SampleContext(s.loop.data_seed, s.loop.epoch, /*training=*/true),
                                     s.options.workers(), s.options.prefetch_batches());
  if (s.loop.batch_in_epoch == 0 && s.loop.epoch_offset == 0) s.dispatch(event::on_train_epoch_start{});
  s.model->train();
  const std::int64_t accumulate = s.options.accumulate();
  NonFiniteWatch nonfinite(s.options.on_nonfinite(), *s.model);
  LossScaler scaler(s.options, s.loop.loss_scale, *s.model);
  torch::Tensor window_loss;  // the sum of the window's micro-batch losses
  while (s.loop.batch_in_epoch < batches) {
    if (s.loop.micro_batch == 0 && done_at_boundary(s, saver, signals)) return;  // (between optimizer steps only)
    // Windows start at multiples of `accumulate`; the epoch's last one may be shorter.
    const std::int64_t window_start = s.loop.batch_in_epoch - s.loop.micro_batch;
    const std::int64_t window = std::min(accumulate, batches - window_start);

    s.dispatch(event::on_train_batch_start{});
    auto batch = data::to_device(loader.next(), s.options.device());
    torch::Tensor loss;
    {
      AutocastScope autocast(s.options);  // the forward pass only; backward follows its types
      loss = s.model->training_step(batch);
    }
    if (!loss.defined() || loss.numel() != 1)
      throw ConfigError("keel: training_step must return a scalar loss tensor, got " +
                        (loss.defined() ? "shape " + shape_string(loss.sizes()) : std::string("an undefined tensor")));
    s.strategy.before_backward(s, /*window_ends=*/s.loop.micro_batch + 1 == window);
    scaler.scaled(window == 1 ? loss : loss / static_cast<double>(window)).backward();
    s.view.loss = loss.detach();
    nonfinite.check_loss(s.view.loss, s.loop);
    s.view.batch_size = data::batch_size_of(batch);
    window_loss = s.loop.micro_batch == 0 ? s.view.loss : window_loss + s.view.loss;
    ++s.loop.batch_in_epoch;
    ++s.loop.micro_batch;
    s.dispatch(event::on_train_batch_end{});

    if (s.loop.micro_batch == window) {
      optimizer_step(s, nonfinite, scaler, window, window_loss);
      if (step_validation_due(s.loop, s.options)) validate(s, saver, validation);
      saver.after_step(/*epoch_ends=*/s.loop.batch_in_epoch == batches);
    }
  }
  end_epoch(s, saver, validation);
}

}  // namespace keel::loop
