#pragma once
// The strategy of a Trainer without keel::strategy<>: one process trains alone. The loop asks
// its strategy at a few points (joining at the start of a fit, the data shard, the backward
// pass and the gradients before the optimizer step, who writes checkpoints); here every answer
// is the trivial one, and the calls compile to nothing. keel::DataParallel (<keel/distributed/data_parallel.hpp>) gives
// the other answers.

#include <keel/data/sampler.hpp>
#include <keel/fingerprint.hpp>

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>

namespace keel {

/// How a checkpoint save ended, as the writing process tells the others.
enum class SaveOutcome : std::int64_t {
  committed = 0,  ///< written, and last.ckpt points at it
  skipped = 1,    ///< an I/O error under continue_on_save_error: training goes on unsaved
  failed = 2,     ///< the save threw: training ends
};

struct SingleProcess {
  int rank() const noexcept { return 0; }
  int world_size() const noexcept { return 1; }

  /// At the start of each fit, before a resume: joins the other processes, if any.
  template <class State>
  void join(State&) {}
  /// After the resume (or the warm start, or nothing), before the first step: every process
  /// starts alike. `loaded`: the state came from a checkpoint; `configuration`: what a resume
  /// must match; `digest()`: the state's digest.
  template <class State, class Digest>
  void start(State&, bool /*loaded*/, const Fingerprint& /*configuration*/, const Digest&) {}
  /// At each optimizer-step boundary: whether to stop, decided by every process together.
  /// Returns the stop signal to act on (0: none); may set `stop_requested`.
  int agree_on_stop(bool& /*stop_requested*/, int pending_signal) { return pending_signal; }
  /// This process's share of each epoch's samples.
  data::SamplerOptions shard(data::SamplerOptions sampling) const { return sampling; }
  /// Before the backward pass of each micro-batch (`window_ends`: the window's last, whose
  /// gradients are then complete).
  template <class State>
  void before_backward(State&, bool /*window_ends*/) {}
  /// Before the optimizer step: the window's gradients, loss (returned) and buffers made the
  /// same in every process.
  template <class State>
  torch::Tensor synchronize(State&, const torch::Tensor& window_loss) {
    return window_loss;
  }
  /// After an evaluation of this process's share: the metric sums (sample-weighted) and the
  /// sample count of every process, added up, in place.
  void add_up(std::map<std::string, double>& /*sums*/, std::int64_t& /*samples*/) {}
  /// Before each save, on every process: every process's random streams into `generators.ranks`.
  template <class Generators>
  void gather_random_streams(Generators&) {}
  /// Whether this process writes the checkpoints (the others wait for them).
  bool writes_checkpoints() const noexcept { return true; }
  /// How the writing process's save ended, known to every process once this returns.
  SaveOutcome share_save_outcome(SaveOutcome outcome) { return outcome; }
  /// What a resume must match of the strategy: nothing for one process.
  void describe(Fingerprint&) const {}
};

}  // namespace keel
