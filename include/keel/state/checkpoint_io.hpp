#pragma once
// A TrainState to and from a checkpoint, through the one list of sections: the atomic write,
// the snapshot for a background write, the state digest (the same bytes, hashed, nothing
// written) and the all-or-nothing load.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/digest.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/checkpoint/snapshot.hpp>
#include <keel/error.hpp>
#include <keel/log.hpp>
#include <keel/loop/nonfinite.hpp>
#include <keel/machine.hpp>
#include <keel/state/fork.hpp>
#include <keel/state/section.hpp>
#include <keel/state/sections.hpp>
#include <keel/version.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::state {

using Facts = std::vector<std::pair<std::string, std::string>>;

/// The manifest's facts: for people (position, versions) and for checks that warn instead of
/// refuse (the machine). None of them enters the state digest.
template <class State>
Facts manifest_facts(const State& s, Facts extra) {
  Facts facts = {{"global_step", std::to_string(s.loop.global_step)},
                 {"epoch", std::to_string(s.loop.epoch)},
                 {"batch_in_epoch", std::to_string(s.loop.batch_in_epoch)},
                 {"train_size", std::to_string(s.train_size)},
                 {"keel_version", KEEL_VERSION_STRING}};
  if (s.loop.epoch_offset != 0) facts.emplace_back("epoch_offset", std::to_string(s.loop.epoch_offset));
  for (auto& fact : machine_facts()) facts.push_back(std::move(fact));
  for (auto& fact : extra) facts.push_back(std::move(fact));
  return facts;
}

namespace detail {
inline std::string nonfinite_message(const std::string& parameter, std::int64_t step, const ckpt::fs::path& path) {
  return "keel: parameter '" + parameter + "' holds NaN or infinite values at step " + std::to_string(step) + "; " +
         path.string() + " was not written, and the checkpoints before it are untouched. Lower the learning rate "
         "or clip gradients";
}

/// Refuses (NonFiniteError) to save a state whose parameters hold NaN or an infinity.
template <class State>
void refuse_nonfinite(const State& s, const ckpt::fs::path& path) {
  if (const std::string bad = loop::first_nonfinite_parameter(*s.model); !bad.empty())
    throw NonFiniteError(nonfinite_message(bad, s.loop.global_step, path));
}
}  // namespace detail

/// Writes a complete checkpoint to `path` atomically (temp file, fsync, rename). Refuses
/// (NonFiniteError) when a parameter holds NaN or an infinity: a non-finite state is never
/// written over a good checkpoint.
/// `configuration`: the fingerprint it records (s.fingerprint(Format::keel_name)).
template <class Format, class State>
void write_checkpoint(State& s, const ckpt::fs::path& path, const Fingerprint& configuration, Facts extra_facts = {}) {
  detail::refuse_nonfinite(s, path);
  ckpt::write_atomically(path, [&](ckpt::HashingFileSink& sink) {
    ckpt::ContainerWriter writer(sink, Format::keel_name, Format::format_id);
    SectionList::of<Format>(s.sections()).write(writer);
    writer.finish(configuration, manifest_facts(s, std::move(extra_facts)));
  });
}

/// Captures in `snapshot` what write_checkpoint would write to `path` (the same bytes, the same
/// refusal), for a thread of its own to write (ckpt::SectionSnapshot::write_file). The
/// parameters the snapshot copied are checked for NaN and infinities on their copies, by that
/// thread before it creates the file (its NonFiniteError comes where the write's outcome is
/// collected); the others here.
template <class Format, class State>
void snapshot_checkpoint(State& s, ckpt::SectionSnapshot& snapshot, const ckpt::fs::path& path,
                         const Fingerprint& configuration, Facts extra_facts = {}) {
  snapshot.clear();
  SectionList::of<Format>(s.sections()).write(snapshot);
  snapshot.finish(configuration, manifest_facts(s, std::move(extra_facts)));
  std::vector<std::pair<std::string, at::Tensor>> copies;
  for (const auto& item : s.model->named_parameters(true)) {
    if (at::Tensor copy = snapshot.copy_of(item.value()); copy.defined())
      copies.emplace_back(item.key(), std::move(copy));
    else if (!loop::detail::all_finite(item.value()))
      throw NonFiniteError(detail::nonfinite_message(item.key(), s.loop.global_step, path));
  }
  snapshot.check_before_write([copies = std::move(copies), step = s.loop.global_step, path] {
    for (const auto& [name, copy] : copies)
      if (!loop::detail::all_finite(copy)) throw NonFiniteError(detail::nonfinite_message(name, step, path));
  });
}

/// A hex digest of every byte a checkpoint of `s` would hold; equal digests, equal states.
/// (`leave_out`: sections left out, such as a data-parallel rank's own random streams.)
template <class Format, class State>
std::string state_digest(State& s, std::vector<std::string> leave_out = {}) {
  ckpt::DigestWriter writer(std::move(leave_out));
  SectionList::of<Format>(s.sections()).write(writer);
  return writer.hex();
}

/// What a load learned beyond the sections.
struct Loaded {
  std::optional<std::int64_t> train_size;  ///< of the run that wrote it, checked when fit starts
  std::optional<LineageEntry> fork;        ///< a fork (allowed configuration changes), for apply_fork
};

namespace detail {
/// The part of load_checkpoint that needs no component type: stage every section, check the
/// lineage the run will have (`scheduler_problems`: whether the scheduler can follow it), then
/// commit all or throw. `sections` starts with the loop and the lineage (checkpoint_sections).
inline Loaded load_sections(SectionList& sections, const ckpt::Container& container, const std::string& path,
                            const std::string& format_name, const Fingerprint& live, ForkPlan fork,
                            const TrainerOptions& options,
                            const std::function<std::vector<std::string>(const Lineage&)>& scheduler_problems) {
  LoadPlan plan;
  if (container.manifest.format != format_name)
    plan.problem("was written in format " + container.manifest.format + " but this Trainer uses " + format_name);
  plan.problems_from(std::move(fork.refused));
  sections.stage(container, plan);

  // The lineage the run will have (the file's, plus this fork) must be one the scheduler can
  // follow: checked here, before anything is applied.
  Loaded loaded;
  const LoopState* staged_loop = sections.staged<LoopState>(0);
  const Lineage* staged_lineage = sections.staged<Lineage>(1);
  if (staged_loop && staged_lineage) {
    Lineage future = *staged_lineage;
    if (!fork.changes.empty()) {
      loaded.fork = fork_entry(std::move(fork.changes), path, staged_loop->global_step, staged_loop->epoch,
                               container.manifest.fingerprint, live, options.schedule_extension());
      future.entries.push_back(*loaded.fork);
    }
    plan.problems_from(scheduler_problems(future));
  }
  const std::string train_size = container.manifest.fact("train_size");
  std::int64_t size = 0;
  if (!train_size.empty() && !parse_count(train_size, size))
    plan.problem("its manifest holds an invalid training set size '" + train_size + "'");
  if (size > 0) loaded.train_size = size;

  if (!plan.problems.empty()) throw CheckpointError(path, plan.problems, fork.hint);
  for (auto& line : machine_differences(container.manifest.facts))
    plan.warnings.push_back(std::move(line));
  for (const auto& line : plan.warnings) warn(path + ": " + line);
  // The model's and optimizer's large tensors are read now, into place (deferred_tensor.hpp):
  // the file must still be the one that was checked, before and after.
  if (!container.source->unchanged())
    throw CheckpointError(path, {"changed on disk while it was being loaded (its size or modification time is not "
                                 "that of the file checked): another program is writing it; load it again"});
  try {
    sections.commit(container);
  } catch (const std::exception& e) {
    throw IncompleteLoadError(path, e.what());
  }
  if (!container.source->unchanged()) throw IncompleteLoadError(path, "it changed on disk while its tensors were read");
  return loaded;
}
}  // namespace detail

/// Restores `s` from a verified container, or nothing: every section is parsed into a staging
/// object and checked against the live state first; on any problem, one CheckpointError lists
/// them all and `s` is unchanged. Random streams are restored last (the list ends with them).
/// Configuration differences are refused unless allowed (plan_fork); an allowed fork comes back
/// in Loaded::fork, for the caller to apply (apply_fork) once the state is loaded.
template <class Format, class State>
Loaded load_checkpoint(State& s, const ckpt::Container& container, const std::string& path) {
  const Fingerprint live = s.fingerprint(Format::keel_name);
  auto fork = plan_fork<typename State::Optimizer, typename State::Scheduler>(live, container.manifest, s.options);
  auto sections = SectionList::of<Format>(s.sections());
  static_assert(std::is_same_v<std::tuple_element_t<0, decltype(s.sections())>, LoopSection> &&
                std::is_same_v<std::tuple_element_t<1, decltype(s.sections())>, LineageSection>);
  return detail::load_sections(sections, container, path, Format::keel_name, live, std::move(fork), s.options,
                               [&](const Lineage& future) { return schedule_problems(s.scheduler, future); });
}

}  // namespace keel::state
