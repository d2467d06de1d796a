#pragma once
// Where the training loop stands: the position saved in every checkpoint's "loop" section.

#include <cereal/cereal.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace keel {

/// Dynamic loss scaling's state (keel/loop/loss_scaler.hpp); all zero when the loss is not scaled.
struct LossScaleState {
  double scale = 0.0;               ///< the current scale (0: not started)
  std::int64_t growth_tracker = 0;  ///< steps without overflow since the scale last changed
  std::int64_t skipped_steps = 0;   ///< steps skipped because their gradients overflowed
  std::int64_t backoffs_in_a_row = 0;  ///< skips since the last step taken

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("scale", scale), cereal::make_nvp("growth_tracker", growth_tracker),
            cereal::make_nvp("skipped_steps", skipped_steps), cereal::make_nvp("backoffs_in_a_row", backoffs_in_a_row));
  }
};

/// Where the loop stands. Saved in every checkpoint; checkpoints are taken at optimizer-step
/// boundaries, where `micro_batch` is 0 (a resume replays a partial accumulation window).
struct LoopState {
  std::int64_t epoch = 0;           ///< index of the current epoch (= epochs completed)
  std::int64_t global_step = 0;     ///< optimizer steps taken since the start of training
  std::int64_t batch_in_epoch = 0;  ///< micro-batches consumed in the current epoch
  std::int64_t micro_batch = 0;     ///< position inside the gradient-accumulation window
  std::uint64_t data_seed = 0;      ///< seed of the sampler's per-epoch permutations
  bool stop_requested = false;      ///< a callback asked to stop (early stopping); honoured at
                                    ///< the next optimizer-step boundary
  std::int64_t skipped_steps = 0;   ///< optimizer steps skipped for a non-finite loss or gradient
                                    ///< (TrainerOptions::on_nonfinite)
  LossScaleState loss_scale;        ///< dynamic loss scaling (fp16)
  /// Samples of the current epoch's order that were trained before its batch 0 was counted: 0,
  /// except in an epoch resumed with another number of processes or batch size, which goes on
  /// from where the old one stopped (keel/state/fork.hpp). batch_in_epoch counts from there.
  std::int64_t epoch_offset = 0;

  // Version 2 added skipped_steps, version 3 loss_scale, version 4 epoch_offset; older files
  // read as 0 skipped, no loss scale and no offset.
  template <class Archive>
  void serialize(Archive& archive, std::uint32_t version) {
    if (version > 4)
      throw std::runtime_error("keel::LoopState version " + std::to_string(version) +
                               " was written by a newer keel; this keel reads versions up to 4: upgrade keel");
    archive(cereal::make_nvp("epoch", epoch), cereal::make_nvp("global_step", global_step),
            cereal::make_nvp("batch_in_epoch", batch_in_epoch),
            cereal::make_nvp("micro_batch", micro_batch), cereal::make_nvp("data_seed", data_seed),
            cereal::make_nvp("stop_requested", stop_requested));
    if (version >= 2) archive(cereal::make_nvp("skipped_steps", skipped_steps));
    if (version >= 3) archive(cereal::make_nvp("loss_scale", loss_scale));
    if (version >= 4) archive(cereal::make_nvp("epoch_offset", epoch_offset));
  }
};

}  // namespace keel

CEREAL_CLASS_VERSION(keel::LoopState, 4);
