#pragma once
// keel::sched::ReduceLROnPlateau: PyTorch's ReduceLROnPlateau on a validation metric. After
// every validation it compares the monitored metric with the best so far; after more than
// `patience` validations without improvement (beyond `threshold`), each group's rate is
// multiplied by `factor` (not below `min_lr`; a change smaller than `eps` is skipped), then
// `cooldown` validations pass before counting again. Its decisions depend on the history, so
// the whole of it is state: the current rates, the best value, the counters.
//
// It advances on validation, not on optimizer steps or epochs: give fit() a validation set.

#include <keel/context.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/monitor.hpp>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace keel::sched {

enum class ThresholdMode { rel, abs };

struct ReduceLROnPlateauOptions {
  explicit ReduceLROnPlateauOptions(std::string monitor = "val_loss") : monitor_(std::move(monitor)) {}
  TORCH_ARG(std::string, monitor);
  TORCH_ARG(MonitorMode, mode) = MonitorMode::min;
  TORCH_ARG(double, factor) = 0.1;
  TORCH_ARG(std::int64_t, patience) = 10;
  TORCH_ARG(double, threshold) = 1e-4;
  TORCH_ARG(ThresholdMode, threshold_mode) = ThresholdMode::rel;
  TORCH_ARG(std::int64_t, cooldown) = 0;
  TORCH_ARG(double, min_lr) = 0.0;
  TORCH_ARG(double, eps) = 1e-8;
};

class ReduceLROnPlateau {
 public:
  static constexpr const char* keel_name = "keel::sched::ReduceLROnPlateau";
  static constexpr std::uint32_t keel_version = 1;
  using Options = ReduceLROnPlateauOptions;

  ReduceLROnPlateau(torch::optim::Optimizer& optimizer, Options options)
      : optimizer_(optimizer), options_(std::move(options)) {
    if (options_.monitor().empty()) throw ConfigError("keel::sched::ReduceLROnPlateau: name the metric to monitor");
    if (!(options_.factor() > 0.0 && options_.factor() < 1.0))
      throw ConfigError("keel::sched::ReduceLROnPlateau: factor must be in (0, 1), got " + std::to_string(options_.factor()));
    if (options_.patience() < 0 || options_.cooldown() < 0)
      throw ConfigError("keel::sched::ReduceLROnPlateau: patience and cooldown must be >= 0, got " +
                        std::to_string(options_.patience()) + " and " + std::to_string(options_.cooldown()));
    if (!(options_.threshold() >= 0.0) || !(options_.min_lr() >= 0.0) || !(options_.eps() >= 0.0))
      throw ConfigError("keel::sched::ReduceLROnPlateau: threshold, min_lr and eps must be >= 0");
    for (const auto& group : optimizer.param_groups()) base_lrs_.push_back(group.options().get_lr());
    lrs_ = base_lrs_;
    best_ = worst();
  }

  /// After an optimizer step: nothing (the rate changes on validation only).
  void step() {}

  /// The loop calls it after every validation.
  void on_validation_end(const Metrics& metrics) {
    const auto found = metrics.find(options_.monitor());
    if (found == metrics.end())
      throw ConfigError("keel::sched::ReduceLROnPlateau: monitored metric '" + options_.monitor() +
                        "' is not among the validation metrics; return it from validation_step");
    step(found->second);
  }

  /// One decision on `metric` (PyTorch's step(metrics)).
  void step(double metric) {
    ++steps_;
    if (better(metric, best_)) {
      best_ = metric;
      bad_ = 0;
    } else {
      ++bad_;
    }
    if (cooldown_counter_ > 0) {
      --cooldown_counter_;
      bad_ = 0;
    }
    if (bad_ > options_.patience()) {
      reduce();
      cooldown_counter_ = options_.cooldown();
      bad_ = 0;
    }
  }

  /// A fork changed the optimizer's learning rate: it becomes the base, and the current rates.
  void set_base_lrs(std::vector<double> base_lrs) {
    base_lrs_ = std::move(base_lrs);
    lrs_ = base_lrs_;
    apply();
  }

  const std::vector<double>& base_lrs() const noexcept { return base_lrs_; }
  const std::vector<double>& lrs() const noexcept { return lrs_; }
  double best() const noexcept { return best_; }
  std::int64_t num_bad_epochs() const noexcept { return bad_; }
  std::int64_t cooldown_counter() const noexcept { return cooldown_counter_; }
  /// Validations seen.
  std::int64_t steps() const noexcept { return steps_; }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "monitor", options_.monitor());
    fingerprint.add(prefix + "mode", monitor_mode_name(options_.mode()));
    fingerprint.add(prefix + "factor", options_.factor());
    fingerprint.add(prefix + "patience", options_.patience());
    fingerprint.add(prefix + "threshold", options_.threshold());
    fingerprint.add(prefix + "threshold_mode", options_.threshold_mode() == ThresholdMode::rel ? "rel" : "abs");
    fingerprint.add(prefix + "cooldown", options_.cooldown());
    fingerprint.add(prefix + "min_lr", options_.min_lr());
    fingerprint.add(prefix + "eps", options_.eps());
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("steps", steps_), cereal::make_nvp("base_lrs", base_lrs_), cereal::make_nvp("lrs", lrs_),
            cereal::make_nvp("best", best_), cereal::make_nvp("num_bad_epochs", bad_),
            cereal::make_nvp("cooldown_counter", cooldown_counter_));
  }

 private:
  double worst() const {
    return options_.mode() == MonitorMode::min ? std::numeric_limits<double>::infinity()
                                               : -std::numeric_limits<double>::infinity();
  }
  // PyTorch's is_better, term for term.
  bool better(double a, double best) const {
    const double t = options_.threshold();
    const bool rel = options_.threshold_mode() == ThresholdMode::rel;
    if (options_.mode() == MonitorMode::min) return rel ? a < best * (1.0 - t) : a < best - t;
    return rel ? a > best * (t + 1.0) : a > best + t;
  }
  void reduce() {
    for (std::size_t g = 0; g < lrs_.size(); ++g) {
      const double old_lr = lrs_[g];
      const double new_lr = std::max(old_lr * options_.factor(), options_.min_lr());
      if (old_lr - new_lr > options_.eps()) lrs_[g] = new_lr;
    }
    apply();
  }
  void apply() {
    auto& groups = optimizer_.get().param_groups();
    for (std::size_t g = 0; g < groups.size() && g < lrs_.size(); ++g) groups[g].options().set_lr(lrs_[g]);
  }

  std::reference_wrapper<torch::optim::Optimizer> optimizer_;
  Options options_;
  std::vector<double> base_lrs_;
  std::vector<double> lrs_;  // the rates now (a reduction multiplies them)
  double best_;
  std::int64_t bad_ = 0;
  std::int64_t cooldown_counter_ = 0;
  std::int64_t steps_ = 0;
};

}  // namespace keel::sched
