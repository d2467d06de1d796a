#pragma once
// The end of an accumulation window: unscale the gradients (dynamic loss scaling), check the
// window for non-finite values, clip the gradients, step the optimizer (or skip the step), zero
// the gradients, advance the scheduler and the counters.

#include <keel/hooks.hpp>
#include <keel/loop/gradient_clipping.hpp>
#include <keel/loop/loss_scaler.hpp>
#include <keel/log.hpp>
#include <keel/loop/nonfinite.hpp>

#include <torch/types.h>

#include <cstdint>
#include <limits>
#include <string>

namespace keel::loop {

/// One optimizer step over the window just accumulated. `window_loss` is the sum of the
/// window's `window` micro-batch losses (detached); callbacks see its mean afterwards.
template <class State>
void optimizer_step(State& s, NonFiniteWatch& nonfinite, LossScaler& scaler, std::int64_t window,
                    const torch::Tensor& window_loss) {
  s.dispatch(event::on_optimizer_step_start{});
  // With several processes (keel::DataParallel), their gradients, losses and buffers are made
  // the same first, so that every process decides alike below.
  const torch::Tensor combined_loss = s.strategy.synchronize(s, window_loss);
  if (s.strategy.world_size() > 1) nonfinite.combined_loss(combined_loss);
  // Gradients that overflow under a loss scale that is too large are expected: the scaler skips
  // the step and backs off. A non-finite loss is not the scale's doing: on_nonfinite decides.
  if (!nonfinite.window_loss_nonfinite() && !scaler.unscale()) {
    s.view.grad_norm = std::numeric_limits<double>::quiet_NaN();
    scaler.skipped(s.loop.global_step + 1);
    nonfinite.end_window();
  } else if (const std::string bad = nonfinite.check_window(s.loop); bad.empty()) {
    s.view.grad_norm = clip_gradients(*s.model, s.options);
    s.optimizer.step();
    scaler.stepped();
  } else {
    // skip_step: the step counts (the schedule and the data stay aligned) but applies nothing.
    s.view.grad_norm = std::numeric_limits<double>::quiet_NaN();
    ++s.loop.skipped_steps;
    warn("step " + std::to_string(s.loop.global_step + 1) + " skipped: non-finite " + bad + " (" +
         std::to_string(s.loop.skipped_steps) + " skipped so far)");
  }
  s.optimizer.zero_grad();
  s.scheduler.step();
  ++s.loop.global_step;
  s.loop.micro_batch = 0;
  s.view.loss = window == 1 ? combined_loss : combined_loss / static_cast<double>(window);
  s.publish_lrs();
  s.dispatch(event::on_optimizer_step_end{});
}

}  // namespace keel::loop
