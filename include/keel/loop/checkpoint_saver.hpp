#pragma once
// The CheckpointSaver alone decides when the training state is written into the checkpoint
// directory (every N optimizer steps, at each epoch end, at the end of fit, after a stop
// signal), knows whether the state has changed since the last checkpoint, applies the I/O-error
// policy (stop, or warn and retry at the next save) and the rotation, and holds the directory
// lock while training runs.

#include <keel/checkpoint/directory.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/hooks.hpp>
#include <keel/log.hpp>
#include <keel/signals.hpp>
#include <keel/state/checkpoint_io.hpp>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace keel::loop {

template <class State, class Format>
class CheckpointSaver {
 public:
  explicit CheckpointSaver(State& s) : s_(s) {}

  /// Whether checkpoints are written at all (a checkpoint_dir is set).
  bool enabled() const { return !s_.options.checkpoint_dir().empty(); }

  /// Locks the checkpoint directory against a second training process (from the first fit on).
  void lock_directory() {
    if (enabled() && !lock_) lock_ = std::make_unique<ckpt::DirectoryLock>(s_.options.checkpoint_dir());
  }

  /// Writes a complete checkpoint to `path` (Trainer::save_checkpoint, and every save here).
  void write(const ckpt::fs::path& path) { state::write_checkpoint<Format>(s_, path, monitor_facts()); }

  // ---- the loop reports what happened; the saver decides -----------------------------------

  /// An optimizer step was taken; `epoch_ends` when it was the epoch's last.
  void after_step(bool epoch_ends) {
    unsaved_ = true;
    const auto every = s_.options.save_every_steps();
    const bool epoch_save_follows = epoch_ends && s_.options.save_on_epoch_end();
    if (every > 0 && s_.loop.global_step % every == 0 && !epoch_save_follows) save();
  }
  /// A validation ran: the next checkpoint records its monitored metric (keep_best).
  void after_validation() { validation_unsaved_ = true; }
  /// An epoch ended (its counters advanced).
  void after_epoch() {
    unsaved_ = true;
    if (s_.options.save_on_epoch_end()) save();
  }
  /// fit() is done: whatever is not saved yet is.
  void at_fit_end() {
    if (unsaved_) save();
  }
  /// A stop signal arrived: saves (unless the state is saved already) and throws Interrupted.
  [[noreturn]] void stop_for_signal(int signal) {
    if (!enabled()) throw Interrupted(signal, "");
    if (unsaved_) {
      save();
      if (unsaved_)  // the save failed and continue_on_save_error let it pass: nothing to resume from
        throw Interrupted(signal, "");
    }
    throw Interrupted(signal, s_.view.checkpoint_path);
  }
  /// The state was just loaded from a checkpoint: nothing is unsaved.
  void loaded() {
    unsaved_ = false;
    validation_unsaved_ = false;
  }

  /// Checkpoints not written because of an I/O error (only with continue_on_save_error).
  std::int64_t failed_saves() const noexcept { return failed_saves_; }

 private:
  /// Writes step-<global step>.ckpt into the directory, moves last.ckpt to it, rotates.
  void save() {
    if (!enabled()) return;
    const auto& options = s_.options;
    const ckpt::fs::path directory = options.checkpoint_dir();
    std::error_code error;
    ckpt::fs::create_directories(directory, error);
    if (error) throw ckpt::IoError("create checkpoint directory", directory, error.value());
    ckpt::remove_stale_temporaries(directory);  // left by a process killed while writing
    const std::string name = ckpt::step_file_name(s_.loop.global_step, Format::extension);
    const std::string previous_path = s_.view.checkpoint_path;
    s_.view.checkpoint_path = (directory / name).string();
    s_.dispatch(event::on_save_checkpoint_start{});
    try {
      write(directory / name);
      ckpt::point_link_atomically(directory / ckpt::last_link_name(Format::extension), name);
    } catch (const ckpt::IoError& e) {
      // The temporary file is gone and the previous checkpoint and last.ckpt are untouched.
      s_.view.checkpoint_path = previous_path;
      if (!options.continue_on_save_error()) throw;
      ++failed_saves_;
      warn("checkpoint at step " + std::to_string(s_.loop.global_step) + " not saved: " + e.what() +
           "; training continues and the next save retries (continue_on_save_error)");
      return;  // still unsaved: the next save (or the end of fit) writes this state's successor
    }
    ckpt::rotate(directory,
                 ckpt::Retention{options.keep_last(), options.keep_best(), options.monitor(),
                                 options.monitor_higher_is_better()},
                 name, Format::extension);
    validation_unsaved_ = false;
    unsaved_ = false;
    s_.dispatch(event::on_save_checkpoint_end{});
  }

  /// The monitored metric of the validation just before this checkpoint ranks it for keep_best.
  state::Facts monitor_facts() const {
    const std::string& monitor = s_.options.monitor();
    if (!validation_unsaved_ || monitor.empty()) return {};
    const auto it = s_.view.metrics.find(monitor);
    if (it == s_.view.metrics.end()) return {};
    char value[40];
    std::snprintf(value, sizeof value, "%.17g", it->second);
    return {{"monitor", monitor}, {"monitor_value", value}};
  }

  State& s_;
  std::unique_ptr<ckpt::DirectoryLock> lock_;
  bool unsaved_ = false;             // the state changed since the last checkpoint
  bool validation_unsaved_ = false;  // a validation ran since the last checkpoint
  std::int64_t failed_saves_ = 0;    // saves skipped under continue_on_save_error
};

}  // namespace keel::loop
