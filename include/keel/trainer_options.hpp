#pragma once
// TrainerOptions: the loop's settings, with LibTorch-style fluent setters.

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace keel {

struct TrainerOptions {
  /// Where the model trains: torch::kCPU or torch::Device(torch::kCUDA, i).
  TORCH_ARG(torch::Device, device) = torch::kCPU;
  /// Stop after this many epochs (0: no epoch limit).
  TORCH_ARG(std::int64_t, max_epochs) = 1;
  /// Stop after this many optimizer steps in total (0: no step limit).
  TORCH_ARG(std::int64_t, max_steps) = 0;
  /// Samples per micro-batch.
  TORCH_ARG(std::int64_t, batch_size) = 32;
  /// Micro-batches whose gradients are accumulated into one optimizer step.
  TORCH_ARG(std::int64_t, accumulate) = 1;
  /// Shuffle the training data, with a permutation per epoch derived from `seed`.
  TORCH_ARG(bool, shuffle) = true;
  /// Drop the last incomplete batch of each epoch.
  TORCH_ARG(bool, drop_last) = false;
  /// Seed of the data order. Seed LibTorch's generators yourself (keel::seed_everything)
  /// before building the model, so its initialization is reproducible too.
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// LibTorch intra-op threads (0: leave LibTorch's setting). Part of exactness: another
  /// thread count changes reduction order, and a resume with another count is not bitwise.
  TORCH_ARG(int, threads) = 0;
  /// Directory for checkpoints (empty: no checkpoints are written).
  TORCH_ARG(std::string, checkpoint_dir);
  /// Write a checkpoint every this many optimizer steps (0: only at epoch ends and the end).
  TORCH_ARG(std::int64_t, save_every_steps) = 0;
  /// Write a checkpoint at the end of every epoch.
  TORCH_ARG(bool, save_on_epoch_end) = true;
  /// Keep the newest this many checkpoints (0: keep all).
  TORCH_ARG(std::int64_t, keep_last) = 3;
  /// At the start of fit(): "never", "auto" (the newest valid checkpoint in checkpoint_dir,
  /// if any) or the path of a checkpoint file.
  TORCH_ARG(std::string, resume) = "never";
  /// Batch size for validation (0: batch_size).
  TORCH_ARG(std::int64_t, validation_batch_size) = 0;
};

}  // namespace keel
