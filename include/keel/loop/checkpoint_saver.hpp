#pragma once
// The CheckpointSaver alone decides when the training state is written into the checkpoint
// directory (every N optimizer steps, at each epoch end, at the end of fit, after a stop
// signal), knows whether the state has changed since the last checkpoint, applies the I/O-error
// policy (stop, or warn and retry at the next save) and the rotation, and holds the directory
// lock while training runs. With TrainerOptions::async_save it snapshots the state and writes it
// on a thread of its own (BackgroundSave), one save in flight at most, and applies the outcome
// of that write where a synchronous save would have: before the next save, at the end of fit,
// at a stop signal. With several processes (keel::DataParallel) one writes, and at each of those
// points every process learns the writer's outcome and applies it alike (collect()).

#include <keel/checkpoint/directory.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/checkpoint/snapshot.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/hooks.hpp>
#include <keel/log.hpp>
#include <keel/rng.hpp>
#include <keel/loop/background_save.hpp>
#include <keel/signals.hpp>
#include <keel/state/checkpoint_io.hpp>
#include <keel/strategy/single_process.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace keel::loop {

template <class State, class Format>
class CheckpointSaver {
 public:
  explicit CheckpointSaver(State& s) : s_(s) {}

  /// Whether checkpoints are written at all (a checkpoint_dir is set).
  bool enabled() const { return !s_.options.checkpoint_dir().empty(); }

  /// Locks the checkpoint directory against a second training process (from the first fit on),
  /// then removes the temporary files that killed writers left there: with the lock held, no
  /// other process writes there, so none appear later.
  void lock_directory() {
    if (!enabled() || lock_ || !s_.strategy.writes_checkpoints()) return;  // (another process writes)
    lock_ = std::make_unique<ckpt::DirectoryLock>(s_.options.checkpoint_dir());
    ckpt::remove_stale_temporaries(s_.options.checkpoint_dir());
  }

  /// Writes a complete checkpoint to `path` now (Trainer::save_checkpoint), after the save in
  /// flight, if any. With several processes every one calls it, and the writer alone writes:
  /// the others return once it has (from the first fit on, when they have joined).
  void write(const ckpt::fs::path& path) {
    collect();
    if (!s_.strategy.writes_checkpoints()) {
      if (s_.strategy.share_save_outcome(SaveOutcome::committed) == SaveOutcome::failed)
        writer_failed(path.string());
      return;
    }
    try {
      std::optional<Fingerprint> fresh;
      state::write_checkpoint<Format>(s_, path, configuration(fresh), monitor_facts());
    } catch (...) {
      s_.strategy.share_save_outcome(SaveOutcome::failed);
      throw;
    }
    s_.strategy.share_save_outcome(SaveOutcome::committed);
  }

  /// fit() starts (after the resume): the configuration is described here, once, and every
  /// checkpoint of the fit records it, rather than every component being described again at
  /// each save, on the training thread's time. It cannot change while fit runs (a component's
  /// describe() says how it was configured, not what it has done).
  void fit_starts() { configuration_ = s_.fingerprint(Format::keel_name); }

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
  /// fit() is done: whatever is not saved yet is, and committed before fit returns.
  void at_fit_end() {
    collect();
    if (unsaved_) save();
    collect();
    configuration_.reset();  // (between fits it may change: an Optional callback switched on, say)
  }
  /// A stop signal arrived: saves (unless the state is saved already) and throws Interrupted.
  [[noreturn]] void stop_for_signal(int signal) {
    if (!enabled()) throw Interrupted(signal, "");
    collect();
    if (unsaved_) {
      save();
      collect();
      if (unsaved_)  // the save failed and continue_on_save_error let it pass: nothing to resume from
        throw Interrupted(signal, "");
    }
    throw Interrupted(signal, s_.view.checkpoint_path);
  }
  /// Something else ends fit (an exception): the save in flight completes; a failure of it is
  /// only reported, the exception under way is the one that counts.
  void at_exception() noexcept {
    configuration_.reset();
    followed_.reset();  // (no collective here: the other processes may be gone)
    try {
      finish_background_save();
    } catch (const std::exception& e) {
      warn(std::string("while training failed, the checkpoint written in the background: ") + e.what());
    } catch (...) {
    }
  }
  /// The state was just loaded from a checkpoint: nothing is unsaved.
  void loaded() {
    unsaved_ = false;
    validation_unsaved_ = false;
  }

  /// Checkpoints not written because of an I/O error (only with continue_on_save_error).
  std::int64_t failed_saves() const noexcept { return failed_saves_; }

 private:
  /// Writes step-<global step>.ckpt into the directory, moves last.ckpt to it, rotates (with
  /// async_save: snapshots the state and leaves the rest to the background). With several
  /// processes (keel::DataParallel) one writes, and all return once it has.
  void save() {
    if (!enabled()) return;
    s_.strategy.gather_random_streams(s_.generators);  // (every rank's, into this checkpoint)
    struct Forget {  // (only this save writes them: a later file without a gather holds none)
      std::vector<RngState>& ranks;
      ~Forget() { ranks.clear(); }
    } forget{s_.generators.ranks};
    if (!s_.strategy.writes_checkpoints()) return follow_writer();
    collect();  // (the save in flight first, its outcome shared)
    try {
      write_step_checkpoint();
    } catch (...) {
      s_.strategy.share_save_outcome(SaveOutcome::failed);  // (the others stop too, naming this)
      throw;
    }
    s_.strategy.share_save_outcome(unsaved_ ? SaveOutcome::skipped : SaveOutcome::committed);
  }

  /// A process that does not write (keel::DataParallel's ranks but 0) takes the writer's outcome
  /// of the same save, so that it goes on as the writer does.
  void follow_writer() {
    collect();
    const std::string name = ckpt::step_file_name(s_.loop.global_step, Format::extension);
    switch (s_.strategy.share_save_outcome(SaveOutcome::committed)) {
      case SaveOutcome::committed:
        // (with async_save: the writer's snapshot is taken, and its write goes on in the background)
        if (s_.options.async_save()) followed_ = Followed{name, s_.view.checkpoint_path, validation_unsaved_};
        s_.view.checkpoint_path = (ckpt::fs::path(s_.options.checkpoint_dir()) / name).string();
        unsaved_ = validation_unsaved_ = false;
        return;
      case SaveOutcome::skipped:  // continue_on_save_error: still unsaved, as on the writer
        ++failed_saves_;
        return;
      case SaveOutcome::failed:
        break;
    }
    writer_failed(name);
  }

  void write_step_checkpoint() {
    finish_background_save();  // one save in flight at most, and its outcome first
    const auto& options = s_.options;
    const ckpt::fs::path directory = options.checkpoint_dir();
    const std::string name = ckpt::step_file_name(s_.loop.global_step, Format::extension);
    const std::string previous_path = s_.view.checkpoint_path;
    s_.view.checkpoint_path = (directory / name).string();
    s_.dispatch(event::on_save_checkpoint_start{});
    Pending save{directory, name, previous_path, s_.loop.global_step, validation_unsaved_};
    if (options.async_save()) {
      try {
        std::optional<Fingerprint> fresh;
        state::snapshot_checkpoint<Format>(s_, snapshot_, directory / name, configuration(fresh), monitor_facts());
        background_.start([this, save, policy = retention()] {
          ckpt::ensure_checkpoint_directory(save.directory);
          snapshot_.write_file(save.directory / save.name, Format::keel_name, Format::format_id);
          ckpt::point_link_atomically(save.directory / ckpt::last_link_name(Format::extension), save.name);
          // Rotation deletes files (a tenth of a second or more for large ones): here too, not
          // on the training thread. Its outcome is reported when the write is collected; the
          // write stands whatever it is.
          try {
            rotation_problem_ = rotate_after(save, policy);
          } catch (...) {  // (no memory even for the message)
          }
        });
      } catch (...) {  // nothing started: as if the save had not begun
        s_.view.checkpoint_path = previous_path;
        throw;
      }
      pending_ = std::move(save);
      // The state is captured: from here on only what changes is unsaved (a failed write says
      // otherwise when it is collected).
      validation_unsaved_ = false;
      unsaved_ = false;
      return;
    }
    try {
      ckpt::ensure_checkpoint_directory(directory);
      std::optional<Fingerprint> fresh;
      state::write_checkpoint<Format>(s_, directory / name, configuration(fresh), monitor_facts());
      ckpt::point_link_atomically(directory / ckpt::last_link_name(Format::extension), name);
    } catch (const ckpt::IoError& e) {
      not_saved(save, e);
      return;  // still unsaved: the next save (or the end of fit) writes this state's successor
    } catch (...) {  // refused (a non-finite parameter) or failed otherwise: nothing was written
      s_.view.checkpoint_path = previous_path;
      throw;
    }
    validation_unsaved_ = false;
    unsaved_ = false;
    committed(save, rotate_after(save, retention()));
  }

  /// A save: where it goes, and what to restore if its write fails.
  struct Pending {
    ckpt::fs::path directory;
    std::string name;
    std::string previous_path;      // view.checkpoint_path before it
    std::int64_t step;
    bool validation_unsaved;        // its monitored metric is in it (keep_best)
  };

  /// The write of `save` failed: the temporary file is gone and the previous checkpoint and
  /// last.ckpt are untouched. Throws, or warns under continue_on_save_error.
  void not_saved(const Pending& save, const ckpt::IoError& e) {
    s_.view.checkpoint_path = save.previous_path;
    if (!s_.options.continue_on_save_error()) throw e;
    ++failed_saves_;
    warn("checkpoint at step " + std::to_string(save.step) + " not saved: " + e.what() +
         "; training continues and the next save retries (continue_on_save_error)");
  }

  /// The options' retention policy, as a value (a background save takes it along).
  ckpt::Retention retention() const {
    const auto& options = s_.options;
    return {options.keep_last(), options.keep_best(), options.monitor(), options.monitor_higher_is_better()};
  }

  /// Deletes the checkpoints that `retention` drops now that `save` is committed. A failure
  /// leaves older files behind: worth a warning (returned here, "" if none), not a failed save.
  static std::string rotate_after(const Pending& save, const ckpt::Retention& retention) {
    try {
      return ckpt::rotate(save.directory, retention, save.name, Format::extension);
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "an exception that is not a std::exception";
    }
  }

  /// `save` is committed, last.ckpt points at it and rotation ran: the end of the save.
  void committed(const Pending& save, const std::string& rotation_problem) {
    if (!rotation_problem.empty())
      warn("rotation after the checkpoint of step " + std::to_string(save.step) +
           " left older checkpoints behind (the checkpoint itself is committed):\n" + rotation_problem);
    s_.dispatch(event::on_save_checkpoint_end{});
  }

  /// Waits for the background save in flight (the writer's, with async_save), and every process
  /// applies its outcome, as a synchronous save does right after its write: the writer sends it
  /// to the others (one collective, where there was a save in flight: on every process alike).
  void collect() {
    if (!s_.strategy.writes_checkpoints()) return follow_collect();
    if (!pending_) return;
    const std::int64_t failed_before = failed_saves_;
    try {
      finish_background_save();
    } catch (...) {
      s_.strategy.share_save_outcome(SaveOutcome::failed);
      throw;
    }
    s_.strategy.share_save_outcome(failed_saves_ > failed_before ? SaveOutcome::skipped : SaveOutcome::committed);
  }
  /// A process that does not write, told that the writer failed to write `name`: it stops too.
  [[noreturn]] static void writer_failed(const std::string& name) {
    throw Error("keel: the process that writes the checkpoints failed to write " + name +
                " (see its error); this one stops with it");
  }
  /// A process that does not write: the writer's outcome of the write in flight.
  void follow_collect() {
    if (!followed_) return;
    const Followed save = std::move(*followed_);
    followed_.reset();
    switch (s_.strategy.share_save_outcome(SaveOutcome::committed)) {
      case SaveOutcome::committed:
        return;
      case SaveOutcome::skipped:  // continue_on_save_error: that state is unsaved again, as on the writer
        unsaved_ = true;
        validation_unsaved_ = validation_unsaved_ || save.validation_unsaved;
        s_.view.checkpoint_path = save.previous_path;
        ++failed_saves_;
        return;
      case SaveOutcome::failed:
        break;
    }
    writer_failed(save.name);
  }

  /// Waits for the background save in flight, if any, and applies its outcome as a synchronous
  /// save does right after its write.
  void finish_background_save() {
    if (!pending_) return;
    const std::exception_ptr error = background_.collect();
    const Pending save = std::move(*pending_);
    pending_.reset();
    if (!error) {
      committed(save, std::exchange(rotation_problem_, {}));  // (what changed since the snapshot stays unsaved)
      return;
    }
    // That state never reached the disk: the next save, or the end of fit, writes its successor.
    unsaved_ = true;
    validation_unsaved_ = validation_unsaved_ || save.validation_unsaved;
    try {
      std::rethrow_exception(error);
    } catch (const ckpt::IoError& e) {
      not_saved(save, e);
    } catch (...) {
      s_.view.checkpoint_path = save.previous_path;
      throw;
    }
  }

  /// The configuration a checkpoint records: the fit's (fit_starts), or outside fit described
  /// anew into `fresh`.
  const Fingerprint& configuration(std::optional<Fingerprint>& fresh) const {
    if (configuration_) return *configuration_;
    return fresh.emplace(s_.fingerprint(Format::keel_name));
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
  ckpt::SectionSnapshot snapshot_;  // async_save: the state being written, its memory kept
  std::optional<Pending> pending_;  // the save in flight
  /// A process that does not write: the writer's save in flight, as far as this one needs it.
  struct Followed {
    std::string name;
    std::string previous_path;
    bool validation_unsaved;
  };
  std::optional<Followed> followed_;
  std::string rotation_problem_;    // set by the save in flight, read once it is collected
  std::optional<Fingerprint> configuration_;  // the fit's, while one runs
  std::unique_ptr<ckpt::DirectoryLock> lock_;
  bool unsaved_ = false;             // the state changed since the last checkpoint
  bool validation_unsaved_ = false;  // a validation ran since the last checkpoint
  std::int64_t failed_saves_ = 0;    // saves skipped under continue_on_save_error
  // Last, so destroyed first: the write in flight finishes while the snapshot and the
  // directory lock still exist.
  BackgroundSave background_;
};

}  // namespace keel::loop
