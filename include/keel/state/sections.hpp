#pragma once
// What a checkpoint holds: the one list of sections (checkpoint_sections, at the end of this
// file), and one entry type per kind of section. The checkpoint writer, the all-or-nothing
// loader, Trainer::state_digest() and keel-ckpt all iterate this list; adding a piece of state
// is one entry here (docs/adding-state.md walks through one).
//
// Each entry binds to the live object it saves: the Trainer's components, or, in keel-ckpt,
// plain saved-state objects (keel/state/saved_state.hpp), which is how keel-ckpt reads files
// without the program that wrote them.

#include <keel/detail/type_name.hpp>
#include <keel/lineage.hpp>
#include <keel/loop_state.hpp>
#include <keel/model_state.hpp>
#include <keel/optim/torch_optimizer.hpp>
#include <keel/rng.hpp>
#include <keel/sched/scheduler_base.hpp>
#include <keel/state/declared_members.hpp>
#include <keel/state/section.hpp>
#include <keel/model_check.hpp>
#include <keel/reflect.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::state {

/// "loop": the loop's position (epoch, step, batch, micro-batch, data seed, stop request).
struct LoopSection {
  LoopState& live;

  std::string name() const { return "loop"; }
  std::string legacy_name() const { return {}; }
  std::string type() const { return "keel::LoopState"; }
  bool accepts(const std::string& t) const { return t == type(); }
  std::uint32_t version() const { return layout_version<LoopState>(); }
  std::uint32_t oldest_version() const { return 1; }
  const LoopState& capture() const { return live; }
  LoopState stage() const { return {}; }
  void check(const LoopState& loop, LoadPlan& plan) const {
    if (loop.micro_batch != 0)
      plan.problem("section 'loop' is inside a gradient-accumulation window (micro-batch " +
                   std::to_string(loop.micro_batch) +
                   "); keel writes checkpoints only at optimizer-step boundaries");
    if (loop.epoch < 0 || loop.global_step < 0 || loop.batch_in_epoch < 0 || loop.epoch_offset < 0)
      plan.problem("section 'loop' holds a negative position");
  }
  void commit(LoopState&& loop) { live = loop; }
};

/// "model": every parameter and buffer of the module, by name. `Live` is the module type, or
/// ModelState when reading a file offline.
template <class Live>
struct ModelSection {
  static constexpr bool offline = std::is_same_v<Live, ModelState>;
  /// Live: the weights are read straight into the module's at commit (ModelState::apply).
  static constexpr bool reads_deferred_tensors = !offline;
  Live& live;

  std::string name() const { return "model"; }
  std::string legacy_name() const { return {}; }
  std::string type() const {
    if constexpr (offline) {
      return "a torch::nn::Module";
    } else {
      return keel::detail::type_name<Live>();
    }
  }
  bool accepts(const std::string& t) const { return offline || t == type(); }
  std::uint32_t version() const { return 1; }
  std::uint32_t oldest_version() const { return 1; }
  ModelState capture() const {
    if constexpr (offline) {
      return live;
    } else {
      return ModelState::capture(live);  // references the module's tensors
    }
  }
  ModelState stage() const { return {}; }
  void check(const ModelState& saved, LoadPlan& plan) const {
    if constexpr (!offline) plan.problems_from(saved.check(live));
  }
  void commit(ModelState&& saved) {
    if constexpr (offline) {
      live = std::move(saved);
    } else {
      saved.apply(live);
    }
  }
};

/// "optimizer": per-parameter state by parameter name and each param group's hyper-parameters.
/// `Live` is the optimizer policy, or optim::OptimizerState offline.
template <class Live>
struct OptimizerSection {
  static constexpr bool offline = std::is_same_v<Live, optim::OptimizerState>;
  /// With a policy that reads a load's placeholders itself (TorchOptimizer's), the moments
  /// stay in the file until commit reads them into place (deferred_tensor.hpp); any other
  /// policy, and keel-ckpt, get them in full.
  static constexpr bool reads_deferred_tensors =
      !offline && (optim::applies_deferred_tensors<Live> || ckpt::reads_deferred_tensors<Live>);
  Live& live;

  std::string name() const { return "optimizer"; }
  std::string legacy_name() const { return {}; }
  std::string type() const {
    if constexpr (offline) {
      return "an optimizer policy";
    } else {
      return keel::detail::component_name_of(live);
    }
  }
  // Every optimizer policy saves an OptimizerState, so offline any of them reads.
  bool accepts(const std::string& t) const { return offline || t == type(); }
  std::uint32_t version() const { return optim::OptimizerState::current_layout; }  // 2: named param groups
  std::uint32_t oldest_version() const { return 1; }
  optim::OptimizerState capture() const {
    if constexpr (offline) {
      return live;
    } else {
      return live.state();
    }
  }
  optim::OptimizerState stage() const { return {}; }
  /// A file's layout: version 1 has no group names.
  optim::OptimizerState stage(std::uint32_t version) const {
    optim::OptimizerState state;
    state.layout = version;
    return state;
  }
  void check(const optim::OptimizerState& saved, LoadPlan& plan) const {
    if constexpr (!offline) plan.problems_from(live.check(saved));
  }
  void commit(optim::OptimizerState&& saved) {
    if constexpr (offline) {
      live = std::move(saved);
    } else {
      live.apply(saved);
    }
  }
};

/// "scheduler": the scheduler policy's own serialization (keel's: step and base learning
/// rates). `Live` is the scheduler, or sched::SchedulerState offline (keel's schedulers only).
template <class Live>
struct SchedulerSection {
  static constexpr bool offline = std::is_same_v<Live, sched::SchedulerState>;
  Live& live;
  std::size_t param_groups;  // of the optimizer it drives; each needs a base learning rate

  std::string name() const { return "scheduler"; }
  std::string legacy_name() const { return {}; }
  std::string type() const {
    if constexpr (offline) {
      return "a keel::sched scheduler";
    } else {
      return keel::detail::component_name_of(live);
    }
  }
  bool accepts(const std::string& t) const {
    if constexpr (offline) {
      return sched::saves_scheduler_state(t);  // others (a user's) have a layout of their own
    } else {
      return t == type();
    }
  }
  std::uint32_t version() const {
    if constexpr (offline) {
      return 1;
    } else {
      return layout_version_of(live);
    }
  }
  std::uint32_t oldest_version() const { return 0; }  // older layouts: the scheduler's serialize decides
  const Live& capture() const { return live; }
  Live stage() const { return live; }  // a copy: it keeps the reference to the optimizer
  void check(const Live& saved, LoadPlan& plan) const {
    if constexpr (!offline) {
      if (saved.base_lrs().size() != param_groups)
        plan.problem("section 'scheduler' holds " + std::to_string(saved.base_lrs().size()) +
                     " base learning rates for " + std::to_string(param_groups) + " param groups");
    }
  }
  void commit(Live&& saved) { live = std::move(saved); }
};

/// "callback.<type>": a stateful callback's own serialization. Two callbacks of one type are
/// told apart by "#<k>" (the second is "callback.<type>#1"). keel 0.1 and 0.2 named the
/// section by position, "callback.<index>"; those files keep loading. Also "optimizer.members"
/// for an optimizer policy of one's own with a serialize of its own.
/// The name, type and layout of a section that holds one component of type C.
template <class C>
struct ComponentSectionHeader {
  std::string section_name;
  std::string legacy;  // the name older keel versions gave the section, or empty

  std::string name() const { return section_name; }
  std::string legacy_name() const { return legacy; }
  std::string type() const { return keel::detail::component_name<C>(); }
  bool accepts(const std::string& t) const { return t == type(); }
  std::uint32_t version() const { return layout_version<C>(); }
  std::uint32_t oldest_version() const { return 0; }
};

template <class C>
struct ComponentSection : ComponentSectionHeader<C> {
  C& live;

  ComponentSection(C& component, std::string name, std::string legacy)
      : ComponentSectionHeader<C>{std::move(name), std::move(legacy)}, live(component) {}
  const C& capture() const { return live; }
  C stage() const {
    if constexpr (std::is_copy_constructible_v<C>) {
      return live;  // a copy keeps the component's configuration (paths, thresholds)
    } else {
      return C{};
    }
  }
  void check(const C&, LoadPlan&) const {}
  void commit(C&& saved) { live = std::move(saved); }
};

/// "model.members", "optimizer.members": the declared members of a model or an optimizer policy
/// that are not saved otherwise, by value (keel/state/declared_members.hpp).
template <class Live, template <class> class Keep>
struct DeclaredMembersSection {
  using Values = DeclaredValues<Live, Keep>;
  Live& live;
  const char* section_name;

  std::string name() const { return section_name; }
  std::string legacy_name() const { return {}; }
  std::string type() const { return keel::detail::component_name<Live>(); }
  bool accepts(const std::string& t) const { return t == type(); }
  std::uint32_t version() const { return layout_version<Live>(); }
  std::uint32_t oldest_version() const { return 0; }
  Values capture() const { return Values::capture(live); }
  Values stage() const { return Values::capture(live); }  // the file's bytes overwrite every value
  void check(const Values&, LoadPlan&) const {}
  void commit(Values&& saved) { std::move(saved).apply(live); }
};

/// "lineage": the forks and warm starts the run descends from (keel/lineage.hpp). Files of
/// keel 0.2 have none: they read as a run without forks.
struct LineageSection {
  static constexpr bool absent_is_empty = true;
  Lineage& live;

  std::string name() const { return "lineage"; }
  std::string legacy_name() const { return {}; }
  std::string type() const { return "keel::Lineage"; }
  bool accepts(const std::string& t) const { return t == type(); }
  std::uint32_t version() const { return Lineage::keel_version; }
  std::uint32_t oldest_version() const { return 1; }
  const Lineage& capture() const { return live; }
  Lineage stage() const { return {}; }
  void check(const Lineage&, LoadPlan&) const {}
  void commit(Lineage&& saved) { live = std::move(saved); }
};

/// Stands for the process's own random generators (the live side of the "rng" and "rng.ranks"
/// sections). In a data-parallel job (world_size > 1) `ranks` holds every rank's streams, rank 0
/// first, while a save writes them: the strategy gathers them for that save, which then lets go
/// of them (a file written without a gather, by Trainer::save_checkpoint, holds none).
struct ProcessGenerators {
  int rank = 0;
  int world_size = 1;
  std::vector<RngState> ranks;
};

/// "rng": LibTorch's CPU generator and each CUDA device's; last in the list, so that it is
/// captured last and restored last, after everything that might draw while it is built.
/// `Live` is ProcessGenerators, or RngState offline.
template <class Live>
struct RngSection {
  static constexpr bool offline = std::is_same_v<Live, RngState>;
  Live& live;

  std::string name() const { return "rng"; }
  std::string legacy_name() const { return {}; }
  std::string type() const { return "keel::RngState"; }
  bool accepts(const std::string& t) const { return t == type(); }
  std::uint32_t version() const { return 1; }
  std::uint32_t oldest_version() const { return 1; }
  RngState capture() const {
    if constexpr (offline) {
      return live;
    } else {
      return RngState::capture();
    }
  }
  RngState stage() const { return {}; }
  void check(const RngState& saved, LoadPlan& plan) const {
    if constexpr (!offline) plan.problems_from(saved.check(plan.warnings));
  }
  void commit(RngState&& saved) {
    if constexpr (offline) {
      live = std::move(saved);
    } else {
      saved.apply();
    }
  }
};

/// "rng.ranks": the random streams of each rank of a data-parallel job, rank 0 first (written
/// only when several processes train; "rng" holds the writer's, rank 0's). After "rng", so that
/// rank r ends with its own streams, ranks[r]: each rank's Dropout and random augmentation go on
/// exactly as before the stop, even when the ranks were seeded differently. A rank other than 0
/// that the file has no streams for (a file without the section: from one process, from
/// Trainer::save_checkpoint or from keel before it; or a job resumed with more processes than
/// wrote it) is seeded from "rng", rank 0's, and its rank (seed_rank_from_current): its own
/// streams, not rank 0's draws. Outside the state digest (checkpoint/digest.hpp). `Live` is
/// ProcessGenerators, or std::vector<RngState> offline.
template <class Live>
struct RankRngSection {
  static constexpr bool offline = std::is_same_v<Live, std::vector<RngState>>;
  static constexpr bool absent_is_empty = true;
  static constexpr bool ignored_when_absent = true;  // (one process: rank 0's streams are "rng")
  Live& live;

  bool present() const {
    if constexpr (offline) {
      return true;  // (read when the file has it)
    } else {
      return live.world_size > 1;
    }
  }
  std::string name() const { return "rng.ranks"; }
  std::string legacy_name() const { return {}; }
  std::string type() const { return "std::vector<keel::RngState>"; }
  bool accepts(const std::string& t) const { return t == type(); }
  std::uint32_t version() const { return 1; }
  std::uint32_t oldest_version() const { return 1; }
  const std::vector<RngState>& capture() const {
    if constexpr (offline) {
      return live;
    } else {
      return live.ranks;
    }
  }
  std::vector<RngState> stage() const { return {}; }
  /// The streams of the ranks the job has now, checked on every rank (so that all refuse alike,
  /// at once); those of ranks that a resume with fewer processes no longer has are nobody's to
  /// refuse.
  void check(const std::vector<RngState>& saved, LoadPlan& plan) const {
    if constexpr (!offline) {
      const std::size_t ranks = std::min(saved.size(), static_cast<std::size_t>(live.world_size));
      for (std::size_t r = 0; r < ranks; ++r)
        for (auto& problem : saved[r].check(plan.warnings)) plan.problem("rank " + std::to_string(r) + "'s " + problem);
    }
  }
  void commit(std::vector<RngState>&& saved) {
    if constexpr (offline) {
      live = std::move(saved);
    } else {
      if (live.rank < static_cast<int>(saved.size())) saved[static_cast<std::size_t>(live.rank)].apply();
      else if (live.rank > 0) seed_rank_from_current(live.rank);  // ("rng", rank 0's, applied just before)
    }
  }
};

/// "callback.<type>" of a keel::Optional<C> callback: switched on, exactly the section of C (its
/// name, type, layout and bytes: a checkpoint with Optional<EMA> on is one with keel::EMA);
/// switched off, none.
template <class Opt>
struct OptionalCallbackSection : ComponentSectionHeader<typename Opt::callback_type> {
  using C = typename Opt::callback_type;
  static_assert(std::is_move_assignable_v<C>,
                "keel::Optional<C>: a checkpoint is applied to C by assignment, and C is not move-assignable");
  Opt& live;

  OptionalCallbackSection(Opt& optional, std::string name, std::string legacy)
      : ComponentSectionHeader<C>{std::move(name), std::move(legacy)}, live(optional) {}

  bool present() const { return live.on(); }
  const C& capture() const { return *live.get(); }  // called only when present
  C stage() const {
    if constexpr (std::is_copy_constructible_v<C>) {
      if (live.on()) return *live.get();  // a copy keeps the callback's configuration
    }
    return C{};
  }
  void check(const C&, LoadPlan&) const {}
  void commit(C&& saved) { *live.get() = std::move(saved); }
};

namespace detail {
template <class T, class = void>
struct is_optional_callback : std::false_type {};
template <class T>
struct is_optional_callback<T, std::void_t<typename T::callback_type>> : std::true_type {};

/// The callback's section name: "callback.<its name>", "#<k>" for the k-th earlier callback of
/// the same name (names at run time: an Optional switched on is named after its callback).
template <std::size_t I, class... C>
std::string callback_section_name(std::tuple<C...>& callbacks) {
  std::vector<std::string> names;
  std::apply([&](auto&... callback) { (names.push_back(keel::detail::component_name_of(callback)), ...); }, callbacks);
  const std::size_t same_name = static_cast<std::size_t>(std::count(names.begin(), names.begin() + I, names[I]));
  const std::string name = "callback." + names[I];
  return same_name == 0 ? name : name + "#" + std::to_string(same_name);
}

template <std::size_t I, class... C>
auto callback_section_at(std::tuple<C...>& callbacks) {
  using T = std::tuple_element_t<I, std::tuple<C...>>;
  if constexpr (std::is_empty_v<T>) {
    return std::tuple<>{};  // nothing to save
  } else if constexpr (is_optional_callback<T>::value) {
    if constexpr (std::is_empty_v<typename T::callback_type>) {
      return std::tuple<>{};
    } else {
      return std::tuple<OptionalCallbackSection<T>>{OptionalCallbackSection<T>{
          std::get<I>(callbacks), callback_section_name<I>(callbacks), "callback." + std::to_string(I)}};
    }
  } else {
    return std::tuple<ComponentSection<T>>{
        ComponentSection<T>{std::get<I>(callbacks), callback_section_name<I>(callbacks), "callback." + std::to_string(I)}};
  }
}

template <class... C, std::size_t... I>
auto callback_sections(std::tuple<C...>& callbacks, std::index_sequence<I...>) {
  return std::tuple_cat(callback_section_at<I>(callbacks)...);
}

template <class O>
std::size_t param_groups_of(O& optimizer) {
  if constexpr (std::is_same_v<O, optim::OptimizerState>) {
    return optimizer.groups.size();
  } else {
    return optimizer.group_count();
  }
}

template <class T>
struct keep_every_member : std::true_type {};

/// The model's "model.members" section, when its declaration has members saved by value (and
/// the Trainer did not opt the model out with keel::parameters_only).
template <bool ParametersOnly, class Model>
auto model_member_sections(Model& model) {
  if constexpr (std::is_same_v<Model, ModelState> || ParametersOnly) {
    return std::tuple<>{};  // offline: a user's section stays opaque
  } else if constexpr (!reflect::is_reflected<Model> || !model_adds_data<Model>()) {
    return std::tuple<>{};
  } else if constexpr (DeclaredValues<Model, saved_by_value>::empty) {
    return std::tuple<>{};  // only submodules and tensors: parameters and buffers hold them
  } else {
    return std::make_tuple(DeclaredMembersSection<Model, saved_by_value>{model, "model.members"});
  }
}

template <class O, class = void>
struct torch_optimizer_base {
  using type = void;
};
template <class O>
struct torch_optimizer_base<O, std::void_t<typename O::torch_optimizer_base>> {
  using type = typename O::torch_optimizer_base;
};

/// A component chosen at run time among `alternatives` (keel::optim::OneOf, keel::sched::OneOf).
template <class T, class = void>
struct has_alternatives : std::false_type {};
template <class T>
struct has_alternatives<T, std::void_t<typename T::alternatives>> : std::true_type {};

template <class Optimizer>
auto optimizer_member_sections(Optimizer& optimizer);

/// keel::optim::OneOf writes the sections of the policy it runs, and a section list is fixed at
/// compile time: so each of its policies must keep all of its data in state().
template <class Policy>
constexpr bool one_of_policy_saves_all() {
  static_assert(std::is_same_v<decltype(optimizer_member_sections(std::declval<Policy&>())), std::tuple<>>,
                "keel [state is saved]: keel::optim::OneOf saves what each policy's state() holds, and this policy "
                "(the template argument of one_of_policy_saves_all<...> on the instantiation line) has members of "
                "its own beyond state() (the section 'optimizer.members'). Use it as the Trainer's optimizer on its "
                "own, or keep its data in state().");
  return true;
}

/// The optimizer policy's "optimizer.members" section, for data that state() does not hold.
template <class Optimizer>
auto optimizer_member_sections(Optimizer& optimizer) {
  using Base = typename torch_optimizer_base<Optimizer>::type;
  if constexpr (has_alternatives<Optimizer>::value) {
    return std::tuple<>{};  // every policy's data is in state() (one_of_policy_saves_all)
  } else if constexpr (std::is_same_v<Optimizer, optim::OptimizerState> || std::is_empty_v<Optimizer>) {
    return std::tuple<>{};
  } else if constexpr (!std::is_void_v<Base>) {
    if constexpr (layout::adds_no_data<Optimizer, Base>()) {
      return std::tuple<>{};  // all of it is in state()
    } else {
      return std::make_tuple(DeclaredMembersSection<Optimizer, keep_every_member>{optimizer, "optimizer.members"});
    }
  } else if constexpr (reflect::uses_reflected_serialize<Optimizer>) {
    return std::make_tuple(DeclaredMembersSection<Optimizer, keep_every_member>{optimizer, "optimizer.members"});
  } else {
    return std::make_tuple(ComponentSection<Optimizer>{optimizer, "optimizer.members", ""});
  }
}
}  // namespace detail

/// THE LIST: every section of a checkpoint, in file order. Random streams come last: the
/// process's own, then (data-parallel) every rank's.
template <bool ModelParametersOnly = false, class Model, class Optimizer, class Scheduler, class... Callbacks, class Generators,
          class RankGenerators>
auto checkpoint_sections(LoopState& loop, Lineage& lineage, Model& model, Optimizer& optimizer, Scheduler& scheduler,
                         std::tuple<Callbacks...>& callbacks, Generators& generators, RankGenerators& rank_generators) {
  return std::tuple_cat(std::make_tuple(LoopSection{loop}, LineageSection{lineage}, ModelSection<Model>{model}),
                        detail::model_member_sections<ModelParametersOnly>(model), std::make_tuple(OptimizerSection<Optimizer>{optimizer}),
                        detail::optimizer_member_sections(optimizer),
                        std::make_tuple(SchedulerSection<Scheduler>{scheduler, detail::param_groups_of(optimizer)}),
                        detail::callback_sections(callbacks, std::index_sequence_for<Callbacks...>{}),
                        std::make_tuple(RngSection<Generators>{generators}, RankRngSection<RankGenerators>{rank_generators}));
}

}  // namespace keel::state
