#pragma once
// keel::sched::Sequential<First, Then>: PyTorch's SequentialLR with one milestone. First
// schedules steps [0, milestone); from the milestone on, Then schedules as if it had started
// there (its step 0 at the milestone), from the same base learning rates. Chain more with
// Sequential<A, Sequential<B, C>>. Both parts compute their rate from the step (keel's
// closed-form schedulers; not ReduceLROnPlateau). Sequential's interval is the one that counts;
// the parts' own interval options are ignored.
//
//   using WarmupThenLinear = keel::sched::Sequential<keel::sched::LinearLR, keel::sched::LinearLR>;
//   WarmupThenLinear::Options(LinearLROptions(0.1, 1.0, 100), LinearLROptions(1.0, 0.0, 900), 100)

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <string>
#include <utility>

namespace keel::sched {

template <class First, class Then>
struct SequentialOptions {
  SequentialOptions(typename First::Options first, typename Then::Options then, std::int64_t milestone)
      : first_(std::move(first)), then_(std::move(then)), milestone_(milestone) {}
  TORCH_ARG(typename First::Options, first);
  TORCH_ARG(typename Then::Options, then);
  TORCH_ARG(std::int64_t, milestone);
  TORCH_ARG(Interval, interval) = Interval::step;
};

template <class First, class Then>
class Sequential : public SchedulerBase<Sequential<First, Then>> {
  using Base = SchedulerBase<Sequential<First, Then>>;
  static_assert(std::is_base_of_v<SchedulerBase<First>, First> && std::is_base_of_v<SchedulerBase<Then>, Then>,
                "keel::sched::Sequential: both parts must be keel schedulers derived from SchedulerBase (they "
                "compute the rate from the step; ReduceLROnPlateau cannot be a part)");

 public:
  static constexpr const char* keel_name = "keel::sched::Sequential";
  using Options = SequentialOptions<First, Then>;

  // The parts are built on the same optimizer (their constructors check their options and set
  // a rate, which apply() below replaces); Base has read the base rates before either ran.
  Sequential(torch::optim::Optimizer& optimizer, Options options)
      : Base(optimizer, options.interval()),
        milestone_(options.milestone()),
        first_(optimizer, options.first()),
        then_(optimizer, options.then()) {
    if (milestone_ <= 0)
      throw ConfigError("keel::sched::Sequential: milestone must be positive, got " + std::to_string(milestone_));
    Base::apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    return step < milestone_ ? first_.lr_for(step, base_lr) : then_.lr_for(step - milestone_, base_lr);
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "milestone", milestone_);
    Base::describe_interval(fingerprint, prefix);
    first_.describe(fingerprint, prefix + "first.");
    then_.describe(fingerprint, prefix + "then.");
  }

  /// The saved state is SchedulerBase's (steps, base learning rates): the parts compute their
  /// rates from Sequential's step, so they have none of their own.
  template <class Archive>
  void serialize(Archive& archive) {
    Base::serialize(archive);
  }

 private:
  std::int64_t milestone_;
  First first_;
  Then then_;
};

}  // namespace keel::sched
