#pragma once
// The common half of keel's learning-rate schedulers. LibTorch's LRScheduler cannot save its
// step count, so keel's schedulers are its own: the learning rate after `step` optimizer steps
// is a closed-form function of (base_lr, step), never an accumulated product, so a resumed
// run computes the very same doubles as an uninterrupted one.

#include <keel/fingerprint.hpp>

#include <cereal/types/vector.hpp>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace keel::sched {

/// Holds a reference to the optimizer, the base learning rates of its groups and the number
/// of steps taken; Derived supplies `double factor(std::int64_t step) const`.
template <class Derived>
class SchedulerBase {
 public:
  explicit SchedulerBase(torch::optim::Optimizer& optimizer) : optimizer_(optimizer) {
    for (const auto& group : optimizer.param_groups()) base_lrs_.push_back(group.options().get_lr());
  }

  /// Call after every optimizer step.
  void step() {
    ++step_;
    apply();
  }

  std::int64_t steps() const noexcept { return step_; }
  const std::vector<double>& base_lrs() const noexcept { return base_lrs_; }
  /// Learning rate of `group` after `step` optimizer steps.
  double lr_at(std::int64_t step, std::size_t group = 0) const {
    return base_lrs_.at(group) * static_cast<const Derived&>(*this).factor(step);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("step", step_), cereal::make_nvp("base_lrs", base_lrs_));
  }

 protected:
  /// Writes the learning rate for the current step into every param group.
  void apply() {
    auto& groups = optimizer_.get().param_groups();
    for (std::size_t g = 0; g < groups.size() && g < base_lrs_.size(); ++g)
      groups[g].options().set_lr(lr_at(step_, g));
  }

 private:
  std::reference_wrapper<torch::optim::Optimizer> optimizer_;
  std::vector<double> base_lrs_;
  std::int64_t step_ = 0;
};

}  // namespace keel::sched
