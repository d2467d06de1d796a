#pragma once
// keel::sched::LinearLR: PyTorch's LinearLR, the factor moving linearly from start_factor to
// end_factor over total_iters steps, then staying at end_factor:
//
//   lr = base_lr * (start_factor + (end_factor - start_factor) * min(step, total_iters) / total_iters)
//
// A linear warm-up (start_factor < 1, end_factor 1) or a linear decay (start 1, end < 1); joined
// by keel::sched::Sequential they make warm-up then linear decay.
// Steps are optimizer steps by default; .interval(keel::sched::Interval::epoch) counts epochs.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <algorithm>
#include <string>

namespace keel::sched {

struct LinearLROptions {
  LinearLROptions(double start_factor, double end_factor, std::int64_t total_iters)
      : start_factor_(start_factor), end_factor_(end_factor), total_iters_(total_iters) {}
  TORCH_ARG(double, start_factor);
  TORCH_ARG(double, end_factor);
  TORCH_ARG(std::int64_t, total_iters);
  TORCH_ARG(Interval, interval) = Interval::step;
};

class LinearLR : public SchedulerBase<LinearLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::LinearLR";
  using Options = LinearLROptions;

  LinearLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(options) {
    if (!(options_.start_factor() > 0.0 && options_.start_factor() <= 1.0))
      throw ConfigError("keel::sched::LinearLR: start_factor must be in (0, 1], got " +
                        std::to_string(options_.start_factor()));
    if (!(options_.end_factor() >= 0.0 && options_.end_factor() <= 1.0))
      throw ConfigError("keel::sched::LinearLR: end_factor must be in [0, 1], got " +
                        std::to_string(options_.end_factor()));
    if (options_.total_iters() <= 0)
      throw ConfigError("keel::sched::LinearLR: total_iters must be positive, got " +
                        std::to_string(options_.total_iters()));
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    const double start = options_.start_factor();
    const double end = options_.end_factor();
    const auto total = options_.total_iters();
    return base_lr * (start + (end - start) * static_cast<double>(std::min(total, step)) / static_cast<double>(total));
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "start_factor", options_.start_factor());
    fingerprint.add(prefix + "end_factor", options_.end_factor());
    fingerprint.add(prefix + "total_iters", options_.total_iters());
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
