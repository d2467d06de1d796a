#pragma once
// The process-wide settings a Trainer changes, in one place: LibTorch's intra-op thread count
// (part of bitwise exactness: another count reduces in another order), on CUDA cuDNN's
// deterministic algorithms, and with TrainerOptions::deterministic LibTorch's deterministic
// algorithms everywhere. Applied once, when a Trainer is constructed.

#include <keel/trainer_options.hpp>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <cstdlib>

namespace keel {

inline void apply_process_settings(const TrainerOptions& options) {
  if (options.threads() > 0) at::set_num_threads(options.threads());
  if (options.deterministic()) {
    // cuBLAS reads this when it creates a handle; ":4096:8" is what LibTorch asks for.
    ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
    at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  }
  if (options.device().is_cuda()) {
    // Bitwise reproducibility on CUDA needs deterministic cuDNN algorithms.
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
  }
}

}  // namespace keel
