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

/// At an optimizer-step boundary: true when training is done; a stop signal saves and throws
/// Interrupted. With several processes they decide together (keel::DataParallel: a stop on any
/// is a stop on all), so that all save the same checkpoint.
template <class State, class Saver>
bool done_at_boundary(State& s, Saver& saver, const StopSignals& signals) {
  const int signal = s.strategy.agree_on_stop(s.loop.stop_requested, signals.pending());
  if (finished(s.loop, s.options)) return true;
  if (signal) saver.stop_for_signal(signal);
  return false;
}

}  // namespace keel::loop
