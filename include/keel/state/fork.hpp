#pragma once
// Forks: a resume whose configuration differs from the checkpoint's. Refused unless the run
// allows the changed entries (TrainerOptions::allow_changes); some changes are refused even
// then, with the reason (plan_fork). An allowed fork loads the whole state, then applies the
// new configuration and records the fork in the run's lineage (apply_fork).

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/parse_section.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/fingerprint.hpp>
#include <keel/lineage.hpp>
#include <keel/log.hpp>
#include <keel/sched/scheduler_base.hpp>
#include <keel/trainer_options.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::state {

namespace detail {
template <class O, class = void>
struct can_reconfigure : std::false_type {};
template <class O>
struct can_reconfigure<O, std::void_t<decltype(std::declval<O&>().reconfigure())>> : std::true_type {};

template <class O, class = void>
struct has_configured_lrs : std::false_type {};
template <class O>
struct has_configured_lrs<O, std::void_t<decltype(std::declval<const O&>().configured_lrs().size())>> : std::true_type {};

template <class S, class = void>
struct can_rebase : std::false_type {};
template <class S>
struct can_rebase<S, std::void_t<decltype(std::declval<S&>().set_base_lrs(std::vector<double>{}))>> : std::true_type {};

template <class S, class = void>
struct follows_lineage : std::false_type {};
template <class S>
struct follows_lineage<S, std::void_t<decltype(std::declval<S&>().follow(std::declval<const Lineage&>()))>>
    : std::true_type {};

inline bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }
inline bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// A count as a checkpoint's facts and fingerprint hold it (decimal digits, at most 18 of them,
/// so that it fits an int64): true and `out` set, or false and `out` untouched.
inline bool parse_count(const std::string& text, std::int64_t& out) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) return false;
  out = std::stoll(text);
  return true;
}

/// A positive count as a fingerprint holds it, or 0; Fingerprint::absent counts as `absent`.
inline std::int64_t positive_count(const std::string& text, std::int64_t absent = 0) {
  if (text == Fingerprint::absent) return absent;
  std::int64_t count = 0;
  return parse_count(text, count) ? count : 0;
}
}  // namespace detail

/// Whether `key` matches an allow_changes entry: the key itself, a prefix ending in '*', or "*".
inline bool change_allowed(const std::vector<std::string>& patterns, const std::string& key) {
  for (const auto& p : patterns) {
    if (p == "*" || p == key) return true;
    if (!p.empty() && p.back() == '*' && detail::starts_with(key, p.substr(0, p.size() - 1))) return true;
  }
  return false;
}

/// The configuration entries of `fingerprint` under `prefix`.
inline std::vector<Fingerprint::Entry> entries_under(const Fingerprint& fingerprint, const std::string& prefix) {
  std::vector<Fingerprint::Entry> out;
  for (const auto& entry : fingerprint.entries())
    if (detail::starts_with(entry.first, prefix)) out.push_back(entry);
  return out;
}

/// How a resume treats the differences between its configuration and the checkpoint's.
struct ForkPlan {
  std::vector<ConfigChange> changes;  ///< allowed: the fork applies them
  std::vector<std::string> refused;   ///< problems, each with its reason
  std::string hint;                   ///< how to proceed, when a change was only not allowed
};

/// Sorts the differences into allowed changes and refusals. `Optimizer` and `Scheduler` are the
/// live policies (whether they can take a new configuration).
template <class Optimizer, class Scheduler>
ForkPlan plan_fork(const Fingerprint& live, const ckpt::Manifest& saved, const TrainerOptions& options) {
  ForkPlan plan;
  const std::string batch = saved.fact("batch_in_epoch");
  const std::string offset = saved.fact("epoch_offset");
  // (a file without the fact counts as mid-epoch)
  const bool mid_epoch = batch != "0" || (!offset.empty() && offset != "0");
  const std::string position = "batch " + batch + (offset.empty() ? "" : " after sample " + offset) + " of its epoch";
  std::vector<std::string> not_allowed;
  // The policies' names as the fingerprint has them: a policy chosen at run time (OneOf) is
  // named after its choice.
  auto live_name = [&](const char* key, const std::string& fallback) {
    const auto* entry = live.find(key);
    return entry ? entry->second : fallback;
  };
  const std::string optimizer_name = live_name("optimizer.type", keel::detail::component_name<Optimizer>());
  const std::string scheduler_name = live_name("scheduler.type", keel::detail::component_name<Scheduler>());
  for (auto& change : live.changes_from(saved.fingerprint)) {
    const std::string& key = change.key;
    const std::string line = Fingerprint::describe(change);
    if ((key == "strategy.world_size" && detail::positive_count(change.before, 1) == 0) ||
        (key == "data.batch_size" && detail::positive_count(change.before) == 0)) {
      plan.refused.push_back(line + ": the checkpoint's value is not a positive count");
    } else if (key == "strategy.world_size" ||
               (key == "strategy" && (change.before == Fingerprint::absent || change.after == Fingerprint::absent))) {
      // Another number of processes is a matter of how the job was started, not of the run's
      // configuration: always allowed (a process alone records no strategy). The epoch goes on
      // at sample granularity (continue_epoch).
      plan.changes.push_back(std::move(change));
    } else if (detail::starts_with(key, "strategy")) {
      plan.refused.push_back(line + ": another strategy cannot continue this run; start a new run with init_from");
    } else if (!change_allowed(options.allow_changes(), key)) {
      plan.refused.push_back(line);
      not_allowed.push_back(key);
    } else if (key == "format" || key == "model.state") {
      plan.refused.push_back(line + ": a resume keeps the checkpoint's " +
                             (key == "format" ? "format" : "kind of model state") + ", even when changes are allowed");
    } else if (key == "model.type") {
      plan.refused.push_back(line + ": another model cannot continue this run; to start a new run from the "
                                    "tensors that match, use init_from with init_strict(false)");
    } else if (key == "optimizer.type") {
      plan.refused.push_back(line + ": another optimizer cannot take over this optimizer's state; to keep the "
                                    "weights only, start a new run with init_from (InitFrom::weights)");
    } else if (key == "optimizer.amsgrad" || key == "optimizer.centered") {
      plan.refused.push_back(line + (key == "optimizer.amsgrad" ? ": AMSGrad changes which state Adam keeps"
                                                                 : ": centering changes which state RMSprop keeps") +
                             " per parameter; start a new run from the weights with init_from (InitFrom::weights)");
    } else if (key == "optimizer.momentum" && change.before == "0" && optimizer_name == "keel::optim::RMSprop") {
      plan.refused.push_back(line + ": the checkpoint's RMSprop kept no momentum buffers to continue from; "
                                    "start a new run from the weights with init_from (InitFrom::weights)");
    } else if (detail::starts_with(key, "scheduler.") && detail::ends_with(key, ".interval")) {
      plan.refused.push_back(line + ": the scheduler's saved step count is in " + change.before +
                             "s; counting it in " + change.after + "s would move the schedule; start a new run "
                             "with init_from");
    } else if (key == "callbacks" || key == "scheduler.type") {
      plan.refused.push_back(line + ": the state of the old " + (key == "callbacks" ? "callbacks" : "scheduler") +
                             " cannot carry over to another type; start a new run with init_from");
    } else if (detail::starts_with(key, "data.") && key != "data.batch_size" && mid_epoch) {
      // (Another batch size goes on at sample granularity, like another number of processes.)
      plan.refused.push_back(line + ": the data order may change only at an epoch boundary, and the checkpoint "
                                    "is at " + position + "; fork from an epoch's last checkpoint");
    } else if (detail::starts_with(key, "optimizer.") && !detail::can_reconfigure<Optimizer>::value) {
      plan.refused.push_back(line + ": " + optimizer_name + " cannot take a new configuration (it has no reconfigure())");
    } else if (key == "optimizer.lr" && !detail::can_rebase<Scheduler>::value) {
      plan.refused.push_back(line + ": " + scheduler_name + " cannot scale another learning rate (it has no set_base_lrs())");
    } else if (detail::starts_with(key, "scheduler.") &&
               options.schedule_extension().kind != ScheduleExtension::Kind::rescale &&
               !sched::can_append<Scheduler>::value && !detail::follows_lineage<Scheduler>::value) {
      // (a scheduler that follows the lineage says it itself, in the check before loading)
      plan.refused.push_back(line + ": " + scheduler_name + " cannot append a phase (" + options.schedule_extension().name() +
                             "); fork with ScheduleExtension::rescale()");
    } else {
      plan.changes.push_back(std::move(change));
    }
  }
  if (!not_allowed.empty()) {
    std::string keys;
    for (const auto& k : not_allowed) keys += (keys.empty() ? "\"" : ", \"") + k + "\"";
    plan.hint =
        "A resume continues the same run, so its configuration must match. To continue from this checkpoint with "
        "the new configuration (a fork, recorded in the run's lineage), allow the changes: "
        "TrainerOptions().allow_changes({" + keys + "}) (the Fashion-MNIST example: --resume-changed auto). To "
        "start a new run instead: resume(\"never\") (--resume never) or another checkpoint_dir.";
  }
  return plan;
}

/// The lineage entry of a fork from `saved` (a checkpoint's configuration) at a position.
inline LineageEntry fork_entry(std::vector<ConfigChange> changes, const std::string& source, std::int64_t step,
                               std::int64_t epoch, const Fingerprint& saved, const Fingerprint& live,
                               const ScheduleExtension& extension) {
  LineageEntry fork;
  fork.kind = LineageEntry::Kind::fork;
  fork.source = source;
  fork.step = step;
  fork.epoch = epoch;
  fork.changes = std::move(changes);
  fork.extension = extension;
  fork.scheduler_before = entries_under(saved, "scheduler.");
  fork.scheduler_after = entries_under(live, "scheduler.");
  return fork;
}

/// Why `scheduler` cannot follow `lineage` (an appended phase it cannot compute), checked before
/// anything of a checkpoint is applied.
template <class Scheduler>
std::vector<std::string> schedule_problems(const Scheduler& scheduler, const Lineage& lineage) {
  if constexpr (detail::follows_lineage<Scheduler>::value) {
    try {
      scheduler.check_lineage(lineage);
    } catch (const ConfigError& e) {
      return {e.what()};
    }
  }
  return {};
}

/// Samples per step across all processes before and after a fork: the checkpoint's batch size
/// and number of processes (a change's `before`; absent: one process), and this run's.
struct BatchGeometry {
  std::int64_t batch_size = 0, world_size = 1;
  /// Samples per step, the whole job's (a damaged file's absurd counts saturate, not overflow).
  std::int64_t samples() const {
    std::int64_t product = 0;
    return __builtin_mul_overflow(batch_size, world_size, &product) ? std::numeric_limits<std::int64_t>::max() : product;
  }
  bool operator!=(const BatchGeometry& o) const { return batch_size != o.batch_size || world_size != o.world_size; }
  std::string describe() const {
    return std::to_string(world_size) + (world_size == 1 ? " process" : " processes") + " of batch " +
           std::to_string(batch_size);
  }
};

/// The checkpoint's geometry (from the changes, checked by plan_fork) and this run's.
inline std::pair<BatchGeometry, BatchGeometry> batch_geometry(const std::vector<ConfigChange>& changes,
                                                              std::int64_t batch_size, std::int64_t world_size) {
  BatchGeometry before{batch_size, world_size};
  for (const auto& c : changes) {
    if (c.key == "data.batch_size") before.batch_size = detail::positive_count(c.before);
    if (c.key == "strategy.world_size") before.world_size = detail::positive_count(c.before, 1);
  }
  return {before, BatchGeometry{batch_size, world_size}};
}

/// A checkpoint resumed with another batch size or number of processes. Inside an epoch, the
/// positions of the epoch's order taken so far are [0, epoch_offset + batch_in_epoch x
/// batch_size x world_size), whatever those were (keel/data/sampler.hpp), so the epoch goes on
/// from there, its batches counted anew: every sample of the epoch is trained once (but the
/// padding that evens out the ranks where they do not divide the rest, as in any epoch).
template <class State>
void continue_epoch(State& s, const BatchGeometry& before, const BatchGeometry& after) {
  std::string message = "the checkpoint was trained by " + before.describe() + ", and " + after.describe() +
                        " train now: ";
  if (s.loop.batch_in_epoch != 0) {
    // (A checkpoint of an epoch's last step, before the epoch ended, lands at or past its end:
    // run_epoch then ends the epoch. Saturated, for a damaged position.)
    std::int64_t trained = 0;
    if (__builtin_mul_overflow(s.loop.batch_in_epoch, before.samples(), &trained) ||
        __builtin_add_overflow(s.loop.epoch_offset, trained, &s.loop.epoch_offset))
      s.loop.epoch_offset = std::numeric_limits<std::int64_t>::max();
    s.loop.batch_in_epoch = 0;
  }
  if (s.train_size > 0 && s.loop.epoch_offset >= s.train_size)
    message += "epoch " + std::to_string(s.loop.epoch) + " was trained to its end, which comes now; ";
  else if (s.loop.epoch_offset != 0)
    message += "epoch " + std::to_string(s.loop.epoch) + " goes on from sample " + std::to_string(s.loop.epoch_offset) +
               " of its order, each of the rest once; ";
  message += before.samples() == after.samples()
                 ? "a step averages as many samples (" + std::to_string(after.samples()) + ") but sums them in another "
                   "order"
                 : "a step averages " + std::to_string(after.samples()) + " samples instead of " +
                       std::to_string(before.samples());
  notice(message + ", so the run is no longer bitwise the one that kept its processes and batches");
}

/// After a fork's checkpoint was loaded: applies the new configuration where loading put the
/// old one back (optimizer hyper-parameters, the schedule's base learning rates, the data seed,
/// the position in an epoch trained with other batches) and records the fork in the lineage. A
/// stop request of the old run (early stopping) is dropped, unless only the number of processes
/// changed: the fork is asked to train on.
template <class State>
void apply_fork(State& s, LineageEntry fork) {
  bool optimizer_changed = false, seed_changed = false, only_processes = true;
  [[maybe_unused]] bool lr_changed = false;
  for (const auto& c : fork.changes) {
    optimizer_changed |= detail::starts_with(c.key, "optimizer.");
    lr_changed |= c.key == "optimizer.lr" ||
                  (detail::starts_with(c.key, "optimizer.group.") && detail::ends_with(c.key, ".lr"));
    seed_changed |= c.key == "data.seed";
    only_processes &= detail::starts_with(c.key, "strategy");
  }
  const auto [before, after] = batch_geometry(fork.changes, s.options.batch_size(), s.view.world_size);
  if (before != after) continue_epoch(s, before, after);
  // (plan_fork refused these changes for components that cannot take them)
  if constexpr (detail::can_reconfigure<typename State::Optimizer>::value) {
    if (optimizer_changed) s.optimizer.reconfigure();
    if constexpr (detail::can_rebase<typename State::Scheduler>::value) {
      if (lr_changed) {
        // Each group's configured rate (a ParamGroup's own, or the optimizer's) is its new base.
        if constexpr (detail::has_configured_lrs<typename State::Optimizer>::value) {
          s.scheduler.set_base_lrs(s.optimizer.configured_lrs());
        } else {
          s.scheduler.set_base_lrs(std::vector<double>(s.optimizer.group_count(), s.optimizer.configured_lr()));
        }
      }
    }
  }
  if (seed_changed) s.loop.data_seed = s.options.seed();
  if (!only_processes) s.loop.stop_requested = false;

  std::string message;
  for (const auto& line : fork.describe()) message += (message.empty() ? "" : "\n") + line;
  notice(message);
  s.lineage.entries.push_back(std::move(fork));
}

/// A checkpoint's lineage, read on its own (empty when the file has none or it does not parse).
template <class Format>
Lineage read_lineage(const ckpt::Container& container) {
  Lineage lineage;
  if (const ckpt::SectionInfo* info = container.manifest.find("lineage")) {
    try {
      ckpt::parse_section<Format>(container, *info, lineage);
    } catch (const std::exception&) {
      lineage = {};
    }
  }
  return lineage;
}

/// Derives the schedule from the lineage (after every load and fork).
template <class State>
void follow_lineage(State& s) {
  if constexpr (detail::follows_lineage<typename State::Scheduler>::value) s.scheduler.follow(s.lineage);
}

}  // namespace keel::state
