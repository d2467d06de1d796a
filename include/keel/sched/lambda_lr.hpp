#pragma once
// keel::sched::LambdaLR: PyTorch's LambdaLR, lr = base_lr * function(step) for a function of
// your own. Only the step is state; the function is configuration, named in the options so
// that the fingerprint can tell two of them apart (a resume with another name is refused; a
// function changed under the same name is your responsibility).
// Steps are optimizer steps by default; .interval(keel::sched::Interval::epoch) counts epochs.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <functional>
#include <string>
#include <utility>

namespace keel::sched {

struct LambdaLROptions {
  LambdaLROptions(std::string name, std::function<double(std::int64_t)> function)
      : name_(std::move(name)), function_(std::move(function)) {}
  TORCH_ARG(std::string, name);
  TORCH_ARG(std::function<double(std::int64_t)>, function);
  TORCH_ARG(Interval, interval) = Interval::step;
};

class LambdaLR : public SchedulerBase<LambdaLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::LambdaLR";
  using Options = LambdaLROptions;

  LambdaLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(std::move(options)) {
    if (options_.name().empty())
      throw ConfigError("keel::sched::LambdaLR: give the function a name (the checkpoint's fingerprint records it)");
    if (!options_.function())
      throw ConfigError("keel::sched::LambdaLR: the function '" + options_.name() + "' is empty");
    apply();
  }

  double factor(std::int64_t step) const { return options_.function()(step); }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "function", options_.name());
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
