#pragma once
// Autocast around the forward passes (TrainerOptions::precision): a scope that turns autocast
// on for the training device with the chosen 16-bit type, and restores what was there before
// (and clears autocast's cast cache) when it ends.

#include <keel/detail/torch_compat.hpp>
#include <keel/trainer_options.hpp>

namespace keel::loop {

class AutocastScope {
 public:
  explicit AutocastScope(const TrainerOptions& options)
      : active_(options.precision() != Precision::fp32), device_(options.device().type()) {
    if (!active_) return;
    was_enabled_ = keel::detail::autocast_enabled(device_);
    was_dtype_ = keel::detail::autocast_dtype(device_);
    keel::detail::set_autocast_dtype(device_, options.precision() == Precision::bf16 ? c10::kBFloat16 : c10::kHalf);
    keel::detail::set_autocast_enabled(device_, true);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    keel::detail::set_autocast_enabled(device_, was_enabled_);
    keel::detail::set_autocast_dtype(device_, was_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_;
  c10::DeviceType device_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::kFloat;
};

}  // namespace keel::loop
