#pragma once
// The strategy of a Trainer without keel::strategy<>: one process trains alone. The loop asks
// its strategy at a few points (joining at the start of a fit, the data shard, the gradients
// before the optimizer step, who writes checkpoints); here every answer is the trivial one, and
// the calls compile to nothing. keel::DataParallel (<keel/distributed/data_parallel.hpp>) gives
// the other answers.

#include <keel/data/sampler.hpp>
#include <keel/fingerprint.hpp>

#include <torch/types.h>

namespace keel {

struct SingleProcess {
  int rank() const noexcept { return 0; }
  int world_size() const noexcept { return 1; }

  /// At the start of each fit, before a resume: joins the other processes, if any.
  template <class State>
  void join(State&) {}
  /// After the resume (or the warm start, or nothing), before the first step: every process
  /// starts from the same state. `loaded`: the state came from a checkpoint; `digest()` is the
  /// state's digest.
  template <class State, class Digest>
  void start(State&, bool /*loaded*/, const Digest&) {}
  /// This process's share of each epoch's samples.
  data::SamplerOptions shard(data::SamplerOptions sampling) const { return sampling; }
  /// Before the optimizer step: the window's gradients, loss (returned) and buffers made the
  /// same in every process.
  template <class State>
  torch::Tensor synchronize(State&, const torch::Tensor& window_loss) {
    return window_loss;
  }
  /// Whether this process writes the checkpoints (the others wait for them).
  bool writes_checkpoints() const noexcept { return true; }
  /// A checkpoint of this step was written (or its write failed and training goes on): returns
  /// once every process knows.
  void checkpoint_done() {}
  /// What a resume must match of the strategy: nothing for one process.
  void describe(Fingerprint&) const {}
};

}  // namespace keel
