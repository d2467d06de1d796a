#pragma once
// What components see of the training loop: one Context, passed to every callback hook.

#include <cereal/cereal.hpp>
#include <torch/nn/module.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>

namespace keel {

/// Named scalar metrics, e.g. {"val_loss": 0.31, "val_accuracy": 0.89}.
using Metrics = std::map<std::string, double>;

/// Where the loop stands. Saved in every checkpoint; checkpoints are taken at optimizer-step
/// boundaries, where `micro_batch` is 0 (a resume replays a partial accumulation window).
struct LoopState {
  std::int64_t epoch = 0;           ///< index of the current epoch (= epochs completed)
  std::int64_t global_step = 0;     ///< optimizer steps taken since the start of training
  std::int64_t batch_in_epoch = 0;  ///< micro-batches consumed in the current epoch
  std::int64_t micro_batch = 0;     ///< position inside the gradient-accumulation window
  std::uint64_t data_seed = 0;      ///< seed of the sampler's per-epoch permutations
  bool stop_requested = false;      ///< a callback asked to stop (early stopping)
  std::int64_t skipped_steps = 0;   ///< optimizer steps skipped for a non-finite loss or gradient

  // Version 2 added skipped_steps; files of version 1 read as 0 skipped.
  template <class Archive>
  void serialize(Archive& archive, std::uint32_t version) {
    if (version > 2)
      throw std::runtime_error("keel::LoopState version " + std::to_string(version) +
                               " was written by a newer keel; this keel reads versions up to 2: upgrade keel");
    archive(cereal::make_nvp("epoch", epoch), cereal::make_nvp("global_step", global_step),
            cereal::make_nvp("batch_in_epoch", batch_in_epoch),
            cereal::make_nvp("micro_batch", micro_batch), cereal::make_nvp("data_seed", data_seed),
            cereal::make_nvp("stop_requested", stop_requested));
    if (version >= 2) archive(cereal::make_nvp("skipped_steps", skipped_steps));
  }
};

/// The loop as callbacks see it. Not copyable: hooks take it by reference.
class Context {
 public:
  Context(const LoopState& loop, torch::nn::Module& model) : loop_(loop), model_(model) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const LoopState& loop() const noexcept { return loop_; }
  std::int64_t epoch() const noexcept { return loop_.epoch; }
  std::int64_t global_step() const noexcept { return loop_.global_step; }
  std::int64_t batch_in_epoch() const noexcept { return loop_.batch_in_epoch; }

  torch::nn::Module& model() noexcept { return model_; }

  /// Loss of the latest training micro-batch (after on_train_batch_end), or the mean loss of
  /// the latest optimizer step's window (after on_optimizer_step_end). Detached.
  const torch::Tensor& loss() const noexcept { return loss_; }
  /// Learning rate of the first parameter group.
  double lr() const noexcept { return lr_; }
  /// Metrics of the latest validation run.
  const Metrics& metrics() const noexcept { return metrics_; }
  /// Metrics of the validation batch just processed (on_validation_batch_end).
  const Metrics& batch_metrics() const noexcept { return batch_metrics_; }

  /// Samples in the latest training micro-batch.
  std::int64_t batch_size() const noexcept { return batch_size_; }

  std::int64_t max_steps() const noexcept { return max_steps_; }
  std::int64_t max_epochs() const noexcept { return max_epochs_; }
  std::int64_t batches_per_epoch() const noexcept { return batches_per_epoch_; }
  /// Optimizer steps per epoch (the last accumulation window of an epoch may be short).
  std::int64_t steps_per_epoch() const noexcept { return steps_per_epoch_; }
  /// Optimizer steps the whole fit will take, as far as max_steps and max_epochs say.
  std::int64_t total_steps() const noexcept {
    const std::int64_t by_epochs = max_epochs_ > 0 ? max_epochs_ * steps_per_epoch_ : 0;
    if (max_steps_ > 0 && by_epochs > 0) return std::min(max_steps_, by_epochs);
    return max_steps_ > 0 ? max_steps_ : by_epochs;
  }

  /// File being written (on_save_checkpoint_*) or read (on_load_checkpoint).
  const std::string& checkpoint_path() const noexcept { return checkpoint_path_; }

  /// The exception leaving fit() (during on_exception), else null.
  std::exception_ptr exception() const noexcept { return exception_; }

  /// Ask the trainer to stop after the current optimizer step (the request is saved).
  void request_stop() noexcept { stop_request_ = true; }
  bool stop_requested() const noexcept { return stop_request_ || loop_.stop_requested; }

 private:
  template <class...>
  friend class Trainer;

  const LoopState& loop_;
  torch::nn::Module& model_;
  torch::Tensor loss_;
  double lr_ = 0.0;
  Metrics metrics_;
  Metrics batch_metrics_;
  std::int64_t max_steps_ = 0;
  std::int64_t max_epochs_ = 0;
  std::int64_t batches_per_epoch_ = 0;
  std::int64_t steps_per_epoch_ = 0;
  std::int64_t batch_size_ = 0;
  std::string checkpoint_path_;
  std::exception_ptr exception_;
  bool stop_request_ = false;
};

}  // namespace keel

CEREAL_CLASS_VERSION(keel::LoopState, 2);
