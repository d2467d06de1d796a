#pragma once
// keel::sched::OneCycleLR: PyTorch's OneCycleLR (Smith & Topuzov's 1cycle policy) for the
// learning rate. The optimizer's learning rate of each param group is its peak (PyTorch's
// max_lr): the rate starts at peak / div_factor, rises to the peak over pct_start of
// total_steps, then anneals to peak / div_factor / final_div_factor at total_steps
// (three_phase: rises, returns to the start over as many steps, then anneals to the minimum).
// Annealing is cosine or linear. Past total_steps the rate stays at the minimum (PyTorch
// raises an error there). PyTorch's momentum cycling (cycle_momentum) is not part of it: the
// optimizer's momentum stays as configured.
// Steps are optimizer steps by default; .interval(keel::sched::Interval::epoch) counts epochs.

#include <keel/error.hpp>
#include <keel/sched/scheduler_base.hpp>

#include <cmath>
#include <string>

namespace keel::sched {

enum class Anneal { cos, linear };

struct OneCycleLROptions {
  explicit OneCycleLROptions(std::int64_t total_steps) : total_steps_(total_steps) {}
  TORCH_ARG(std::int64_t, total_steps);
  TORCH_ARG(double, pct_start) = 0.3;
  TORCH_ARG(Anneal, anneal_strategy) = Anneal::cos;
  TORCH_ARG(double, div_factor) = 25.0;
  TORCH_ARG(double, final_div_factor) = 1e4;
  TORCH_ARG(bool, three_phase) = false;
  TORCH_ARG(Interval, interval) = Interval::step;
};

class OneCycleLR : public SchedulerBase<OneCycleLR> {
 public:
  static constexpr const char* keel_name = "keel::sched::OneCycleLR";
  using Options = OneCycleLROptions;

  OneCycleLR(torch::optim::Optimizer& optimizer, Options options)
      : SchedulerBase(optimizer, options.interval()), options_(options) {
    if (options_.total_steps() <= 0)
      throw ConfigError("keel::sched::OneCycleLR: total_steps must be positive, got " +
                        std::to_string(options_.total_steps()) + "; set it to the optimizer steps of the whole run");
    if (!(options_.pct_start() > 0.0 && options_.pct_start() < 1.0))
      throw ConfigError("keel::sched::OneCycleLR: pct_start must be in (0, 1), got " +
                        std::to_string(options_.pct_start()));
    if (!(options_.div_factor() > 0.0) || !(options_.final_div_factor() > 0.0))
      throw ConfigError("keel::sched::OneCycleLR: div_factor and final_div_factor must be positive, got " +
                        std::to_string(options_.div_factor()) + " and " + std::to_string(options_.final_div_factor()));
    // The phases' ends, as PyTorch computes them (floating point, so the same divisions).
    const double total = static_cast<double>(options_.total_steps());
    const double pct = options_.pct_start();
    if (options_.three_phase()) {
      ends_ = {pct * total - 1.0, 2.0 * pct * total - 2.0, total - 1.0};
    } else {
      ends_ = {pct * total - 1.0, total - 1.0};
    }
    double previous = 0.0;
    for (const double end : ends_) {
      if (!(end > previous))
        throw ConfigError("keel::sched::OneCycleLR: pct_start " + std::to_string(pct) + " of total_steps " +
                          std::to_string(options_.total_steps()) + " leaves a phase without steps; choose "
                          "pct_start so that every phase has at least one step");
      previous = end;
    }
    apply();
  }

  double learning_rate(std::int64_t step, double base_lr) const {
    const double max_lr = base_lr;
    const double initial_lr = max_lr / options_.div_factor();
    const double min_lr = initial_lr / options_.final_div_factor();
    if (step > options_.total_steps()) return min_lr;  // PyTorch computes up to total_steps, then raises
    // Each phase: (start rate, end rate).
    const double starts[3] = {initial_lr, max_lr, options_.three_phase() ? initial_lr : max_lr};
    const double targets[3] = {max_lr, options_.three_phase() ? initial_lr : min_lr, min_lr};
    const double s = static_cast<double>(step);
    double start_step = 0.0;
    for (std::size_t i = 0; i < ends_.size(); ++i) {
      const double end_step = ends_[i];
      if (s <= end_step || i + 1 == ends_.size()) {
        const double pct = (s - start_step) / (end_step - start_step);
        return anneal(starts[i], targets[i], pct);
      }
      start_step = end_step;
    }
    return min_lr;  // not reached
  }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "total_steps", options_.total_steps());
    fingerprint.add(prefix + "pct_start", options_.pct_start());
    fingerprint.add(prefix + "anneal_strategy", options_.anneal_strategy() == Anneal::cos ? "cos" : "linear");
    fingerprint.add(prefix + "div_factor", options_.div_factor());
    fingerprint.add(prefix + "final_div_factor", options_.final_div_factor());
    fingerprint.add(prefix + "three_phase", options_.three_phase());
    describe_interval(fingerprint, prefix);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
  }

 private:
  double anneal(double start, double end, double pct) const {
    if (options_.anneal_strategy() == Anneal::linear) return (end - start) * pct + start;
    const double cos_out = std::cos(M_PI * pct) + 1.0;
    return end + (start - end) / 2.0 * cos_out;
  }

  Options options_;
  std::vector<double> ends_;  // the last step of each phase (configuration)
};

}  // namespace keel::sched
