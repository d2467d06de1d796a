#pragma once
// When training stops: max_steps, max_epochs, a callback's stop request (all checked at
// optimizer-step boundaries), and the preemption signals watched while fit() runs.

#include <keel/loop_state.hpp>
#include <keel/signals.hpp>
#include <keel/trainer_options.hpp>

#include <optional>
#include <vector>

namespace keel::loop {

/// The validation set of a fit() without one.
struct NoValidation {};

/// Whether the loop is done, at an optimizer-step boundary.
inline bool finished(const LoopState& loop, const TrainerOptions& options) {
  return loop.stop_requested || (options.max_steps() > 0 && loop.global_step >= options.max_steps()) ||
         (options.max_epochs() > 0 && loop.epoch >= options.max_epochs());
}

/// The stop signals of TrainerOptions::stop_signals, handled for this object's lifetime (one
/// fit); pending() is the first signal received, or 0.
class StopSignals {
 public:
  explicit StopSignals(const std::vector<int>& signals) {
    if (!signals.empty()) guard_.emplace(signals);
  }
  int pending() const noexcept { return guard_ ? StopSignalGuard::pending() : 0; }

 private:
  std::optional<StopSignalGuard> guard_;
};

}  // namespace keel::loop
