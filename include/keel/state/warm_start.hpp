#pragma once
// Warm start (TrainerOptions::init_from): a new run takes a checkpoint's weights, or weights and
// optimizer state, and nothing else (its own scheduler, loop position, data order and random
// streams). Strict by default: every parameter and buffer must match by name, shape and dtype.
// Non-strict takes the tensors that match and lists the others. All or nothing either way:
// every check passes before any tensor is copied.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/parse_section.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/lineage.hpp>
#include <keel/log.hpp>
#include <keel/model_state.hpp>
#include <keel/optim/torch_optimizer.hpp>
#include <keel/state/checkpoint_io.hpp>
#include <keel/state/fork.hpp>
#include <keel/trainer_options.hpp>

#include <functional>
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

namespace detail {
/// What a warm start does with a Trainer's components, without their types. It holds
/// references and lambdas over the caller's locals: it lives only for one warm_start call.
struct WarmStartTarget {
  torch::nn::Module& model;
  std::function<Fingerprint()> live;  // the run's configuration (its optimizer's type and settings)
  const TrainerOptions& options;
  Lineage& lineage;
  std::function<void(ModelState&)> parse_model;                  // the file's "model" section
  std::function<void(optim::OptimizerState&)> parse_optimizer;   // and its "optimizer" section
  std::function<std::vector<std::string>(const optim::OptimizerState&)> check_optimizer;
  std::function<void(const optim::OptimizerState&)> take_optimizer_state;  // keeps this run's settings
};

/// The work of warm_start, compiled once whatever the Trainer type.
inline void warm_start(WarmStartTarget& target, const ckpt::Container& container, const std::string& path,
                       const std::string& format_name) {
  const TrainerOptions& options = target.options;
  const bool with_optimizer = options.init_mode() == InitFrom::weights_and_optimizer;
  std::vector<std::string> problems;
  if (container.manifest.format != format_name)
    problems.push_back("was written in format " + container.manifest.format + " but this Trainer uses " + format_name);

  ModelState saved;
  target.parse_model(saved);
  auto fit = saved.fit(target.model);  // the check a resume makes, and what does fit
  std::vector<std::string> skipped = std::move(fit.differences);
  if (options.init_strict())
    for (const auto& line : skipped) problems.push_back(line);

  optim::OptimizerState optimizer;
  if (with_optimizer) {
    const Fingerprint live = target.live();  // (user code: each callback's describe())
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
      target.parse_optimizer(optimizer);
      for (auto& p : target.check_optimizer(optimizer)) problems.push_back(std::move(p));
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
    auto live_params = target.model.named_parameters(true);
    for (const auto* item : fit.parameters) live_params[item->name].copy_(item->tensor);
    auto live_buffers = target.model.named_buffers(true);
    for (const auto* item : fit.buffers) live_buffers[item->name].copy_(item->tensor);
  }
  if (with_optimizer) target.take_optimizer_state(optimizer);

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
  target.lineage.entries.push_back(std::move(entry));
}
}  // namespace detail

/// Starts `s` from `container`'s weights (and optimizer state), as TrainerOptions says; throws
/// CheckpointError listing every problem, with `s` unchanged.
template <class Format, class State>
void warm_start(State& s, const ckpt::Container& container, const std::string& path) {
  detail::WarmStartTarget target{
      *s.model,
      [&] { return s.fingerprint(Format::keel_name); },
      s.options,
      s.lineage,
      [&](ModelState& saved) { detail::parse_named<Format>(container, path, "model", saved); },
      [&](optim::OptimizerState& saved) { detail::parse_named<Format>(container, path, "optimizer", saved); },
      [&](const optim::OptimizerState& saved) { return s.optimizer.check(saved); },
      [&](const optim::OptimizerState& saved) {
        // The checkpoint's per-parameter state; this run's hyper-parameters and scheduled lr.
        std::vector<double> lrs;
        for (std::size_t g = 0; g < s.optimizer.group_count(); ++g) lrs.push_back(s.optimizer.lr(g));
        s.optimizer.apply(saved);
        if constexpr (detail::can_reconfigure<typename State::Optimizer>::value) s.optimizer.reconfigure();
        for (std::size_t g = 0; g < lrs.size(); ++g) s.optimizer.set_lr(g, lrs[g]);
      }};
  detail::warm_start(target, container, path, Format::keel_name);
}

}  // namespace keel::state
