#pragma once
// keel::sched::CosineWarmup: linear warm-up to the base learning rate over `warmup_steps`
// optimizer steps, then cosine decay to `min_lr_ratio * base` at `total_steps`, constant after.
//
//   factor(s) = (s + 1) / warmup_steps                                  for s < warmup_steps
//   factor(s) = r + (1 - r) * (1 + cos(pi * (s - w) / (T - w))) / 2     for w <= s < T
//   factor(s) = r                                                        for s >= T
// where s counts the optimizer steps already taken, so the first step uses base / warmup.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <cmath>

namespace keel::sched {

struct CosineWarmupOptions {
  CosineWarmupOptions(std::int64_t warmup_steps, std::int64_t total_steps)
      : warmup_steps_(warmup_steps), total_steps_(total_steps) {}
  TORCH_ARG(std::int64_t, warmup_steps);
  TORCH_ARG(std::int64_t, total_steps);
  TORCH_ARG(double, min_lr_ratio) = 0.0;
};

class CosineWarmup : public SchedulerBase<CosineWarmup> {
 public:
  static constexpr const char* keel_name = "keel::sched::CosineWarmup";
  using Options = CosineWarmupOptions;

  CosineWarmup(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer), options_(options) {
    if (options_.warmup_steps() < 0)
      throw ConfigError("keel::sched::CosineWarmup: warmup_steps must be >= 0, got " +
                        std::to_string(options_.warmup_steps()));
    if (options_.total_steps() <= options_.warmup_steps())
      throw ConfigError("keel::sched::CosineWarmup: total_steps (" +
                        std::to_string(options_.total_steps()) +
                        ") must exceed warmup_steps (" + std::to_string(options_.warmup_steps()) +
                        "); set it to the number of optimizer steps of the whole run");
    if (options_.min_lr_ratio() < 0.0 || options_.min_lr_ratio() > 1.0)
      throw ConfigError("keel::sched::CosineWarmup: min_lr_ratio must be in [0, 1], got " +
                        std::to_string(options_.min_lr_ratio()));
    apply();
  }

  double factor(std::int64_t step) const { return factor_of(options_, step); }

  static double factor_of(const Options& options, std::int64_t step) {
    const auto warmup = options.warmup_steps();
    const auto total = options.total_steps();
    const double floor = options.min_lr_ratio();
    if (step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (step >= total) return floor;
    const double progress =
        static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
    return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
  }
  /// The schedule ends at total_steps (a fork may append a phase after it).
  static std::int64_t end_of(const Options& options) { return options.total_steps(); }
  /// The options describe() recorded (a fork's lineage keeps them).
  static Options options_from(const SavedConfig& config) {
    return Options(config.integer("warmup_steps"), config.integer("total_steps"))
        .min_lr_ratio(config.real("min_lr_ratio"));
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "warmup_steps", options_.warmup_steps());
    fingerprint.add(prefix + "total_steps", options_.total_steps());
    fingerprint.add(prefix + "min_lr_ratio", options_.min_lr_ratio());
  }

  /// The saved state is SchedulerBase's (steps, base learning rates); the options are
  /// configuration, which the fingerprint checks at a resume.
  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
  }

 private:
  Options options_;
};

}  // namespace keel::sched
