#pragma once
// When the loop advances the scheduler besides step() (after every optimizer step, required of
// every scheduler): on_epoch_end() at the end of each epoch (schedulers of Interval::epoch) and
// on_validation_end(metrics) after each validation (ReduceLROnPlateau). Each is optional and
// detected here; a scheduler without it is not called.

#include <keel/context.hpp>

#include <type_traits>
#include <utility>

namespace keel::loop {

namespace detail {
template <class S, class = void>
struct steps_on_epoch_end : std::false_type {};
template <class S>
struct steps_on_epoch_end<S, std::void_t<decltype(std::declval<S&>().on_epoch_end())>> : std::true_type {};

template <class S, class = void>
struct steps_on_validation : std::false_type {};
template <class S>
struct steps_on_validation<S, std::void_t<decltype(std::declval<S&>().on_validation_end(std::declval<const Metrics&>()))>>
    : std::true_type {};
}  // namespace detail

template <class S, class = void>
struct chooses_at_run_time : std::false_type {};
template <class S>
struct chooses_at_run_time<S, std::void_t<decltype(bool(std::declval<const S&>().needs_validation()))>> : std::true_type {};

/// Whether the scheduler needs validation metrics (fit refuses to start without a validation
/// set): one with on_validation_end, unless it says otherwise at run time (keel::sched::OneOf).
template <class Scheduler>
bool scheduler_needs_validation(const Scheduler& scheduler) {
  if constexpr (chooses_at_run_time<Scheduler>::value) {
    return scheduler.needs_validation();
  } else {
    return detail::steps_on_validation<Scheduler>::value;
  }
}

template <class Scheduler>
void scheduler_after_validation(Scheduler& scheduler, const Metrics& metrics) {
  if constexpr (detail::steps_on_validation<Scheduler>::value) scheduler.on_validation_end(metrics);
}

template <class Scheduler>
void scheduler_at_epoch_end(Scheduler& scheduler) {
  if constexpr (detail::steps_on_epoch_end<Scheduler>::value) scheduler.on_epoch_end();
}

}  // namespace keel::loop
