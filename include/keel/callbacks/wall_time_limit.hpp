#pragma once
// keel::WallTimeLimit: stops training cleanly once it has run for a given wall-clock time,
// counted over every process of the run (Lightning's Timer): at the next optimizer step
// boundary after the limit it requests a stop, and fit() ends as after max_steps, with a
// checkpoint. The time trained so far is its saved state, so a resumed run counts on from
// where the checkpoint left off; a run stopped by the limit resumes only as a fork that raises
// it (allow_changes({"callback.<index>.seconds"})), which also clears the stop.
//
// Its state is a measured time: two runs of the same configuration end with different state
// digests (nothing else differs). Leave it out where digests are compared.

#include <keel/context.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/log.hpp>

#include <cereal/cereal.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace keel {

class WallTimeLimit {
 public:
  static constexpr const char* keel_name = "keel::WallTimeLimit";

  explicit WallTimeLimit(double seconds = 0.0) : seconds_(seconds) {
    if (!(seconds_ >= 0.0))
      throw ConfigError("keel::WallTimeLimit: seconds must be >= 0 (0: no limit), got " + std::to_string(seconds_));
  }

  void on_fit_start(Context&) { started_ = Clock::now(); }

  void on_optimizer_step_end(Context& ctx) {
    count_time();  // up to date at every step boundary, where any checkpoint (a manual one too) is taken
    if (seconds_ <= 0.0 || ctx.stop_requested()) return;
    if (elapsed() >= seconds_) {
      char text[160];
      std::snprintf(text, sizeof text, "keel::WallTimeLimit: %.6g s of training reached the limit of %.6g s", elapsed(),
                    seconds_);
      notice(std::string(text) + "; stopping at step " + std::to_string(ctx.global_step()) + " with a checkpoint");
      ctx.request_stop();
    }
  }
  /// Brings the saved time up to date just before it is written.
  void on_save_checkpoint_start(Context&) { count_time(); }

  /// Seconds trained so far, over every process of the run.
  double elapsed() const {
    return trained_seconds_ + std::chrono::duration<double>(Clock::now() - started_).count();
  }
  /// The part of elapsed() that the state holds (up to the latest step boundary or save).
  double trained_seconds() const noexcept { return trained_seconds_; }
  double limit() const noexcept { return seconds_; }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const { fingerprint.add(prefix + "seconds", seconds_); }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("trained_seconds", trained_seconds_));
  }

 private:
  using Clock = std::chrono::steady_clock;
  void count_time() {
    const auto now = Clock::now();
    trained_seconds_ += std::chrono::duration<double>(now - started_).count();
    started_ = now;
  }
  double seconds_;                           // configuration
  double trained_seconds_ = 0.0;             // state: up to the last checkpoint (or load)
  Clock::time_point started_ = Clock::now();  // when this process started counting (not state)
};

}  // namespace keel
