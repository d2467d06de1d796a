#pragma once
// keel::sched::StepLR and keel::sched::MultiStepLR: PyTorch's schedulers of the same names.
//
//   StepLR:       lr = base_lr * gamma ^ floor(step / step_size)
//   MultiStepLR:  lr = base_lr * gamma ^ (milestones <= step)   (a milestone listed twice counts twice)
//
// Steps are optimizer steps by default; .interval(keel::sched::Interval::epoch) counts epochs,
// as PyTorch code that calls scheduler.step() once per epoch does.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace keel::sched {

struct StepLROptions {
  StepLROptions(std::int64_t step_size, double gamma = 0.1) : step_size_(step_size), gamma_(gamma) {}
  TORCH_ARG(std::int64_t, step_size);
  TORCH_ARG(double, gamma);
  TORCH_ARG(Interval, interval) = Interval::step;
};

class StepLR : public SchedulerBase<StepLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::StepLR";
  using Options = StepLROptions;

  StepLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(options) {
    if (options_.step_size() <= 0)
      throw ConfigError("keel::sched::StepLR: step_size must be positive, got " + std::to_string(options_.step_size()));
    if (!(options_.gamma() >= 0.0))
      throw ConfigError("keel::sched::StepLR: gamma must be >= 0, got " + std::to_string(options_.gamma()));
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    return base_lr * std::pow(options_.gamma(), static_cast<double>(step / options_.step_size()));
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "step_size", options_.step_size());
    fingerprint.add(prefix + "gamma", options_.gamma());
    describe_interval(fingerprint, prefix);
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

struct MultiStepLROptions {
  MultiStepLROptions(std::vector<std::int64_t> milestones, double gamma = 0.1)
      : milestones_(std::move(milestones)), gamma_(gamma) {}
  TORCH_ARG(std::vector<std::int64_t>, milestones);
  TORCH_ARG(double, gamma);
  TORCH_ARG(Interval, interval) = Interval::step;
};

class MultiStepLR : public SchedulerBase<MultiStepLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::MultiStepLR";
  using Options = MultiStepLROptions;

  MultiStepLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(std::move(options)) {
    if (options_.milestones().empty())
      throw ConfigError("keel::sched::MultiStepLR: milestones is empty; give the steps at which to decay");
    for (const auto milestone : options_.milestones())
      if (milestone < 0)
        throw ConfigError("keel::sched::MultiStepLR: milestones must be >= 0, got " + std::to_string(milestone));
    if (!(options_.gamma() >= 0.0))
      throw ConfigError("keel::sched::MultiStepLR: gamma must be >= 0, got " + std::to_string(options_.gamma()));
    sorted_ = options_.milestones();
    std::sort(sorted_.begin(), sorted_.end());
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    const auto passed = std::upper_bound(sorted_.begin(), sorted_.end(), step) - sorted_.begin();
    return base_lr * std::pow(options_.gamma(), static_cast<double>(passed));
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    std::string milestones;
    for (const auto milestone : sorted_) milestones += (milestones.empty() ? "" : ",") + std::to_string(milestone);
    fingerprint.add(prefix + "milestones", milestones);
    fingerprint.add(prefix + "gamma", options_.gamma());
    describe_interval(fingerprint, prefix);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
  }

 private:
  Options options_;
  std::vector<std::int64_t> sorted_;  // the milestones in order (configuration)
};

}  // namespace keel::sched
