#pragma once
// keel::sched::OneOf<Schedulers...>: a scheduler chosen at run time among scheduler policies, for
// programs that take the schedule from a flag or a configuration file without instantiating a
// Trainer per choice:
//
//   using Scheduler = keel::sched::OneOf<keel::sched::CosineWarmup, keel::sched::StepLR>;
//   ... Scheduler::Options(keel::sched::StepLROptions(1000, 0.5)) ...
//
// Its Options is a std::variant of the schedulers' options (which must differ in type); the one
// it holds chooses the scheduler. The chosen scheduler does everything: its fingerprint, its
// checkpoint section (a checkpoint of OneOf running StepLR is a checkpoint of keel::sched::StepLR,
// and either resumes the other), its interval, validation-driven steps (ReduceLROnPlateau), the
// schedule extensions of a fork.

#include <keel/context.hpp>
#include <keel/detail/type_count.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/lineage.hpp>
#include <keel/state/section.hpp>

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace keel::sched {

namespace detail {

#define KEEL_SCHED_DETECT(trait, expression)                                   \
  template <class T, class = void>                                             \
  struct trait : std::false_type {};                                           \
  template <class T>                                                           \
  struct trait<T, std::void_t<decltype(expression)>> : std::true_type {};
KEEL_SCHED_DETECT(has_epoch_step, std::declval<T&>().on_epoch_end())
KEEL_SCHED_DETECT(has_validation_step, std::declval<T&>().on_validation_end(std::declval<const Metrics&>()))
KEEL_SCHED_DETECT(has_rebase, std::declval<T&>().set_base_lrs(std::vector<double>{}))
KEEL_SCHED_DETECT(has_follow, std::declval<T&>().follow(std::declval<const Lineage&>()))
#undef KEEL_SCHED_DETECT
}  // namespace detail

template <class... Schedulers>
class OneOf {
  static_assert(sizeof...(Schedulers) > 0, "keel::sched::OneOf needs at least one scheduler policy");
  static_assert(((keel::detail::type_count<typename Schedulers::Options, typename Schedulers::Options...> == 1) && ...),
                "keel::sched::OneOf: two schedulers take the same Options type, so the options cannot say which "
                "scheduler they choose");

 public:
  static constexpr const char* keel_name = "keel::sched::OneOf";
  /// The schedulers, for keel's compile-time checks (each is checked as if it stood alone).
  using alternatives = std::tuple<Schedulers...>;
  using Options = std::variant<typename Schedulers::Options...>;

  OneOf(torch::optim::Optimizer& optimizer, Options options) : chosen_(make(optimizer, std::move(options))) {}

  /// The chosen scheduler's keel name ("keel::sched::StepLR"): its checkpoint section's type.
  std::string keel_component_name() const {
    return std::visit([](const auto& s) { return keel::detail::component_name<std::decay_t<decltype(s)>>(); }, chosen_);
  }
  /// The chosen scheduler's section layout.
  std::uint32_t keel_layout_version() const {
    return std::visit([](const auto& s) { return state::layout_version<std::decay_t<decltype(s)>>(); }, chosen_);
  }
  /// The chosen scheduler, if it is S (else null).
  template <class S>
  const S* get_if() const noexcept {
    return std::get_if<S>(&chosen_);
  }

  void step() {
    std::visit([](auto& s) { s.step(); }, chosen_);
  }
  void on_epoch_end() {
    std::visit(
        [](auto& s) {
          if constexpr (detail::has_epoch_step<std::decay_t<decltype(s)>>::value) s.on_epoch_end();
        },
        chosen_);
  }
  void on_validation_end(const Metrics& metrics) {
    std::visit(
        [&](auto& s) {
          if constexpr (detail::has_validation_step<std::decay_t<decltype(s)>>::value) s.on_validation_end(metrics);
        },
        chosen_);
  }
  /// Whether the chosen scheduler steps on validation metrics (fit then needs validation).
  bool needs_validation() const {
    return std::visit([](const auto& s) { return detail::has_validation_step<std::decay_t<decltype(s)>>::value; },
                      chosen_);
  }

  const std::vector<double>& base_lrs() const {
    return std::visit([](const auto& s) -> const std::vector<double>& { return s.base_lrs(); }, chosen_);
  }
  /// Only when every scheduler has it: a fork's plan asks at compile time, before loading.
  template <bool every = (detail::has_rebase<Schedulers>::value && ...), std::enable_if_t<every, int> = 0>
  void set_base_lrs(std::vector<double> base_lrs) {
    std::visit([&](auto& s) { s.set_base_lrs(std::move(base_lrs)); }, chosen_);
  }
  void follow(const Lineage& lineage) {
    check_appends(lineage);
    std::visit(
        [&](auto& s) {
          if constexpr (detail::has_follow<std::decay_t<decltype(s)>>::value) s.follow(lineage);
        },
        chosen_);
  }
  void check_lineage(const Lineage& lineage) const {
    check_appends(lineage);
    std::visit(
        [&](const auto& s) {
          if constexpr (detail::has_follow<std::decay_t<decltype(s)>>::value) s.check_lineage(lineage);
        },
        chosen_);
  }

  /// The chosen scheduler's configuration: the same entries as that scheduler on its own.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    std::visit([&](const auto& s) { s.describe(fingerprint, prefix); }, chosen_);
  }
  /// The chosen scheduler's state, in its own layout.
  template <class Archive>
  void serialize(Archive& archive) {
    std::visit([&](auto& s) { s.serialize(archive); }, chosen_);
  }

 private:
  using Chosen = std::variant<Schedulers...>;

  template <std::size_t I = 0>
  static Chosen make(torch::optim::Optimizer& optimizer, Options&& options) {
    if constexpr (I + 1 < sizeof...(Schedulers)) {
      if (options.index() != I) return make<I + 1>(optimizer, std::move(options));
    }
    return Chosen(std::in_place_index<I>, optimizer, std::get<I>(std::move(options)));
  }

  /// A scheduler that does not follow the lineage cannot append a phase at a fork (keel refuses
  /// such a fork for that scheduler on its own before loading; here the choice is known only now).
  void check_appends(const Lineage& lineage) const {
    std::visit(
        [&](const auto& s) {
          using S = std::decay_t<decltype(s)>;
          if constexpr (!detail::has_follow<S>::value) {
            for (const auto& entry : lineage.entries)
              if (entry.kind == LineageEntry::Kind::fork && entry.scheduler_before != entry.scheduler_after &&
                  entry.extension.kind != ScheduleExtension::Kind::rescale)
                throw ConfigError(keel::detail::component_name<S>() + " cannot append a phase (" +
                                  entry.extension.name() + "); fork with ScheduleExtension::rescale()");
          }
        },
        chosen_);
  }

  Chosen chosen_;
};

}  // namespace keel::sched
