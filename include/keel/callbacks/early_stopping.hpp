#pragma once
// keel::EarlyStopping: stops training when a validation metric has not improved for
// `patience` validations. Its best value and patience counter are saved in checkpoints, so a
// resumed run stops at the very epoch the uninterrupted run would.

#include <keel/context.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/monitor.hpp>

#include <cereal/types/string.hpp>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <string>

namespace keel {

class EarlyStopping {
 public:
  static constexpr const char* keel_name = "keel::EarlyStopping";

  using Mode = MonitorMode;  // EarlyStopping::Mode::min / max

  explicit EarlyStopping(std::string monitor = "val_loss", std::int64_t patience = 3, Mode mode = Mode::min,
                         double min_delta = 0.0)
      : monitor_(std::move(monitor)), patience_(patience), mode_(mode), min_delta_(min_delta) {
    if (patience_ < 1) throw ConfigError("keel::EarlyStopping: patience must be >= 1, got " + std::to_string(patience_));
    best_ = mode_ == Mode::min ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  }

  void on_validation_end(Context& ctx) {
    auto found = ctx.metrics().find(monitor_);
    if (found == ctx.metrics().end())
      throw ConfigError("keel::EarlyStopping: monitored metric '" + monitor_ +
                        "' is not among the validation metrics; return it from validation_step");
    const double value = found->second;
    const bool improved = mode_ == Mode::min ? value < best_ - min_delta_ : value > best_ + min_delta_;
    if (improved) {
      best_ = value;
      wait_ = 0;
    } else if (++wait_ >= patience_) {
      stopped_epoch_ = ctx.epoch();
      ctx.request_stop();
    }
  }

  double best() const noexcept { return best_; }
  std::int64_t wait() const noexcept { return wait_; }
  std::int64_t stopped_epoch() const noexcept { return stopped_epoch_; }

  /// Configuration: a resume with another monitor, patience or mode is refused.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "monitor", monitor_);
    fingerprint.add(prefix + "patience", patience_);
    fingerprint.add(prefix + "mode", mode_ == Mode::min ? "min" : "max");
    fingerprint.add(prefix + "min_delta", min_delta_);
  }

  /// State: the best value so far, validations without improvement, the epoch it stopped at.
  template <class Archive>
  void serialize(Archive& archive, std::uint32_t /*version*/) {
    archive(cereal::make_nvp("best", best_), cereal::make_nvp("wait", wait_),
            cereal::make_nvp("stopped_epoch", stopped_epoch_));
  }

 private:
  std::string monitor_;
  std::int64_t patience_;
  Mode mode_;
  double min_delta_;
  double best_;
  std::int64_t wait_ = 0;
  std::int64_t stopped_epoch_ = -1;
};

}  // namespace keel

CEREAL_CLASS_VERSION(keel::EarlyStopping, 1);
