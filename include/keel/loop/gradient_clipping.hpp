#pragma once
// Gradient clipping at the end of an accumulation window, before the optimizer step: by global
// norm (LibTorch's clip_grad_norm_) or by value (clip_grad_value_). Returns the global norm
// before clipping, which the loop publishes to callbacks and logs.

#include <keel/trainer_options.hpp>

#include <torch/nn/module.h>
#include <torch/nn/utils/clip_grad.h>

#include <limits>
#include <vector>

namespace keel::loop {

/// Clips the gradients of `model` as `options` say; the global norm before clipping, or NaN
/// when no clipping is configured (nothing is computed then).
inline double clip_gradients(torch::nn::Module& model, const TrainerOptions& options) {
  const double by_norm = options.clip_grad_norm();
  const double by_value = options.clip_grad_value();
  if (by_norm <= 0.0 && by_value <= 0.0) return std::numeric_limits<double>::quiet_NaN();
  std::vector<torch::Tensor> parameters;
  for (const auto& p : model.parameters())
    if (p.grad().defined()) parameters.push_back(p);
  if (parameters.empty()) return 0.0;
  if (by_norm > 0.0) return torch::nn::utils::clip_grad_norm_(parameters, by_norm, options.clip_grad_norm_type());
  // The norm alone: an infinite limit scales nothing.
  const double norm = torch::nn::utils::clip_grad_norm_(parameters, std::numeric_limits<double>::infinity(), 2.0);
  torch::nn::utils::clip_grad_value_(parameters, by_value);
  return norm;
}

}  // namespace keel::loop
