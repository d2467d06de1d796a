#pragma once
// Warm start (TrainerOptions::init_from): a new run takes a checkpoint's weights, or weights and
// optimizer state, and nothing else (its own scheduler, loop position, data order and random
// streams). Strict by default: every parameter and buffer must match by name, shape and dtype.
// Non-strict takes the tensors that match and lists the others. All or nothing either way:
// every check passes before any tensor is copied.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/parse_section.hpp>
#include <keel/error.hpp>
#include <keel/lineage.hpp>
#include <keel/log.hpp>
#include <keel/model_state.hpp>
#include <keel/optim/torch_optimizer.hpp>
#include <keel/state/checkpoint_io.hpp>
#include <keel/state/fork.hpp>

#include <string>
#include <vector>

namespace keel::state {

namespace detail {
template <class Format, class T>
void parse_named(const ckpt::Container& container, const std::string& path, const char* name, T& value) {
  const ckpt::SectionInfo* info = container.manifest.find(name);
  if (!info) throw CheckpointError(path, {std::string("has no section '") + name + "' to start from"});
  try {
    ckpt::parse_section<Format>(container, *info, value);
  } catch (const std::exception& e) {
    throw CheckpointError(path, {e.what()});
  }
}
}  // namespace detail

/// Starts `s` from `container`'s weights (and optimizer state), as TrainerOptions says; throws
/// CheckpointError listing every problem, with `s` unchanged.
template <class Format, class State>
void warm_start(State& s, const ckpt::Container& container, const std::string& path) {
  const TrainerOptions& options = s.options;
  const bool with_optimizer = options.init_mode() == InitFrom::weights_and_optimizer;
  std::vector<std::string> problems;
  if (container.manifest.format != Format::keel_name)
    problems.push_back(std::string("was written in format ") + container.manifest.format + " but this Trainer uses " +
                       Format::keel_name);

  ModelState saved;
  detail::parse_named<Format>(container, path, "model", saved);
  auto fit = saved.fit(*s.model);  // the check a resume makes, and what does fit
  std::vector<std::string> skipped = std::move(fit.differences);
  if (options.init_strict())
    for (const auto& line : skipped) problems.push_back(line);

  optim::OptimizerState optimizer;
  if (with_optimizer) {
    const Fingerprint live = s.fingerprint(Format::keel_name);
    const auto* mine = live.find("optimizer.type");
    const auto* theirs = container.manifest.fingerprint.find("optimizer.type");
    if (!mine || !theirs || mine->second != theirs->second) {
      problems.push_back("holds the state of optimizer " + (theirs ? theirs->second : std::string("(none)")) +
                         ", which " + (mine ? mine->second : std::string("this run's optimizer")) +
                         " cannot take over; use InitFrom::weights");
    } else if (const auto* amsgrad = live.find("optimizer.amsgrad");
               amsgrad && container.manifest.fingerprint.find("optimizer.amsgrad") &&
               container.manifest.fingerprint.find("optimizer.amsgrad")->second != amsgrad->second) {
      problems.push_back("holds optimizer state with optimizer.amsgrad " +
                         container.manifest.fingerprint.find("optimizer.amsgrad")->second + " and this run has " +
                         amsgrad->second + ": AMSGrad changes which state Adam keeps; use InitFrom::weights");
    } else {
      detail::parse_named<Format>(container, path, "optimizer", optimizer);
      for (auto& p : s.optimizer.check(optimizer)) problems.push_back(std::move(p));
    }
  }
  const bool tensors_differ = options.init_strict() && !skipped.empty();
  if (!problems.empty())
    throw CheckpointError(path, problems,
                          tensors_differ && !with_optimizer
                              ? "init_strict(false) (the Fashion-MNIST example: --init-non-strict) takes the tensors "
                                "that match and lists the others."
                              : std::string());

  {
    torch::NoGradGuard no_grad;
    auto live_params = s.model->named_parameters(true);
    for (const auto* item : fit.parameters) live_params[item->name].copy_(item->tensor);
    auto live_buffers = s.model->named_buffers(true);
    for (const auto* item : fit.buffers) live_buffers[item->name].copy_(item->tensor);
  }
  if (with_optimizer) {
    // The checkpoint's per-parameter state; this run's hyper-parameters and scheduled lr.
    std::vector<double> lrs;
    for (std::size_t g = 0; g < s.optimizer.group_count(); ++g) lrs.push_back(s.optimizer.lr(g));
    s.optimizer.apply(optimizer);
    if constexpr (detail::can_reconfigure<typename State::Optimizer>::value) s.optimizer.reconfigure();
    for (std::size_t g = 0; g < lrs.size(); ++g) s.optimizer.set_lr(g, lrs[g]);
  }

  LineageEntry entry;
  entry.kind = LineageEntry::Kind::warm_start;
  entry.source = path;
  keel::state::detail::parse_count(container.manifest.fact("global_step"), entry.step);  // facts for people;
  keel::state::detail::parse_count(container.manifest.fact("epoch"), entry.epoch);       // 0 when unreadable
  entry.init = options.init_mode();
  entry.strict = options.init_strict();
  entry.skipped = std::move(skipped);
  std::string message;
  for (const auto& line : entry.describe()) message += (message.empty() ? "" : "\n") + line;
  notice(message);
  s.lineage.entries.push_back(std::move(entry));
}

}  // namespace keel::state
