#pragma once
// The fit loop: epochs until a stop condition holds, the end-of-fit save, and the fit-level
// hooks, with on_exception for whatever leaves the loop. (The Trainer prepares a fit: the
// directory lock, the signal handlers, the resume; keel/trainer.hpp.)

#include <keel/data/sampler.hpp>
#include <keel/hooks.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/error.hpp>
#include <keel/loop/epoch_loop.hpp>
#include <keel/loop/scheduler_steps.hpp>
#include <keel/loop/stop_conditions.hpp>

#include <exception>
#include <string>

namespace keel::loop {

template <class State, class Saver, class TrainSet, class ValidationSet>
void fit(State& s, Saver& saver, StopSignals& signals, TrainSet& train, ValidationSet* validation,
         const data::EpochSampler& sampler) {
  if (scheduler_needs_validation(s.scheduler)) {
    if (!validation)
      throw ConfigError(std::string("keel: the scheduler ") + keel::detail::component_name_of(s.scheduler) +
                        " steps on validation metrics, and fit() was given no validation set; pass one "
                        "(trainer.fit(train, validation))");
    if (s.options.validate_every_epochs() == 0 && s.options.validate_every_steps() == 0)
      throw ConfigError(std::string("keel: the scheduler ") + keel::detail::component_name_of(s.scheduler) +
                        " steps on validation metrics, and validate_every_epochs and validate_every_steps are both 0, "
                        "so no validation runs; set one of them");
  }
  try {
    saver.fit_starts();
    s.optimizer.zero_grad();  // every window, the first included, accumulates into zeros
    s.dispatch(event::on_fit_start{});
    while (!done_at_boundary(s, saver, signals)) run_epoch(s, saver, signals, train, validation, sampler);
    saver.at_fit_end();
    s.dispatch(event::on_fit_end{});
  } catch (...) {
    saver.at_exception();  // a checkpoint being written in the background completes first
    s.view.exception = std::current_exception();
    hooks::dispatch_to_all(event::on_exception{}, s.callbacks, s.context);
    s.view.exception = nullptr;
    throw;
  }
}

}  // namespace keel::loop
