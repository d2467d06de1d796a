#pragma once
// TrainerOptions: the loop's settings, with LibTorch-style fluent setters.

#include <keel/error.hpp>
#include <keel/lineage.hpp>

#include <torch/arg.h>
#include <torch/types.h>

#include <cmath>
#include <csignal>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace keel {

/// What the Trainer does when a loss or gradient is NaN or infinite.
enum class NonFinitePolicy {
  stop,       ///< throw keel::NonFiniteError naming the step, before the optimizer applies anything
  skip_step,  ///< drop the step's gradients, count it (LoopState::skipped_steps) and go on
};

/// The precision of the forward passes (training_step, validation_step): float32, or autocast
/// to a 16-bit type (matrix products and convolutions in 16 bits, reductions and the weights in
/// float32). The backward pass follows the forward's types, as in PyTorch.
enum class Precision {
  fp32,  ///< no autocast
  bf16,  ///< autocast to bfloat16, on the CPU or CUDA
  fp16,  ///< autocast to float16, CUDA only, with dynamic loss scaling (LossScaling)
};
inline const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::bf16: return "bf16";
    case Precision::fp16: return "fp16";
    default: return "fp32";
  }
}

/// Dynamic loss scaling (keel/loop/loss_scaler.hpp); the defaults are PyTorch's GradScaler's.
struct LossScaling {
  /// The scale a run starts with.
  TORCH_ARG(double, init_scale) = 65536.0;
  /// The scale is multiplied by this after `growth_interval` steps in a row without overflow...
  TORCH_ARG(double, growth_factor) = 2.0;
  TORCH_ARG(std::int64_t, growth_interval) = 2000;
  /// ...and by this after a step whose gradients overflowed (the step is skipped).
  TORCH_ARG(double, backoff_factor) = 0.5;
  /// Gradients still not finite after this many back-offs in a row are not an overflow (a NaN
  /// from the model or the data): from then on TrainerOptions::on_nonfinite decides.
  TORCH_ARG(std::int64_t, max_backoffs_in_a_row) = 40;
};

struct TrainerOptions {
  /// Where the model trains: torch::kCPU or torch::Device(torch::kCUDA, i).
  TORCH_ARG(torch::Device, device) = torch::kCPU;
  /// Stop after this many epochs (0: no epoch limit).
  TORCH_ARG(std::int64_t, max_epochs) = 1;
  /// Stop after this many optimizer steps in total (0: no step limit).
  TORCH_ARG(std::int64_t, max_steps) = 0;
  /// Samples per micro-batch.
  TORCH_ARG(std::int64_t, batch_size) = 32;
  /// Micro-batches whose gradients are accumulated into one optimizer step.
  TORCH_ARG(std::int64_t, accumulate) = 1;
  /// Shuffle the training data, with a permutation per epoch derived from `seed`.
  TORCH_ARG(bool, shuffle) = true;
  /// Drop the last incomplete batch of each epoch.
  TORCH_ARG(bool, drop_last) = false;
  /// Threads that load batches ahead of the training step (0: load in the training thread).
  /// Results do not depend on it: a run may resume with another count and stay bitwise exact.
  TORCH_ARG(int, workers) = 0;
  /// Batches loaded ahead at most (0: twice the workers).
  TORCH_ARG(int, prefetch_batches) = 0;
  /// Seed of the data order and of per-sample randomness (SampleContext). Seed LibTorch's generators yourself (keel::seed_everything)
  /// before building the model, so its initialization is reproducible too.
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// LibTorch intra-op threads (0: leave LibTorch's setting). Part of exactness: another
  /// thread count changes reduction order, and a resume with another count is not bitwise.
  TORCH_ARG(int, threads) = 0;
  /// Directory for checkpoints (empty: no checkpoints are written).
  TORCH_ARG(std::string, checkpoint_dir);
  /// Write a checkpoint every this many optimizer steps (0: only at epoch ends and the end).
  TORCH_ARG(std::int64_t, save_every_steps) = 0;
  /// Write a checkpoint at the end of every epoch.
  TORCH_ARG(bool, save_on_epoch_end) = true;
  /// Keep the newest this many checkpoints (0: keep all).
  TORCH_ARG(std::int64_t, keep_last) = 3;
  /// Also keep this many checkpoints with the best value of `monitor` (0: none).
  TORCH_ARG(std::int64_t, keep_best) = 0;
  /// The validation metric that ranks checkpoints for keep_best, e.g. "val_loss".
  TORCH_ARG(std::string, monitor);
  /// Whether a higher value of `monitor` is better (accuracy) or a lower one (loss).
  TORCH_ARG(bool, monitor_higher_is_better) = false;
  /// At the start of fit(): "never", "auto" (the newest valid checkpoint in checkpoint_dir,
  /// if any) or the path of a checkpoint file.
  TORCH_ARG(std::string, resume) = "never";
  /// Configuration entries a resume may change (a fork): fingerprint keys ("scheduler.total_steps"),
  /// prefixes ending in '*' ("scheduler.*"), or "*" for any. Empty (the default): a resume with
  /// another configuration is refused. keel prints each change once and records it in the run's
  /// lineage; some changes are refused even so (another model or optimizer type, the data
  /// order in the middle of an epoch).
  TORCH_ARG(std::vector<std::string>, allow_changes);
  /// With resume("auto"): when checkpoint_dir holds no checkpoint yet, continue the run of this
  /// checkpoint file instead (its whole state; a fork where allow_changes lets the configuration
  /// differ). Restarted with the same options, the run resumes its own newest checkpoint.
  TORCH_ARG(std::string, fork_from);
  /// At a fork that changes the scheduler's configuration: what the schedule does from the fork
  /// on (keel::ScheduleExtension::rescale, append_constant, append_cosine).
  TORCH_ARG(ScheduleExtension, schedule_extension);
  /// Warm start: a checkpoint whose weights (or weights and optimizer state, init_mode) start a
  /// new run, when there is nothing to resume (resume "never", or "auto" with no checkpoint).
  TORCH_ARG(std::string, init_from);
  /// What init_from takes: InitFrom::weights (default) or InitFrom::weights_and_optimizer.
  TORCH_ARG(InitFrom, init_mode) = InitFrom::weights;
  /// init_from with every tensor matching by name, shape and dtype (default); false takes the
  /// tensors that match and lists the others (missing, unexpected, another shape).
  TORCH_ARG(bool, init_strict) = true;
  /// Batch size for validation (0: batch_size).
  TORCH_ARG(std::int64_t, validation_batch_size) = 0;
  /// Validate every this many optimizer steps as well (0: only at epoch ends). Its metrics reach
  /// callbacks, loggers, keep_best and ReduceLROnPlateau like an epoch's.
  TORCH_ARG(std::int64_t, validate_every_steps) = 0;
  /// Validate at the end of every this many epochs (0: never at epoch ends). An epoch whose last
  /// optimizer step was just validated (validate_every_steps) is not validated twice.
  TORCH_ARG(std::int64_t, validate_every_epochs) = 1;
  /// LibTorch's deterministic algorithms for the whole process (recorded in the fingerprint): an operation without a
  /// deterministic implementation throws instead of running (the error names it), and on CUDA
  /// cuBLAS gets the workspace setting it needs (CUBLAS_WORKSPACE_CONFIG=:4096:8, unless set;
  /// it takes effect for cuBLAS handles created afterwards, so build the Trainer before any
  /// CUDA work). Off by default: keel's CPU and cuDNN paths are deterministic already (cuDNN's
  /// deterministic algorithms are always selected on CUDA); turn it on to have LibTorch prove
  /// that nothing else in a model is not. What it costs: see README "Determinism".
  TORCH_ARG(bool, deterministic) = false;
  /// Forward passes in float32 (default) or under autocast (Precision::bf16; fp16 on CUDA).
  TORCH_ARG(Precision, precision) = Precision::fp32;
  /// Dynamic loss scaling: always on under Precision::fp16 (with these settings, or the
  /// defaults when unset); set it to scale the loss under fp32 or bf16 as well.
  TORCH_ARG(std::optional<LossScaling>, loss_scaling);
  /// Clip the gradients' global norm to this value before each optimizer step (0: off), after
  /// accumulation; the norm before clipping reaches callbacks (Context::grad_norm) and logs.
  TORCH_ARG(double, clip_grad_norm) = 0.0;
  /// The norm clip_grad_norm measures: 2 (Euclidean), 1, or infinity (largest entry).
  TORCH_ARG(double, clip_grad_norm_type) = 2.0;
  /// Clamp every gradient entry to [-value, value] before each optimizer step (0: off); the
  /// global 2-norm before clamping is reported as with clip_grad_norm.
  TORCH_ARG(double, clip_grad_value) = 0.0;
  /// Signals that stop training gracefully while fit() runs: the step in progress finishes, a
  /// checkpoint is written, and fit() throws keel::Interrupted (exit_status() = 128 + signal).
  /// Empty: keel installs no handler.
  TORCH_ARG(std::vector<int>, stop_signals) = std::vector<int>{SIGTERM, SIGINT, SIGUSR1};
  /// When a checkpoint cannot be written (disk full, quota, I/O error): false stops training
  /// with the error; true warns and retries at the next save (the previous checkpoint stays).
  TORCH_ARG(bool, continue_on_save_error) = false;
  /// Checkpoints written by a thread of their own while training goes on: at the step boundary
  /// the state is copied into memory (kept from one save to the next: it costs the state's size
  /// in RAM) and training continues while the copy is written, fsync'ed and committed. At most
  /// one save is in flight; the next save, the end of fit, a stop signal and an exception wait
  /// for it; last.ckpt moves only once it is committed; a write that fails follows
  /// continue_on_save_error when the training thread learns of it (at the next save or the end
  /// of fit). The files are the same bytes as without it. on_save_checkpoint_end comes then
  /// too, once the file is committed: callbacks see a later step by that time.
  TORCH_ARG(bool, async_save) = false;
  /// A NaN or infinite loss (any micro-batch) or gradient (before each optimizer step).
  TORCH_ARG(NonFinitePolicy, on_nonfinite) = NonFinitePolicy::stop;

 public:  // (TORCH_ARG leaves the access private)
  /// Adds a setting of yours to the configuration fingerprint (as `user.<key>`), so that a
  /// resume with another value is refused: dataset version, augmentation, model width...
  TrainerOptions& config(std::string key, std::string value) {
    config_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  const std::vector<std::pair<std::string, std::string>>& config() const noexcept { return config_; }

  /// Whether the loss is scaled (fp16, or loss_scaling set), and with which settings.
  bool scales_loss() const noexcept { return precision_ == Precision::fp16 || loss_scaling_.has_value(); }
  LossScaling loss_scaling_or_default() const { return loss_scaling_.value_or(LossScaling{}); }

  /// Throws ConfigError naming the first bad value and what it must be. Changes nothing: the
  /// process-wide settings (threads, determinism) are applied by keel::apply_process_settings.
  void validate() const {
    auto positive = [](const char* name, std::int64_t value) {
      if (value <= 0)
        throw ConfigError(std::string("keel::TrainerOptions: ") + name + " must be positive, got " +
                          std::to_string(value));
    };
    auto non_negative = [](const char* name, std::int64_t value) {
      if (value < 0)
        throw ConfigError(std::string("keel::TrainerOptions: ") + name + " must be >= 0, got " +
                          std::to_string(value));
    };
    positive("batch_size", batch_size_);
    positive("accumulate", accumulate_);
    non_negative("max_epochs", max_epochs_);
    non_negative("max_steps", max_steps_);
    non_negative("save_every_steps", save_every_steps_);
    non_negative("keep_last", keep_last_);
    non_negative("keep_best", keep_best_);
    if (keep_best_ > 0 && monitor_.empty())
      throw ConfigError("keel::TrainerOptions: keep_best(" + std::to_string(keep_best_) +
                        ") needs monitor(\"<validation metric>\"), e.g. monitor(\"val_loss\")");
    non_negative("validation_batch_size", validation_batch_size_);
    non_negative("validate_every_steps", validate_every_steps_);
    non_negative("validate_every_epochs", validate_every_epochs_);
    if (!(clip_grad_norm_ >= 0.0))
      throw ConfigError("keel::TrainerOptions: clip_grad_norm must be >= 0 (0: off), got " + std::to_string(clip_grad_norm_));
    if (!(clip_grad_value_ >= 0.0))
      throw ConfigError("keel::TrainerOptions: clip_grad_value must be >= 0 (0: off), got " + std::to_string(clip_grad_value_));
    if (clip_grad_norm_ > 0.0 && clip_grad_value_ > 0.0)
      throw ConfigError("keel::TrainerOptions: set clip_grad_norm or clip_grad_value, not both");
    if (precision_ == Precision::fp16 && !device_.is_cuda())
      throw ConfigError("keel::TrainerOptions: precision fp16 needs a CUDA device (LibTorch's CPU autocast has no "
                        "float16); use Precision::bf16 on the CPU");
    if (loss_scaling_) {
      const LossScaling& scaling = *loss_scaling_;
      if (!(scaling.init_scale() > 0.0 && std::isfinite(scaling.init_scale())))
        throw ConfigError("keel::TrainerOptions: loss_scaling init_scale must be positive and finite, got " +
                          std::to_string(scaling.init_scale()) + " (PyTorch's default: 65536)");
      if (!(scaling.growth_factor() > 1.0 && std::isfinite(scaling.growth_factor())))
        throw ConfigError("keel::TrainerOptions: loss_scaling growth_factor must be > 1, got " +
                          std::to_string(scaling.growth_factor()) + " (PyTorch's default: 2)");
      if (!(scaling.backoff_factor() > 0.0 && scaling.backoff_factor() < 1.0))
        throw ConfigError("keel::TrainerOptions: loss_scaling backoff_factor must be in (0, 1), got " +
                          std::to_string(scaling.backoff_factor()) + " (PyTorch's default: 0.5)");
      positive("loss_scaling growth_interval", scaling.growth_interval());
      positive("loss_scaling max_backoffs_in_a_row", scaling.max_backoffs_in_a_row());
    }
    if (!(clip_grad_norm_type_ > 0.0))
      throw ConfigError("keel::TrainerOptions: clip_grad_norm_type must be positive (2, 1, or infinity), got " +
                        std::to_string(clip_grad_norm_type_));
    non_negative("threads", threads_);
    non_negative("workers", workers_);
    non_negative("prefetch_batches", prefetch_batches_);
    if (max_epochs_ == 0 && max_steps_ == 0)
      throw ConfigError("keel::TrainerOptions: set max_epochs or max_steps (both are 0, so training "
                        "would never end)");
    if (resume_.empty())
      throw ConfigError("keel::TrainerOptions: resume is empty; use \"never\", \"auto\" or a checkpoint path");
    if (resume_ == "auto" && checkpoint_dir_.empty())
      throw ConfigError("keel::TrainerOptions: resume \"auto\" needs a checkpoint_dir to look in");
    for (const auto& pattern : allow_changes_)
      if (pattern.empty())
        throw ConfigError("keel::TrainerOptions: allow_changes holds an empty entry; use keys such as "
                          "\"scheduler.total_steps\", prefixes such as \"scheduler.*\", or \"*\"");
    if (!init_from_.empty() && resume_ != "never" && resume_ != "auto")
      throw ConfigError("keel::TrainerOptions: init_from(\"" + init_from_ + "\") starts a new run, but resume(\"" +
                        resume_ + "\") continues one; use resume(\"auto\") (warm start unless the run has a "
                        "checkpoint of its own) or resume(\"never\")");
    if (!fork_from_.empty() && resume_ != "auto")
      throw ConfigError("keel::TrainerOptions: fork_from(\"" + fork_from_ + "\") needs resume(\"auto\") (the run's "
                        "own checkpoints come first), not resume(\"" + resume_ + "\")");
    if (!fork_from_.empty() && !init_from_.empty())
      throw ConfigError("keel::TrainerOptions: set fork_from (continue a run) or init_from (a new run from its "
                        "weights), not both");
    if (!init_from_.empty() && !init_strict_ && init_mode_ == InitFrom::weights_and_optimizer)
      throw ConfigError("keel::TrainerOptions: init_strict(false) takes some tensors and skips others, which "
                        "the optimizer state cannot follow; use InitFrom::weights with init_strict(false)");
  }

 private:
  std::vector<std::pair<std::string, std::string>> config_;
};

}  // namespace keel
