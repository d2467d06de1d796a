#pragma once
// keel::sched::ExponentialLR: PyTorch's ExponentialLR, lr = base_lr * gamma ^ step.
// Steps are optimizer steps by default; .interval(keel::sched::Interval::epoch) counts epochs.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <cmath>
#include <string>

namespace keel::sched {

struct ExponentialLROptions {
  explicit ExponentialLROptions(double gamma) : gamma_(gamma) {}
  TORCH_ARG(double, gamma);
  TORCH_ARG(Interval, interval) = Interval::step;
};

class ExponentialLR : public SchedulerBase<ExponentialLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::ExponentialLR";
  using Options = ExponentialLROptions;

  ExponentialLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(options) {
    if (!(options_.gamma() >= 0.0))
      throw ConfigError("keel::sched::ExponentialLR: gamma must be >= 0, got " + std::to_string(options_.gamma()));
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    return base_lr * std::pow(options_.gamma(), static_cast<double>(step));
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "gamma", options_.gamma());
    describe_interval(fingerprint, prefix);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
  }

 private:
  Options options_;
};

}  // namespace keel::sched
