#pragma once
// The common half of keel's learning-rate schedulers. LibTorch's LRScheduler cannot save its
// step count, so keel's schedulers are its own: the learning rate after `step` optimizer steps
// is a closed-form function of (base_lr, step), never an accumulated product, so a resumed
// run computes the very same doubles as an uninterrupted one.
//
// A fork that appends a phase to the schedule (keel::ScheduleExtension, recorded in the run's
// lineage) puts segments before that function: the old configuration until its end, then the
// new phase. follow(lineage) rebuilds them from the loaded lineage, so they are never saved
// twice and a resumed extension computes the same doubles too.

#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/lineage.hpp>

#include <cereal/types/vector.hpp>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <type_traits>
#include <string>
#include <vector>

namespace keel::sched {

/// What every keel scheduler saves: the optimizer steps taken and the base learning rates of
/// the param groups. keel-ckpt reads scheduler sections through this type.
struct SchedulerState {
  std::int64_t step = 0;
  std::vector<double> base_lrs;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("step", step), cereal::make_nvp("base_lrs", base_lrs));
  }
};

/// Whether a scheduler section of `type` holds a SchedulerState (what keel-ckpt reads): every
/// keel scheduler derived from SchedulerBase; ReduceLROnPlateau keeps a history of its own.
inline bool saves_scheduler_state(const std::string& type) {
  return type.rfind("keel::sched::", 0) == 0 && type != "keel::sched::ReduceLROnPlateau";
}

/// Whether scheduler S can append a phase at a fork: it reads its options back from its
/// fingerprint entries and computes its factor and its end from options alone:
///   static Options options_from(const keel::SavedConfig&);
///   static double factor_of(const Options&, std::int64_t step);
///   static std::int64_t end_of(const Options&);   // the step where the schedule ends, or -1
template <class S, class = void>
struct can_append : std::false_type {};
template <class S>
struct can_append<S, std::void_t<decltype(S::factor_of(S::options_from(std::declval<const SavedConfig&>()), std::int64_t{})),
                                 decltype(S::end_of(std::declval<const typename S::Options&>()))>>
    : std::true_type {};

/// When a scheduler advances: after every optimizer step (keel's default; Lightning's
/// interval="step") or once at the end of every epoch, after validation (PyTorch's habit of
/// calling scheduler.step() once per epoch; Lightning's interval="epoch").
enum class Interval { step, epoch };
inline const char* interval_name(Interval interval) { return interval == Interval::step ? "step" : "epoch"; }

namespace detail {
template <class S, class = void>
struct computes_learning_rate : std::false_type {};
template <class S>
struct computes_learning_rate<
    S, std::void_t<decltype(double(std::declval<const S&>().learning_rate(std::int64_t{}, double{})))>>
    : std::true_type {};
}  // namespace detail

/// Holds a reference to the optimizer, the base learning rates of its groups and the number
/// of steps taken (in the scheduler's Interval). Derived supplies either
///   double factor(std::int64_t step) const                  lr = base_lr * factor(step)
///   double learning_rate(std::int64_t step, double base_lr) const   lr itself (an absolute
///                                                           floor such as eta_min, PyTorch's formula)
template <class Derived>
class SchedulerBase {
 public:
  /// Layout version of the saved state (the checkpoint section's version).
  static constexpr std::uint32_t keel_version = 1;

  explicit SchedulerBase(torch::optim::Optimizer& optimizer, Interval interval = Interval::step)
      : optimizer_(optimizer), interval_(interval) {
    for (const auto& group : optimizer.param_groups()) state_.base_lrs.push_back(group.options().get_lr());
  }

  /// The loop calls it after every optimizer step; advances a scheduler of Interval::step.
  void step() {
    if (interval_ == Interval::step) advance();
  }
  /// The loop calls it at the end of every epoch (after validation); advances a scheduler of
  /// Interval::epoch.
  void on_epoch_end() {
    if (interval_ == Interval::epoch) advance();
  }
  Interval interval() const noexcept { return interval_; }

  /// Steps taken, in the scheduler's interval (optimizer steps or epochs).
  std::int64_t steps() const noexcept { return state_.step; }
  const std::vector<double>& base_lrs() const noexcept { return state_.base_lrs; }
  /// Learning rate of `group` after `step` steps.
  double lr_at(std::int64_t step, std::size_t group = 0) const { return lr_for(step, state_.base_lrs.at(group)); }
  /// Learning rate after `step` steps of a group whose base learning rate is `base_lr`.
  double lr_for(std::int64_t step, double base_lr) const {
    for (const auto& segment : segments_)
      if (step < segment.until) return base_lr * segment.factor(step);
    if constexpr (detail::computes_learning_rate<Derived>::value) {
      return static_cast<const Derived&>(*this).learning_rate(step, base_lr);
    } else {
      return base_lr * static_cast<const Derived&>(*this).factor(step);
    }
  }

  /// The factor after `step` steps: a segment appended by a fork, or Derived's configuration.
  double factor_at(std::int64_t step) const {
    for (const auto& segment : segments_)
      if (step < segment.until) return segment.factor(step);
    return static_cast<const Derived&>(*this).factor(step);
  }

  /// A fork changed the optimizer's learning rate: the schedule scales the new one.
  void set_base_lrs(std::vector<double> base_lrs) {
    state_.base_lrs = std::move(base_lrs);
    apply();
  }

  /// Rebuilds the segments that the lineage's forks appended (see ScheduleExtension), then
  /// writes the learning rate for the current step. A fork that left the scheduler's
  /// configuration as it was leaves the schedule too; a rescale forgets the segments before it.
  /// Throws ConfigError (and changes nothing) when the lineage asks for what this scheduler
  /// cannot do; check_lineage() asks the same without applying anything.
  void follow(const Lineage& lineage) {
    segments_ = segments_for(lineage);
    apply();
  }
  void check_lineage(const Lineage& lineage) const { (void)segments_for(lineage); }

  template <class Archive>
  void serialize(Archive& archive) {
    state_.serialize(archive);  // the same bytes as a SchedulerState
  }

 protected:
  void advance() {
    ++state_.step;
    apply();
  }
  /// Adds "interval" to a scheduler's fingerprint (schedulers with an Interval option).
  void describe_interval(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "interval", interval_name(interval_));
  }

  /// Writes the learning rate for the current step into every param group.
  void apply() {
    auto& groups = optimizer_.get().param_groups();
    for (std::size_t g = 0; g < groups.size() && g < state_.base_lrs.size(); ++g)
      groups[g].options().set_lr(lr_at(state_.step, g));
  }

 private:
  struct Segment {
    std::int64_t until;                           // applies to steps before this one
    std::function<double(std::int64_t)> factor;
  };

  std::vector<Segment> segments_for(const Lineage& lineage) const {
    std::vector<Segment> segments;
    for (const auto& entry : lineage.entries) {
      if (entry.kind != LineageEntry::Kind::fork || entry.scheduler_before == entry.scheduler_after) continue;
      if (entry.extension.kind == ScheduleExtension::Kind::rescale) {
        segments.clear();
        continue;
      }
      if constexpr (can_append<Derived>::value) {
        segments = append_phase(std::move(segments), entry);
      } else {
        throw ConfigError(std::string("keel: the run's lineage appends a phase to its schedule, which ") +
                          Derived::keel_name +
                          " cannot do (it needs static options_from, factor_of and end_of); fork with "
                          "ScheduleExtension::rescale()");
      }
    }
    return segments;
  }

  /// One fork with ScheduleExtension append_constant or append_cosine: the schedule so far
  /// (`earlier`, then the configuration the checkpoint had) until that configuration's end,
  /// then the new phase until the new configuration's end.
  static std::vector<Segment> append_phase(std::vector<Segment> earlier, const LineageEntry& fork) {
    using Options = typename Derived::Options;
    const Options before = Derived::options_from(SavedConfig(fork.scheduler_before, "scheduler."));
    const Options after = Derived::options_from(SavedConfig(fork.scheduler_after, "scheduler."));
    std::function<double(std::int64_t)> old = [earlier = std::move(earlier), before](std::int64_t s) {
      for (const auto& segment : earlier)
        if (s < segment.until) return segment.factor(s);
      return Derived::factor_of(before, s);
    };
    const std::int64_t old_end = Derived::end_of(before);
    const std::int64_t begin = std::max(old_end < 0 ? fork.step : old_end, fork.step);
    const std::int64_t new_end = Derived::end_of(after);
    const double level = fork.extension.level;
    Segment phase{std::numeric_limits<std::int64_t>::max(), nullptr};
    if (fork.extension.kind == ScheduleExtension::Kind::append_constant) {
      const double value = level >= 0.0 ? level : (begin > 0 ? old(begin - 1) : 1.0);
      phase.factor = [value](std::int64_t) { return value; };
    } else {
      if (new_end < 0)
        throw ConfigError(std::string("keel: schedule extension append_cosine needs a schedule with an end, and ") +
                          Derived::keel_name + " has none; fork with append_constant or rescale");
      const double peak = level >= 0.0 ? level : 1.0;
      const double floor = Derived::factor_of(after, new_end);
      const double span = static_cast<double>(std::max<std::int64_t>(new_end - begin, 1));
      phase.until = new_end;
      phase.factor = [=](std::int64_t s) {
        return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(s - begin) / span));
      };
    }
    std::vector<Segment> out{Segment{begin, std::move(old)}};
    if (phase.until > begin) out.push_back(std::move(phase));
    return out;
  }

  std::reference_wrapper<torch::optim::Optimizer> optimizer_;
  Interval interval_;  // configuration (each Derived's describe() records it)
  SchedulerState state_;
  std::vector<Segment> segments_;  // configuration derived from the lineage; never saved
};

}  // namespace keel::sched
