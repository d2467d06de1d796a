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
#include <string>
#include <vector>

namespace keel::loop {

namespace detail {
/// Below this many elements a CPU gradient is summed here, in a plain loop: for small tensors
/// the cost of dispatching at::sum (a few microseconds) dwarfs the sum itself.
inline constexpr std::int64_t inline_sum_limit = 1 << 15;

template <class T>
double sum_in_double(const torch::Tensor& t) {
  const T* data = t.data_ptr<T>();
  double sum = 0.0;
  for (std::int64_t i = 0, n = t.numel(); i < n; ++i) sum += static_cast<double>(data[i]);
  return sum;
}
}  // namespace detail

/// The name of the first parameter whose gradient holds NaN or an infinity ("" if none).
/// NaN and infinities survive summation, so a finite total of the gradients' sums proves them
/// all finite with one reduction per parameter and one synchronization; that costs a fraction
/// of `isfinite(grad).all()`, which builds a mask as large as the model. Only a non-finite
/// total (a real NaN, or finite values whose sum overflows) takes the exact per-element pass.
/// Small contiguous float CPU gradients are summed in place, in double (where finite floats
/// cannot overflow), without a dispatch.
inline std::string first_nonfinite_gradient(const torch::nn::Module& model) {
  double host_total = 0.0;
  std::vector<torch::Tensor> sums;
  for (const auto& parameter : model.parameters(true)) {
    const auto& grad = parameter.grad();
    if (!grad.defined()) continue;
    if (grad.is_cpu() && grad.is_contiguous() && grad.numel() <= detail::inline_sum_limit &&
        (grad.scalar_type() == torch::kFloat || grad.scalar_type() == torch::kDouble)) {
      host_total += grad.scalar_type() == torch::kFloat ? detail::sum_in_double<float>(grad)
                                                          : detail::sum_in_double<double>(grad);
      continue;
    }
    torch::Tensor sum = grad.sum();
    sums.push_back((sum.is_complex() ? at::abs(sum) : sum).to(torch::kDouble));
  }
  bool finite = std::isfinite(host_total);
  if (finite && !sums.empty()) finite = at::isfinite(torch::stack(sums).sum()).item<bool>();
  if (finite) return {};
  for (const auto& item : model.named_parameters(true)) {
    const auto& grad = item.value().grad();
    if (grad.defined() && !at::isfinite(grad).all().item<bool>()) return item.key();
  }
  return {};
}

/// The name of the first parameter holding NaN or an infinity ("" if none).
inline std::string first_nonfinite_parameter(const torch::nn::Module& model) {
  for (const auto& item : model.named_parameters(true))
    if (!at::isfinite(item.value()).all().item<bool>()) return item.key();
  return {};
}

/// Watches one accumulation window: its micro-batch losses, then its gradients.
class NonFiniteWatch {
 public:
  explicit NonFiniteWatch(NonFinitePolicy policy) : policy_(policy) {}

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
  std::string check_window(const torch::nn::Module& model, const LoopState& loop) {
    std::string bad;
    if (window_nonfinite_) {
      bad = "loss";
    } else if (const std::string parameter = first_nonfinite_gradient(model); !parameter.empty()) {
      if (policy_ == NonFinitePolicy::stop)
        throw NonFiniteError(message("the gradient of '" + parameter + "' is not finite", loop));
      bad = "gradient of '" + parameter + "'";
    }
    window_nonfinite_ = false;
    return bad;
  }

 private:
  static std::string message(const std::string& what, const LoopState& loop) {
    return "keel: " + what + " at step " + std::to_string(loop.global_step + 1) + " (epoch " +
           std::to_string(loop.epoch) + ", batch " + std::to_string(loop.batch_in_epoch) +
           "); training stopped before the optimizer applied it, and no checkpoint holds it. Lower the "
           "learning rate, check the data, or set TrainerOptions().on_nonfinite(keel::NonFinitePolicy::skip_step)";
  }

  NonFinitePolicy policy_;
  bool window_nonfinite_ = false;  // a loss of the current accumulation window was not finite
};

}  // namespace keel::loop
