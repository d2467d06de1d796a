#pragma once
// keel::sched::CosineAnnealingLR and keel::sched::CosineAnnealingWarmRestarts: PyTorch's
// schedulers of the same names, in their closed forms.
//
//   CosineAnnealingLR:           lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2
//                                (as in PyTorch, it rises again after T_max: a period of 2 T_max)
//   CosineAnnealingWarmRestarts: the same within a cycle, restarting at base_lr after T_0 steps,
//                                each cycle T_mult times longer than the one before
//
// eta_min is an absolute learning rate, shared by every param group (PyTorch's meaning).
// Steps are optimizer steps by default; .interval(keel::sched::Interval::epoch) counts epochs.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <cmath>
#include <string>

namespace keel::sched {

struct CosineAnnealingLROptions {
  explicit CosineAnnealingLROptions(std::int64_t T_max) : T_max_(T_max) {}
  TORCH_ARG(std::int64_t, T_max);
  TORCH_ARG(double, eta_min) = 0.0;
  TORCH_ARG(Interval, interval) = Interval::step;
};

class CosineAnnealingLR : public SchedulerBase<CosineAnnealingLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::CosineAnnealingLR";
  using Options = CosineAnnealingLROptions;

  CosineAnnealingLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(options) {
    if (options_.T_max() <= 0)
      throw ConfigError("keel::sched::CosineAnnealingLR: T_max must be positive, got " + std::to_string(options_.T_max()));
    if (!(options_.eta_min() >= 0.0))
      throw ConfigError("keel::sched::CosineAnnealingLR: eta_min must be >= 0, got " + std::to_string(options_.eta_min()));
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    const double eta_min = options_.eta_min();
    return eta_min + (base_lr - eta_min) *
                         (1.0 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(options_.T_max()))) / 2.0;
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "T_max", options_.T_max());
    fingerprint.add(prefix + "eta_min", options_.eta_min());
    describe_interval(fingerprint, prefix);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
  }

 private:
  Options options_;
};

struct CosineAnnealingWarmRestartsOptions {
  explicit CosineAnnealingWarmRestartsOptions(std::int64_t T_0) : T_0_(T_0) {}
  TORCH_ARG(std::int64_t, T_0);
  TORCH_ARG(std::int64_t, T_mult) = 1;
  TORCH_ARG(double, eta_min) = 0.0;
  TORCH_ARG(Interval, interval) = Interval::step;
};

class CosineAnnealingWarmRestarts : public SchedulerBase<CosineAnnealingWarmRestarts> {
 public:
  static constexpr const char* keel_name = "keel::sched::CosineAnnealingWarmRestarts";
  using Options = CosineAnnealingWarmRestartsOptions;

  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(options) {
    if (options_.T_0() <= 0)
      throw ConfigError("keel::sched::CosineAnnealingWarmRestarts: T_0 must be positive, got " +
                        std::to_string(options_.T_0()));
    if (options_.T_mult() < 1)
      throw ConfigError("keel::sched::CosineAnnealingWarmRestarts: T_mult must be an integer >= 1, got " +
                        std::to_string(options_.T_mult()));
    if (!(options_.eta_min() >= 0.0))
      throw ConfigError("keel::sched::CosineAnnealingWarmRestarts: eta_min must be >= 0, got " +
                        std::to_string(options_.eta_min()));
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    // The position in the current cycle (T_cur) and its length (T_i), in integers: exact.
    std::int64_t t_cur = step;
    std::int64_t t_i = options_.T_0();
    if (options_.T_mult() == 1) {
      t_cur = step % t_i;
    } else {
      while (t_cur >= t_i) {
        t_cur -= t_i;
        t_i *= options_.T_mult();
      }
    }
    const double eta_min = options_.eta_min();
    return eta_min + (base_lr - eta_min) * (1.0 + std::cos(M_PI * static_cast<double>(t_cur) / static_cast<double>(t_i))) / 2.0;
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "T_0", options_.T_0());
    fingerprint.add(prefix + "T_mult", options_.T_mult());
    fingerprint.add(prefix + "eta_min", options_.eta_min());
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
