#pragma once
// TrainState: everything a Trainer trains with, in one object, as Composer's `State`: the
// options, the components, the loop's position and what the loop publishes to callbacks.
// The loop's pieces (keel/loop/) work on it; sections() is the list of what a checkpoint saves
// of it; fingerprint() is the configuration a resume must match.

#include <keel/context.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/fingerprint.hpp>
#include <keel/hooks.hpp>
#include <keel/error.hpp>
#include <keel/layout.hpp>
#include <keel/loop_state.hpp>
#include <keel/model_check.hpp>
#include <keel/state/sections.hpp>
#include <keel/strategy/single_process.hpp>
#include <keel/trainer_options.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace keel::state {

namespace detail {
/// An optimizer policy that names its param groups.
template <class T, class = void>
struct names_groups : std::false_type {};
template <class T>
struct names_groups<T, std::void_t<decltype(std::string(std::declval<const T&>().group_name(std::size_t{0})))>>
    : std::true_type {};
}  // namespace detail

/// The options that must match for a resume: the data order's, the loop's settings that change
/// the results (recorded only when set, so that files of runs without them keep resuming), and
/// the user's own configuration.
inline void describe_options(Fingerprint& f, const TrainerOptions& options) {
  f.add("data.batch_size", options.batch_size());
  f.add("data.accumulate", options.accumulate());
  f.add("data.shuffle", options.shuffle());
  f.add("data.drop_last", options.drop_last());
  f.add("data.seed", options.seed());
  if (options.precision() != Precision::fp32) f.add("loop.precision", precision_name(options.precision()));
  if (options.deterministic()) f.add("loop.deterministic", true);  // on CUDA it selects other cuBLAS kernels
  if (options.clip_grad_norm() > 0.0) {
    f.add("loop.clip_grad_norm", options.clip_grad_norm());
    f.add("loop.clip_grad_norm_type", options.clip_grad_norm_type());
  }
  if (options.clip_grad_value() > 0.0) f.add("loop.clip_grad_value", options.clip_grad_value());
  if (options.scales_loss()) {
    const LossScaling scaling = options.loss_scaling_or_default();
    f.add("loop.loss_scaling.init_scale", scaling.init_scale());
    f.add("loop.loss_scaling.growth_factor", scaling.growth_factor());
    f.add("loop.loss_scaling.growth_interval", scaling.growth_interval());
    f.add("loop.loss_scaling.backoff_factor", scaling.backoff_factor());
    f.add("loop.loss_scaling.max_backoffs_in_a_row", scaling.max_backoffs_in_a_row());
  }
  if (options.validate_every_steps() > 0) f.add("loop.validate_every_steps", options.validate_every_steps());
  if (options.validate_every_epochs() != 1) f.add("loop.validate_every_epochs", options.validate_every_epochs());
  for (const auto& [key, value] : options.config()) f.add("user." + key, value);
}

template <class ModuleT, class OptimizerT, class SchedulerT, class CallbacksT, bool ModelParametersOnly = false,
          class StrategyT = SingleProcess>
class TrainState {
 public:
  using Module = ModuleT;
  using Optimizer = OptimizerT;
  using Scheduler = SchedulerT;
  using Callbacks = CallbacksT;
  using Strategy = StrategyT;
  static constexpr bool model_parameters_only = ModelParametersOnly;

  TrainState(TrainerOptions options_in, std::shared_ptr<Module> model_in,
             typename Optimizer::Options optimizer_options, const optim::ParamGroups& param_groups,
             typename Scheduler::Options scheduler_options, Callbacks callbacks_in)
      : options(std::move(options_in)),
        model(std::move(model_in)),
        optimizer(make_optimizer(*model, std::move(optimizer_options), param_groups)),
        scheduler(optimizer.torch_optimizer(), std::move(scheduler_options)),
        callbacks(std::move(callbacks_in)),
        context(loop, view, *model) {
    loop.data_seed = options.seed();
    take_place();  // (known from the launcher's variables before any fit: a load before fit needs them too)
    view.max_steps = options.max_steps();
    view.max_epochs = options.max_epochs();
    for (std::size_t g = 0; g < optimizer.group_count(); ++g) view.lr_groups.push_back(group_name(g));
    publish_lrs();
  }
  /// This process's rank and the job's size, as the strategy has them, where callbacks and the
  /// random-stream sections read them. The Trainer takes them again before each fit, load, save
  /// and evaluation: the strategy may have changed its mind since (DataParallel::alone()).
  void take_place() {
    view.rank = generators.rank = strategy.rank();
    view.world_size = generators.world_size = strategy.world_size();
  }
  /// The learning rates callbacks see (Context::lr, lrs), after whatever changed them.
  void publish_lrs() {
    view.lrs.resize(optimizer.group_count());
    for (std::size_t g = 0; g < view.lrs.size(); ++g) view.lrs[g] = optimizer.lr(g);
    view.lr = view.lrs.empty() ? 0.0 : view.lrs[0];
  }
  /// Param group `g`'s name: the optimizer's (keel's policies name them), else "default" for a
  /// single group and "group<g>" for several.
  std::string group_name(std::size_t g) const {
    if constexpr (detail::names_groups<Optimizer>::value) {
      return optimizer.group_name(g);
    } else {
      return optimizer.group_count() == 1 ? std::string("default") : "group" + std::to_string(g);
    }
  }
  /// With ParamGroups only when given: a policy of one's own need not take them.
  static Optimizer make_optimizer(Module& module, typename Optimizer::Options options, const optim::ParamGroups& groups) {
    if constexpr (std::is_constructible_v<Optimizer, torch::OrderedDict<std::string, torch::Tensor>,
                                          typename Optimizer::Options, optim::ParamGroups>) {
      if (!groups.empty()) return Optimizer(module.named_parameters(true), std::move(options), groups);
    }
    return Optimizer(module.named_parameters(true), std::move(options));
  }
  TrainState(const TrainState&) = delete;
  TrainState& operator=(const TrainState&) = delete;

  // Declaration order is construction order: the optimizer needs the model, the scheduler the
  // optimizer, the context the loop state, the view and the model.
  const TrainerOptions options;
  const std::shared_ptr<Module> model;
  Optimizer optimizer;
  Scheduler scheduler;
  Callbacks callbacks;
  LoopState loop;
  Lineage lineage;                // the forks and warm starts this run descends from
  LoopView view;
  Context context;
  ProcessGenerators generators;   // LibTorch's random streams: process-wide, saved all the same (and every rank's)
  Strategy strategy;              // how many processes train, and how they share the work
  std::int64_t train_size = 0;    // samples in the training set of the current fit

  /// Sends one event to every callback, in declaration order.
  template <class Event>
  void dispatch(Event event) {
    hooks::dispatch(event, callbacks, context);
  }

  /// Every section of a checkpoint, bound to this state (keel/state/sections.hpp).
  auto sections() { return checkpoint_sections<ModelParametersOnly>(loop, lineage, *model, optimizer, scheduler, callbacks, generators,
                                                                        generators); }

  /// The configuration that must match for a resume.
  Fingerprint fingerprint(const std::string& format_name) const {
    Fingerprint f;
    f.add("format", format_name);
    f.add("model.type", keel::detail::type_name<Module>());
    // The opt-out is part of the configuration: a checkpoint says that the model's members
    // beyond its parameters and buffers were not saved (keel-ckpt info shows it).
    if (ModelParametersOnly) f.add("model.state", "parameters only");
    optimizer.describe(f, "optimizer.");
    scheduler.describe(f, "scheduler.");
    std::string names;
    std::apply(
        [&](const auto&... callback) {
          ((names += (names.empty() ? "" : ", ") + keel::detail::component_name_of(callback)), ...);
        },
        callbacks);
    f.add("callbacks", names);
    describe_callbacks(f, std::make_index_sequence<std::tuple_size_v<Callbacks>>{});
    describe_options(f, options);
    strategy.describe(f);
    return f;
  }

 private:
  template <std::size_t... I>
  void describe_callbacks(Fingerprint& f, std::index_sequence<I...>) const {
    [[maybe_unused]] auto one = [&](auto index) {  // unused when there are no callbacks
      const auto& callback = std::get<decltype(index)::value>(callbacks);
      if constexpr (keel::detail::has_describe<std::decay_t<decltype(callback)>>::value)
        callback.describe(f, "callback." + std::to_string(decltype(index)::value) + ".");
    };
    (one(std::integral_constant<std::size_t, I>{}), ...);
  }
};

namespace detail {
template <class T, class SavedBase>
void add_layout_problems(const T& component, std::vector<std::string>& problems) {
  if constexpr (!std::is_empty_v<T> && reflect::is_reflected<T> &&
                (!std::is_void_v<SavedBase> || reflect::uses_reflected_serialize<T>)) {
    using Declarer = layout::reflection_owner_t<T>;  // T, or the base whose declaration T inherits
    if constexpr (!std::is_void_v<Declarer>)
      for (auto& p : layout::misplaced_members<Declarer, SavedBase>(static_cast<const Declarer&>(component),
                                                                    keel::detail::component_name<T>()))
        problems.push_back(std::move(p));
  }
}
}  // namespace detail

/// The half of the guarantee that needs live objects, checked once when the Trainer is built,
/// before any step: each declared member where its declaration puts it, each declared tensor
/// and submodule of the model registered. Throws ConfigError listing every problem.
template <class State>
void check_declarations(const State& s) {
  std::vector<std::string> problems;
  if constexpr (!State::model_parameters_only)
    problems = model_declaration_problems(*s.model, keel::detail::type_name<typename State::Module>());
  using Optimizer = typename State::Optimizer;
  using Base = typename detail::torch_optimizer_base<Optimizer>::type;
  if constexpr (std::is_void_v<Base>) {
    detail::add_layout_problems<Optimizer, void>(s.optimizer, problems);
  } else if constexpr (!layout::adds_no_data<Optimizer, Base>()) {
    detail::add_layout_problems<Optimizer, Base>(s.optimizer, problems);
  }
  detail::add_layout_problems<typename State::Scheduler, void>(s.scheduler, problems);
  std::apply([&](const auto&... c) { (detail::add_layout_problems<std::decay_t<decltype(c)>, void>(c, problems), ...); },
             s.callbacks);
  if (!problems.empty()) {
    std::string message;
    for (const auto& p : problems) message += (message.empty() ? "" : "\n") + p;
    throw ConfigError(message);
  }
}

}  // namespace keel::state
