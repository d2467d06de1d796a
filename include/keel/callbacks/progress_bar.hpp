#pragma once
// keel::ProgressBar: what a person sees while training runs.
//
// On a terminal it redraws one line for the active phase (training: epoch, step/total,
// samples/s, ETA, loss, lr; validation: batch/total) and leaves one summary line per epoch.
// When the stream is not a terminal (CI, a log file) it prints a plain line every
// `every_n_steps` steps instead, and the epoch summaries. Mode::off prints nothing.
// It holds no training state: its serialization is explicitly empty.

#include <keel/context.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace keel {

class ProgressBar {
 public:
  static constexpr const char* keel_name = "keel::ProgressBar";
  enum class Mode { automatic, bar, plain, off };

  explicit ProgressBar(Mode mode = Mode::automatic, std::int64_t every_n_steps = 50, std::FILE* stream = stderr)
      : mode_(mode), every_(every_n_steps > 0 ? every_n_steps : 50), stream_(stream) {}

  /// "auto", "bar", "plain" or "off" (for command-line flags).
  static Mode parse_mode(const std::string& text) {
    if (text == "bar") return Mode::bar;
    if (text == "plain") return Mode::plain;
    if (text == "off") return Mode::off;
    return Mode::automatic;
  }

  template <class Archive>
  void serialize(Archive&) {}  // display only: nothing to save

  void on_fit_start(Context& ctx) {
    if (!ctx.is_global_zero()) mode_ = Mode::off;  // (rank 0 speaks for a data-parallel job)
    if (mode_ == Mode::automatic) mode_ = ::isatty(::fileno(stream_)) ? Mode::bar : Mode::plain;
    start_ = last_ = Clock::now();
    start_step_ = ctx.global_step();
    samples_ = 0;
  }

  void on_train_batch_end(Context& ctx) { samples_ += ctx.batch_size() * ctx.world_size(); }  // (the job's)

  void on_optimizer_step_end(Context& ctx) {
    if (mode_ == Mode::off) return;
    const auto now = Clock::now();
    if (mode_ == Mode::bar) {
      if (now - last_ < std::chrono::milliseconds(100) && ctx.global_step() != ctx.total_steps()) return;
      std::fprintf(stream_, "\r\033[K%s", training_line(ctx, now).c_str());
      std::fflush(stream_);
      last_ = now;
    } else if (ctx.global_step() % every_ == 0) {
      std::fprintf(stream_, "%s\n", training_line(ctx, now).c_str());
      std::fflush(stream_);
    }
  }

  void on_validation_start(Context&) { validation_batches_ = 0; }
  void on_validation_batch_end(Context&) {
    ++validation_batches_;
    if (mode_ == Mode::bar) {
      std::fprintf(stream_, "\r\033[Kvalidating: batch %lld", static_cast<long long>(validation_batches_));
      std::fflush(stream_);
    }
  }

  void on_train_epoch_end(Context& ctx) {
    if (mode_ == Mode::off) return;
    std::string line = "epoch " + std::to_string(ctx.epoch() + 1) + " done: step " + std::to_string(ctx.global_step());
    for (const auto& [name, value] : ctx.metrics()) line += " " + name + " " + format("%.4f", value);
    std::fprintf(stream_, "%s%s\n", mode_ == Mode::bar ? "\r\033[K" : "", line.c_str());
    std::fflush(stream_);
  }

  void on_fit_end(Context&) {
    if (mode_ == Mode::bar) std::fprintf(stream_, "\r\033[K");
  }

 private:
  using Clock = std::chrono::steady_clock;

  static std::string format(const char* pattern, double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, pattern, value);
    return buffer;
  }

  static std::string duration(double seconds) {
    const auto s = static_cast<long long>(seconds + 0.5);
    char buffer[32];
    if (s >= 3600) std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
    else std::snprintf(buffer, sizeof buffer, "%02lld:%02lld", s / 60, s % 60);
    return buffer;
  }

  std::string training_line(Context& ctx, Clock::time_point now) const {
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const std::int64_t steps_here = ctx.global_step() - start_step_;
    const std::int64_t total = ctx.total_steps();
    std::string line = "epoch " + std::to_string(ctx.epoch() + 1);
    if (ctx.max_epochs() > 0) line += "/" + std::to_string(ctx.max_epochs());
    line += " | step " + std::to_string(ctx.global_step());
    if (total > 0) line += "/" + std::to_string(total);
    if (elapsed > 0) line += " | " + format("%.0f", static_cast<double>(samples_) / elapsed) + " samples/s";
    if (total > 0 && steps_here > 0)
      line += " | ETA " + duration(elapsed / static_cast<double>(steps_here) * static_cast<double>(total - ctx.global_step()));
    if (ctx.loss().defined()) line += " | loss " + format("%.4f", ctx.loss().item<double>());
    line += " | lr " + format("%.3g", ctx.lr());
    return line;
  }

  Mode mode_;
  std::int64_t every_;
  std::FILE* stream_;
  Clock::time_point start_{};
  Clock::time_point last_{};
  std::int64_t start_step_ = 0;
  std::int64_t samples_ = 0;
  std::int64_t validation_batches_ = 0;
};

}  // namespace keel
