#pragma once
// The one list of sections (keel/state/sections.hpp) bound to plain saved values instead of a
// live Trainer: how keel-ckpt (and the fixture tests) read a checkpoint without the program
// that wrote it. Not part of keel.hpp: a training program never needs it.

#include <keel/loop_state.hpp>
#include <keel/model_state.hpp>
#include <keel/optim/torch_optimizer.hpp>
#include <keel/rng.hpp>
#include <keel/sched/scheduler_base.hpp>
#include <keel/state/sections.hpp>

#include <tuple>
#include <vector>

namespace keel::state {

/// A checkpoint read without the program that wrote it (keel-ckpt): the saved state of the
/// sections every keel checkpoint has. Callback sections stay opaque.
struct SavedState {
  LoopState loop;
  Lineage lineage;
  ModelState model;
  optim::OptimizerState optimizer;
  sched::SchedulerState scheduler;
  std::tuple<> callbacks;
  RngState rng;
  std::vector<RngState> rng_ranks;  ///< each rank's, of a data-parallel job (empty otherwise)

  auto sections() { return checkpoint_sections(loop, lineage, model, optimizer, scheduler, callbacks, rng, rng_ranks); }
};

}  // namespace keel::state
