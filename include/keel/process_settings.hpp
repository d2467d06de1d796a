#pragma once
// The process-wide settings a Trainer changes, in one place: LibTorch's intra-op thread count
// (part of bitwise exactness: another count reduces in another order) and, on CUDA, cuDNN's
// deterministic algorithms. Applied once, when a Trainer is constructed.

#include <keel/trainer_options.hpp>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

namespace keel {

inline void apply_process_settings(const TrainerOptions& options) {
  if (options.threads() > 0) at::set_num_threads(options.threads());
  if (options.device().is_cuda()) {
    // Bitwise reproducibility on CUDA needs deterministic cuDNN algorithms.
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
  }
}

}  // namespace keel
