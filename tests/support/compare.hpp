#pragma once
// Bitwise comparison of tensors (torch::equal treats -0.0 and 0.0 as equal, and NaN as unequal).

#include <torch/torch.h>

#include <cstring>

namespace keel_test {

inline bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto ca = a.detach().cpu().contiguous();
  const auto cb = b.detach().cpu().contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

}  // namespace keel_test
