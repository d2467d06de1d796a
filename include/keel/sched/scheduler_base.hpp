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

/// What every keel scheduler saves: the optimizer steps taken and the base learning rates of
/// the param groups. keel-ckpt reads scheduler sections through this type.
struct SchedulerState {
  std::int64_t step = 0;
  std::vector<double> base_lrs;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("step", step), cereal::make_nvp("base_lrs", base_lrs));
  }
};

/// Holds a reference to the optimizer, the base learning rates of its groups and the number
/// of steps taken; Derived supplies `double factor(std::int64_t step) const`.
template <class Derived>
class SchedulerBase {
 public:
  /// Layout version of the saved state (the checkpoint section's version).
  static constexpr std::uint32_t keel_version = 1;

  explicit SchedulerBase(torch::optim::Optimizer& optimizer) : optimizer_(optimizer) {
    for (const auto& group : optimizer.param_groups()) state_.base_lrs.push_back(group.options().get_lr());
  }

  /// Call after every optimizer step.
  void step() {
    ++state_.step;
    apply();
  }

  std::int64_t steps() const noexcept { return state_.step; }
  const std::vector<double>& base_lrs() const noexcept { return state_.base_lrs; }
  /// Learning rate of `group` after `step` optimizer steps.
  double lr_at(std::int64_t step, std::size_t group = 0) const {
    return state_.base_lrs.at(group) * static_cast<const Derived&>(*this).factor(step);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    state_.serialize(archive);  // the same bytes as a SchedulerState
  }

 protected:
  /// Writes the learning rate for the current step into every param group.
  void apply() {
    auto& groups = optimizer_.get().param_groups();
    for (std::size_t g = 0; g < groups.size() && g < state_.base_lrs.size(); ++g)
      groups[g].options().set_lr(lr_at(state_.step, g));
  }

 private:
  std::reference_wrapper<torch::optim::Optimizer> optimizer_;
  SchedulerState state_;
};

}  // namespace keel::sched
