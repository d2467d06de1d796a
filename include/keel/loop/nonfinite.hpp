#pragma once
// Non-finite checks: a NaN or infinite loss (every micro-batch) or gradient (before every
// optimizer step), handled by TrainerOptions::on_nonfinite, and the refusal to save a state
// whose parameters are not finite.

#include <keel/error.hpp>
#include <keel/loop_state.hpp>
#include <keel/trainer_options.hpp>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace keel::loop {

namespace detail {
/// Below this many elements a contiguous CPU gradient is checked here, in a plain loop: for
/// small tensors, dispatching at::sum costs microseconds, far more than the check itself.
inline constexpr std::int64_t inline_check_limit = 1 << 15;

/// Whether every element is finite, from the exponent bits alone (all ones: NaN or infinity).
/// Exact, with no rounding or overflow; eight independent lanes keep the loop from waiting on
/// one dependency chain.
template <class Float, class Bits>
bool all_finite_bits(const torch::Tensor& t, Bits exponent) {
  static_assert(sizeof(Float) == sizeof(Bits));
  const Float* data = t.data_ptr<Float>();
  const std::int64_t n = t.numel();
  auto nonfinite = [&](std::int64_t i) -> Bits {
    Bits bits;
    std::memcpy(&bits, data + i, sizeof bits);
    return (bits & exponent) == exponent;
  };
  Bits lanes[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) lanes[k] |= nonfinite(i + k);
  Bits any = 0;
  for (; i < n; ++i) any |= nonfinite(i);
  for (Bits lane : lanes) any |= lane;
  return any == 0;
}

/// Checks `grad` (a gradient or any tensor) here when it is small, contiguous, float or double
/// and on the CPU; returns nullopt when it should go through a reduction instead.
inline std::optional<bool> finite_inline(const torch::Tensor& grad) {
  if (!grad.is_cpu() || !grad.is_contiguous() || grad.numel() > inline_check_limit) return std::nullopt;
  if (grad.scalar_type() == torch::kFloat) return all_finite_bits<float, std::uint32_t>(grad, 0x7f800000u);
  if (grad.scalar_type() == torch::kDouble)
    return all_finite_bits<double, std::uint64_t>(grad, 0x7ff0000000000000ull);
  return std::nullopt;
}
}  // namespace detail

/// Whether every gradient of `parameters` is finite. NaN and infinities survive summation, so
/// a finite total of the larger gradients' sums proves them finite with one reduction per
/// parameter and one synchronization, a fraction of what `isfinite(grad).all()` costs (a mask
/// as large as the model); small CPU gradients are checked in place (detail::finite_inline). A
/// non-finite total may also be finite values whose sum overflows: the caller then looks again,
/// exactly (first_nonfinite_gradient).
inline bool gradients_look_finite(const std::vector<torch::Tensor>& parameters) {
  std::vector<torch::Tensor> sums;
  for (const auto& parameter : parameters) {
    const auto& grad = parameter.grad();
    if (!grad.defined()) continue;
    if (const auto finite = detail::finite_inline(grad)) {
      if (!*finite) return false;
      continue;
    }
    torch::Tensor sum = grad.sum();
    sums.push_back((sum.is_complex() ? at::abs(sum) : sum).to(torch::kDouble));
  }
  return sums.empty() || at::isfinite(torch::stack(sums).sum()).item<bool>();
}

/// The name of the first parameter whose gradient holds NaN or an infinity ("" if none),
/// element by element: the exact pass behind gradients_look_finite.
inline std::string first_nonfinite_gradient(const torch::nn::Module& model) {
  for (const auto& item : model.named_parameters(true)) {
    const auto& grad = item.value().grad();
    if (grad.defined() && !at::isfinite(grad).all().item<bool>()) return item.key();
  }
  return {};
}

namespace detail {
/// Whether every element of `t` is finite. On the CPU, for float and double, with one
/// reduction and no mask as large as `t` (isfinite().all() allocates one and runs ~60x
/// slower, over a second for 50 M parameters): NaN propagates through aminmax and an infinity
/// shows as the minimum or maximum; small contiguous ones in a plain loop (finite_inline), as
/// a save checks every bias. Other types and devices take isfinite().all().
inline bool all_finite(const torch::Tensor& t) {
  if (t.numel() == 0 || !(t.is_floating_point() || t.is_complex())) return true;
  if (const auto finite = finite_inline(t)) return *finite;
  if (t.is_cpu() && (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble)) {
    const auto [lowest, highest] = at::aminmax(t.detach());
    return std::isfinite(lowest.item<double>()) && std::isfinite(highest.item<double>());
  }
  return at::isfinite(t).all().item<bool>();
}
}  // namespace detail

/// The name of the first parameter holding NaN or an infinity ("" if none).
inline std::string first_nonfinite_parameter(const torch::nn::Module& model) {
  for (const auto& item : model.named_parameters(true))
    if (!detail::all_finite(item.value())) return item.key();
  return {};
}

/// Watches the accumulation windows of one epoch: their micro-batch losses, then gradients.
class NonFiniteWatch {
 public:
  NonFiniteWatch(NonFinitePolicy policy, const torch::nn::Module& model)
      : policy_(policy), model_(model), parameters_(model.parameters(true)) {}

  /// After each micro-batch's backward. Under `stop`, a non-finite loss throws here.
  void check_loss(const torch::Tensor& loss, const LoopState& loop) {
    if (loop.micro_batch == 0) window_nonfinite_ = false;  // a new window (micro_batch counts before ++)
    const double value = loss.item<double>();
    if (std::isfinite(value)) return;
    window_nonfinite_ = true;
    if (policy_ == NonFinitePolicy::stop)
      throw NonFiniteError(message("the loss is " + std::to_string(value), loop));
  }

  /// Before the optimizer step: "" when the window's losses and gradients are all finite, else
  /// what was not (under `stop`, throws instead).
  std::string check_window(const LoopState& loop) {
    std::string bad;
    if (window_nonfinite_) {
      bad = "loss";
    } else if (gradients_look_finite(parameters_)) {
      // nothing to report
    } else if (const std::string parameter = first_nonfinite_gradient(model_); !parameter.empty()) {
      if (policy_ == NonFinitePolicy::stop)
        throw NonFiniteError(message("the gradient of '" + parameter + "' is not finite", loop));
      bad = "gradient of '" + parameter + "'";
    }
    end_window();
    return bad;
  }

  /// The window's loss combined over several processes (keel::DataParallel): not finite when
  /// any process's was, so that every process skips or steps alike.
  void combined_loss(const torch::Tensor& loss) {
    if (!std::isfinite(loss.item<double>())) window_nonfinite_ = true;
  }

  /// Whether a micro-batch loss of the current window was not finite.
  bool window_loss_nonfinite() const noexcept { return window_nonfinite_; }
  /// The window ended without check_window (the loss scaler skipped its step).
  void end_window() noexcept { window_nonfinite_ = false; }

 private:
  static std::string message(const std::string& what, const LoopState& loop) {
    return "keel: " + what + " at step " + std::to_string(loop.global_step + 1) + " (epoch " +
           std::to_string(loop.epoch) + ", batch " + std::to_string(loop.batch_in_epoch) +
           "); training stopped before the optimizer applied it, and no checkpoint holds it. Lower the "
           "learning rate, check the data, or set TrainerOptions().on_nonfinite(keel::NonFinitePolicy::skip_step)";
  }

  NonFinitePolicy policy_;
  const torch::nn::Module& model_;
  std::vector<torch::Tensor> parameters_;  // collected once: the module's tree is walked per call otherwise
  bool window_nonfinite_ = false;  // a loss of the current accumulation window was not finite
};

}  // namespace keel::loop
