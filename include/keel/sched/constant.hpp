#pragma once
// keel::sched::Constant: leaves the learning rate alone (the default scheduler).

#include <keel/sched/scheduler_base.hpp>

namespace keel::sched {

class Constant : public SchedulerBase<Constant> {
 public:
  static constexpr const char* keel_name = "keel::sched::Constant";
  struct Options {};

  explicit Constant(torch::optim::Optimizer& optimizer, Options = {}) : SchedulerBase(optimizer) {}
  double factor(std::int64_t) const { return 1.0; }
  static double factor_of(const Options&, std::int64_t) { return 1.0; }
  static std::int64_t end_of(const Options&) { return -1; }
  static Options options_from(const SavedConfig&) { return {}; }
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
  }
};

}  // namespace keel::sched
