#pragma once
// Dynamic loss scaling (PyTorch's torch.cuda.amp.GradScaler, which LibTorch's C++ API lacks):
// float16 gradients of small losses underflow to zero, so the loss is multiplied by a large
// scale before backward and the gradients divided by it before the optimizer step. When a
// step's gradients hold an infinity or NaN (the scale was too large), the step is skipped and
// the scale backs off; after `growth_interval` good steps in a row it grows again.
//
// Gradients that stay non-finite after LossScaling::max_backoffs_in_a_row back-offs in a row
// are not an overflow but a NaN of the model's or the data's: from then on the step goes to
// TrainerOptions::on_nonfinite like any other (stop, by default). The scale grows only while it
// stays finite in float32, the loss's type.
//
// On with Precision::fp16, and with any precision when TrainerOptions::loss_scaling is set.
// The scale, the count of good steps since the last change and the count of skipped steps are
// part of the loop's saved state (LoopState::loss_scale), so a resumed run scales as the
// uninterrupted one.

#include <keel/log.hpp>
#include <keel/loop/nonfinite.hpp>
#include <keel/loop_state.hpp>
#include <keel/trainer_options.hpp>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

namespace keel::loop {

class LossScaler {
 public:
  /// Takes the configured initial scale when the state has none yet (a new run, or a fork that
  /// turns scaling on).
  LossScaler(const TrainerOptions& options, LossScaleState& state, const torch::nn::Module& model)
      : enabled_(options.scales_loss()), config_(options.loss_scaling_or_default()), state_(state) {
    if (!enabled_) return;
    if (state_.scale == 0.0) state_.scale = config_.init_scale();
    parameters_ = model.parameters(true);
  }

  bool enabled() const noexcept { return enabled_; }
  double scale() const noexcept { return enabled_ ? state_.scale : 1.0; }

  /// The tensor to call backward() on.
  torch::Tensor scaled(const torch::Tensor& loss) const { return enabled_ ? loss * state_.scale : loss; }

  /// Divides every gradient by the scale, in place; false when one of them is not finite and
  /// that is taken for an overflow (the step must then be skipped: call skipped()). A
  /// power-of-two scale divides exactly.
  bool unscale() {
    if (!enabled_) return true;
    torch::NoGradGuard no_grad;
    const double inverse = 1.0 / state_.scale;
    for (auto& parameter : parameters_) {
      auto& grad = parameter.mutable_grad();
      if (grad.defined()) grad.mul_(inverse);
    }
    // The quick check may mistake an overflowing sum of finite values for an infinity: confirm.
    if (gradients_look_finite(parameters_) || !any_nonfinite_gradient()) return true;
    // Backed off this often in a row: not an overflow. on_nonfinite's check finds it.
    return state_.backoffs_in_a_row >= config_.max_backoffs_in_a_row();
  }

  /// After an optimizer step was taken: one more good step; the scale grows after enough.
  void stepped() {
    if (!enabled_) return;
    state_.backoffs_in_a_row = 0;
    if (++state_.growth_tracker >= config_.growth_interval()) {
      const double grown = state_.scale * config_.growth_factor();
      if (grown <= static_cast<double>(std::numeric_limits<float>::max())) state_.scale = grown;
      state_.growth_tracker = 0;
    }
  }

  /// After a step was skipped for non-finite gradients: the scale backs off. Said at the 1st,
  /// 2nd, 4th, 8th... skip of the run, so that a run that keeps skipping is visible.
  void skipped(std::int64_t step) {
    if (!enabled_) return;
    const double was = state_.scale;
    state_.scale *= config_.backoff_factor();
    state_.growth_tracker = 0;
    ++state_.backoffs_in_a_row;
    const std::int64_t skipped = ++state_.skipped_steps;
    if ((skipped & (skipped - 1)) == 0) {
      char text[200];
      std::snprintf(text, sizeof text, "step %lld skipped: the gradients overflowed at loss scale %g; scale now %g "
                    "(%lld steps skipped for overflow so far)", static_cast<long long>(step), was, state_.scale,
                    static_cast<long long>(skipped));
      notice(text);
    }
  }

 private:
  bool any_nonfinite_gradient() const {
    for (const auto& parameter : parameters_) {
      const auto& grad = parameter.grad();
      if (grad.defined() && !at::isfinite(grad).all().item<bool>()) return true;
    }
    return false;
  }

  bool enabled_;
  LossScaling config_;
  LossScaleState& state_;
  std::vector<torch::Tensor> parameters_;
};

}  // namespace keel::loop
