#pragma once
// Bitwise comparison of tensors for tests (keel::bitwise_equal: -0.0 differs from 0.0).

#include <keel/keel.hpp>

namespace keel_test {
using keel::bitwise_equal;
}  // namespace keel_test
