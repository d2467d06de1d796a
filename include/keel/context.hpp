#pragma once
// What callbacks see of the training loop: one Context, passed to every hook. It is a
// read-only view (the loop's position and what the loop published) plus one handle that
// writes: request_stop().

#include <keel/loop_state.hpp>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace keel {

/// Named scalar metrics, e.g. {"val_loss": 0.31, "val_accuracy": 0.89}.
using Metrics = std::map<std::string, double>;

/// What the loop publishes for callbacks besides its position. Written by the loop's pieces
/// (keel/loop/) as they go; not saved (everything here is recomputed or refilled).
struct LoopView {
  torch::Tensor loss;          ///< latest micro-batch loss, then the step's mean loss (detached)
  double lr = 0.0;             ///< learning rate of the first param group
  std::vector<double> lrs;     ///< learning rate of every param group, in the optimizer's order
  std::vector<std::string> lr_groups;  ///< the param groups' names ("default" without ParamGroups)
  double grad_norm = std::numeric_limits<double>::quiet_NaN();  ///< before clipping (NaN: no clipping)
  Metrics metrics;             ///< of the latest validation run
  Metrics batch_metrics;       ///< of the validation batch just processed
  std::int64_t batch_size = 0;  ///< samples in the latest training micro-batch
  int rank = 0;                 ///< this process's rank in a data-parallel job (0 alone)
  int world_size = 1;           ///< processes training together (1 alone)
  std::int64_t max_steps = 0;
  std::int64_t max_epochs = 0;
  std::int64_t batches_per_epoch = 0;
  std::int64_t steps_per_epoch = 0;
  std::string checkpoint_path;    ///< being written (on_save_checkpoint_*) or read (on_load_checkpoint)
  std::exception_ptr exception;   ///< leaving fit() (during on_exception)
};

/// The loop as callbacks see it. Not copyable: hooks take it by reference.
class Context {
 public:
  Context(LoopState& loop, const LoopView& view, torch::nn::Module& model)
      : loop_(loop), stop_flag_(loop.stop_requested), view_(view), model_(model) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const LoopState& loop() const noexcept { return loop_; }
  std::int64_t epoch() const noexcept { return loop_.epoch; }
  std::int64_t global_step() const noexcept { return loop_.global_step; }
  /// Micro-batches trained in this epoch; in an epoch resumed with another batch size or number
  /// of processes, since the resume (LoopState::epoch_offset).
  std::int64_t batch_in_epoch() const noexcept { return loop_.batch_in_epoch; }

  torch::nn::Module& model() noexcept { return model_; }

  /// Loss of the latest training micro-batch (after on_train_batch_end), or the mean loss of
  /// the latest optimizer step's window (after on_optimizer_step_end). Detached.
  const torch::Tensor& loss() const noexcept { return view_.loss; }
  /// Learning rate of the first parameter group.
  double lr() const noexcept { return view_.lr; }
  /// Learning rate of every parameter group, in the optimizer's order (one entry without
  /// keel::optim::ParamGroups).
  const std::vector<double>& lrs() const noexcept { return view_.lrs; }
  /// The parameter groups' names, in the order of lrs() ("default" for the parameters no
  /// ParamGroup selects).
  const std::vector<std::string>& lr_groups() const noexcept { return view_.lr_groups; }
  /// Global norm of the gradients of the latest optimizer step, before clipping; NaN when no
  /// clipping is configured (TrainerOptions::clip_grad_norm, clip_grad_value).
  double grad_norm() const noexcept { return view_.grad_norm; }
  /// Metrics of the latest validation run.
  const Metrics& metrics() const noexcept { return view_.metrics; }
  /// Metrics of the validation batch just processed (on_validation_batch_end).
  const Metrics& batch_metrics() const noexcept { return view_.batch_metrics; }

  /// Samples in the latest training micro-batch, of this process (every process of a
  /// data-parallel job takes as many: the job's are batch_size() * world_size()).
  std::int64_t batch_size() const noexcept { return view_.batch_size; }

  /// This process's rank among the world_size() processes of a data-parallel job
  /// (keel::strategy<keel::DataParallel>); 0 and 1 for a process training alone.
  int rank() const noexcept { return view_.rank; }
  int world_size() const noexcept { return view_.world_size; }
  /// Whether this process writes logs and prints progress: rank 0, or a process alone. The
  /// other ranks keep the same callback state without writing (so that a checkpoint, which rank
  /// 0 writes, holds theirs too), as keel's loggers do.
  bool is_global_zero() const noexcept { return view_.rank == 0; }

  std::int64_t max_steps() const noexcept { return view_.max_steps; }
  std::int64_t max_epochs() const noexcept { return view_.max_epochs; }
  /// Micro-batches of a whole epoch (an epoch resumed with other batches ends sooner).
  std::int64_t batches_per_epoch() const noexcept { return view_.batches_per_epoch; }
  /// Optimizer steps per epoch (the last accumulation window of an epoch may be short).
  std::int64_t steps_per_epoch() const noexcept { return view_.steps_per_epoch; }
  /// Optimizer steps the whole fit will take, as far as max_steps and max_epochs say.
  std::int64_t total_steps() const noexcept {
    const std::int64_t by_epochs = view_.max_epochs > 0 ? view_.max_epochs * view_.steps_per_epoch : 0;
    if (view_.max_steps > 0 && by_epochs > 0) return std::min(view_.max_steps, by_epochs);
    return view_.max_steps > 0 ? view_.max_steps : by_epochs;
  }

  /// File being written (on_save_checkpoint_*) or read (on_load_checkpoint).
  const std::string& checkpoint_path() const noexcept { return view_.checkpoint_path; }

  /// The exception leaving fit() (during on_exception), else null.
  std::exception_ptr exception() const noexcept { return view_.exception; }

  /// Ask the trainer to stop at the next optimizer-step boundary. The request is part of the
  /// loop's saved state, so a resumed run stops too.
  void request_stop() noexcept { stop_flag_ = true; }
  bool stop_requested() const noexcept { return loop_.stop_requested; }

 private:
  const LoopState& loop_;
  bool& stop_flag_;  // the one field of the loop state a callback may set
  const LoopView& view_;
  torch::nn::Module& model_;
};

}  // namespace keel
