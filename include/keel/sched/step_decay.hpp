#pragma once
// keel::sched::StepDecay: multiplies the learning rate by `gamma` every `step_size` optimizer
// steps (LibTorch's StepLR, counted in optimizer steps, with its state saved).

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <cmath>

namespace keel::sched {

struct StepDecayOptions {
  StepDecayOptions(std::int64_t step_size, double gamma = 0.1) : step_size_(step_size), gamma_(gamma) {}
  TORCH_ARG(std::int64_t, step_size);
  TORCH_ARG(double, gamma);
};

class StepDecay : public SchedulerBase<StepDecay> {
 public:
  static constexpr const char* keel_name = "keel::sched::StepDecay";
  using Options = StepDecayOptions;

  StepDecay(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer), options_(options) {
    if (options_.step_size() <= 0)
      throw ConfigError("keel::sched::StepDecay: step_size must be positive, got " +
                        std::to_string(options_.step_size()));
    if (!(options_.gamma() > 0.0))
      throw ConfigError("keel::sched::StepDecay: gamma must be positive, got " +
                        std::to_string(options_.gamma()));
    apply();
  }

  double factor(std::int64_t step) const { return factor_of(options_, step); }

  static double factor_of(const Options& options, std::int64_t step) {
    return std::pow(options.gamma(), static_cast<double>(step / options.step_size()));
  }
  /// Decays for ever: no end (append_cosine is refused; append_constant starts at the fork).
  static std::int64_t end_of(const Options&) { return -1; }
  static Options options_from(const SavedConfig& config) {
    return Options(config.integer("step_size"), config.real("gamma"));
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "step_size", options_.step_size());
    fingerprint.add(prefix + "gamma", options_.gamma());
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
