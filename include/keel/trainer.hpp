#pragma once
// keel::Trainer: the composition root. It picks the components from its policies, checks them
// at compile time, owns them (in a TrainState) and offers the public API. The work happens in
// small pieces beside it:
//
//   keel/state/sections.hpp         what a checkpoint holds: the one list of sections
//   keel/state/checkpoint_io.hpp    writing, digesting and the all-or-nothing loading of that list
//   keel/state/train_state.hpp      the components, the loop's position, the fingerprint
//   keel/loop/fit_loop.hpp          epochs until a stop condition, exception hooks
//   keel/loop/epoch_loop.hpp        micro-batches and accumulation windows, when to validate,
//                                   the epoch's end
//   keel/loop/optimizer_step.hpp    check, clip, step or skip, zero_grad, scheduler
//   keel/loop/gradient_clipping.hpp clip by norm or value, the norm before clipping
//   keel/loop/scheduler_steps.hpp   the scheduler's epoch and validation steps
//   keel/loop/evaluation.hpp        validation
//   keel/loop/nonfinite.hpp         NaN/Inf checks
//   keel/loop/checkpoint_saver.hpp  when to save, the I/O-error policy, rotation, the lock
//
//   using MyTrainer = keel::Trainer<keel::model<Net>, keel::optimizer<keel::optim::AdamW>,
//                                   keel::scheduler<keel::sched::CosineWarmup>,
//                                   keel::callbacks<keel::EarlyStopping>>;
//   MyTrainer trainer(std::make_shared<NetImpl>(), keel::TrainerOptions().max_epochs(3),
//                     torch::optim::AdamWOptions(1e-3), keel::sched::CosineWarmupOptions(100, 3000));
//   trainer.fit(train_set, validation_set);

#include <keel/checkpoint/binary_format.hpp>
#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/directory.hpp>
#include <keel/component_checks.hpp>
#include <keel/context.hpp>
#include <keel/data/dataset.hpp>
#include <keel/data/sampler.hpp>
#include <keel/detail/constructor_args.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/hooks.hpp>
#include <keel/log.hpp>
#include <keel/loop/checkpoint_saver.hpp>
#include <keel/loop/evaluation.hpp>
#include <keel/loop/fit_loop.hpp>
#include <keel/loop/requirements.hpp>
#include <keel/loop/stop_conditions.hpp>
#include <keel/model_check.hpp>
#include <keel/model_state.hpp>
#include <keel/optim/adam.hpp>
#include <keel/policies.hpp>
#include <keel/process_settings.hpp>
#include <keel/sched/constant.hpp>
#include <keel/state/checkpoint_io.hpp>
#include <keel/state/fork.hpp>
#include <keel/state/train_state.hpp>
#include <keel/state/warm_start.hpp>
#include <keel/state_check.hpp>
#include <keel/trainer_options.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel {

template <class... Policies>
class Trainer {
  static_assert((detail::is_policy<Policies>::value && ...),
                "keel::Trainer takes policies only: keel::model<M>, keel::optimizer<O>, "
                "keel::scheduler<S>, keel::callbacks<C...>, keel::checkpoint<F>, keel::strategy<S>.");

  using ModelPolicy = typename detail::find_policy<detail::model_role, detail::no_policy, Policies...>::policy;
  using ModelArgument = typename ModelPolicy::type;
  static_assert(!std::is_same_v<ModelArgument, detail::no_policy>,
                "keel::Trainer needs a model: add keel::model<YourModule> to its policies.");
  static constexpr bool model_parameters_only = ModelPolicy::saves_parameters_only;

 public:
  using Module = module_impl_t<ModelArgument>;
  using Optimizer = typename detail::find_policy<detail::optimizer_role, optim::AdamW, Policies...>::type;
  using Scheduler = typename detail::find_policy<detail::scheduler_role, sched::Constant, Policies...>::type;
  using Callbacks = typename detail::find_policy<detail::callbacks_role, std::tuple<>, Policies...>::type;
  using Format = typename detail::find_policy<detail::checkpoint_role, format::Binary, Policies...>::type;
  using Strategy = typename detail::find_policy<detail::strategy_role, SingleProcess, Policies...>::type;
  using OptimizerOptions = typename Optimizer::Options;
  using SchedulerOptions = typename Scheduler::Options;

 private:
  template <class C>
  static constexpr bool check_callback() {
    if constexpr (state::detail::is_optional_callback<C>::value) {  // keel::Optional<C>: C as if it stood alone
      return hooks::check_hooks<C>() && check_callbacks(static_cast<typename C::alternatives*>(nullptr));
    } else {
      return hooks::check_hooks<C>() && check_component_state<C, Format>();
    }
  }
  template <class... C>
  static constexpr bool check_callbacks(std::tuple<C...>*) {
    return (check_callback<C>() && ... && true);
  }
  // The compile-time guarantee, one role at a time (keel/state_check.hpp, keel/model_check.hpp).
  static_assert(check_format<Format>());
  static_assert(check_model_state<Module, Format, model_parameters_only>());
  template <class O>
  static constexpr bool check_optimizer_state() {
    return check_component_state<O, Format, typename state::detail::torch_optimizer_base<O>::type>();
  }
  // A policy chosen at run time (OneOf): each of its alternatives as if it stood alone.
  template <class... O>
  static constexpr bool check_optimizer_alternatives(std::tuple<O...>*) {
    return ((check_optimizer<O>() && check_optimizer_state<O>() && state::detail::one_of_policy_saves_all<O>()) && ...);
  }
  template <class... S>
  static constexpr bool check_scheduler_alternatives(std::tuple<S...>*) {
    return ((check_scheduler<S>() && check_component_state<S, Format>()) && ...);
  }
  static constexpr bool check_optimizer_role() {
    if constexpr (state::detail::has_alternatives<Optimizer>::value) {
      return check_optimizer<Optimizer>() &&
             check_optimizer_alternatives(static_cast<typename Optimizer::alternatives*>(nullptr));
    } else {
      return check_optimizer<Optimizer>() && check_optimizer_state<Optimizer>();
    }
  }
  static constexpr bool check_scheduler_role() {
    if constexpr (state::detail::has_alternatives<Scheduler>::value) {
      return check_scheduler<Scheduler>() && check_component_state<Scheduler, Format>() &&
             check_scheduler_alternatives(static_cast<typename Scheduler::alternatives*>(nullptr));
    } else {
      return check_scheduler<Scheduler>() && check_component_state<Scheduler, Format>();
    }
  }
  static_assert(check_optimizer_role());
  static_assert(check_scheduler_role());
  static_assert(check_callbacks(static_cast<Callbacks*>(nullptr)));

  using State = state::TrainState<Module, Optimizer, Scheduler, Callbacks, model_parameters_only, Strategy>;
  using Arguments = detail::ConstructorArgs<Module, Optimizer, Scheduler, Callbacks>;

 public:
  /// Takes, in any order: TrainerOptions, the model, the optimizer's and the scheduler's
  /// options, and callback objects. Anything left out is default-constructed.
  template <class... Args>
  explicit Trainer(Args&&... args) : Trainer(Arguments(std::forward<Args>(args)...)) {}

  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The members that do the work are defined below the class, not inside it: not inline, so
  // that a program with many translation units can compile a Trainer type once (an explicit
  // instantiation in one file, `extern template` in the others: README "Compile time").

  // ---- training ------------------------------------------------------------------------------

  /// Trains on `train` until max_epochs or max_steps (or a callback's stop request).
  template <class TrainSet>
  void fit(TrainSet& train);
  /// Trains on `train`, validating on `validation` at the end of each epoch (or as
  /// TrainerOptions::validate_every_epochs and validate_every_steps say).
  template <class TrainSet, class ValidationSet>
  void fit(TrainSet& train, ValidationSet& validation);

  /// Runs the model's validation_step over `dataset` (in order, no hooks) and returns the
  /// sample-weighted means of its metrics. Draws no random numbers.
  template <class Dataset>
  Metrics evaluate(Dataset& dataset);

  // ---- checkpoints ---------------------------------------------------------------------------

  /// Writes a complete checkpoint to `path` atomically (temp file, fsync, rename).
  /// Refuses (NonFiniteError) when a parameter holds NaN or an infinity: a non-finite state is
  /// never written over a good checkpoint.
  void save_checkpoint(const ckpt::fs::path& path);

  /// Restores the whole training state from `path`, or nothing: on any problem, throws one
  /// CheckpointError listing every problem, and the trainer is unchanged. The file is read
  /// piece by piece, the large tensors straight into the live ones once every check passed;
  /// should that reading fail (an I/O error, the file changed on disk meanwhile), it throws
  /// IncompleteLoadError and the trainer refuses to fit or save until a load succeeds.
  void load_checkpoint(const ckpt::fs::path& path);
  /// The same for a checkpoint's bytes held in memory (downloaded, say); `name` labels messages.
  void load_checkpoint(std::vector<char> bytes, const std::string& name);

  /// Restores the newest valid checkpoint of `directory` (skipping, with a warning, newer ones
  /// that fail verification). Returns its path, or nullopt when there is none.
  std::optional<ckpt::fs::path> resume_latest(const ckpt::fs::path& directory);

  /// Starts this (new) run from a checkpoint's weights, or weights and optimizer state, as
  /// TrainerOptions::init_mode and init_strict say; recorded in the lineage. fit() does this
  /// itself for TrainerOptions::init_from when there is nothing to resume. Throws
  /// CheckpointError listing every problem, with nothing changed.
  void warm_start(const ckpt::fs::path& path);

  /// A hex digest of the whole training state: every byte a checkpoint would hold (weights,
  /// buffers, optimizer, scheduler, loop and data position, random streams, callbacks). Two
  /// runs print the same digest exactly when their checkpoints would be identical.
  std::string state_digest();

  /// The configuration that must match for a resume.
  Fingerprint fingerprint() const;

  // ---- access --------------------------------------------------------------------------------

  std::shared_ptr<Module> model() const noexcept { return state_.model; }
  Optimizer& optimizer() noexcept { return state_.optimizer; }
  Scheduler& scheduler() noexcept { return state_.scheduler; }
  Callbacks& callbacks() noexcept { return state_.callbacks; }
  /// How the processes share the work (keel::SingleProcess unless keel::strategy<S> says):
  /// rank() and world_size() tell a program which process it is.
  Strategy& strategy() noexcept { return state_.strategy; }
  template <class C>
  C& callback() noexcept {
    return std::get<C>(state_.callbacks);
  }
  const LoopState& loop() const noexcept { return state_.loop; }
  /// The forks and warm starts this run descends from (keel/lineage.hpp).
  const Lineage& lineage() const noexcept { return state_.lineage; }
  /// Checkpoints not written because of an I/O error (only with continue_on_save_error).
  std::int64_t failed_saves() const noexcept { return saver_.failed_saves(); }
  const TrainerOptions& options() const noexcept { return state_.options; }
  /// Metrics of the latest validation run.
  const Metrics& metrics() const noexcept { return state_.view.metrics; }

 private:
  explicit Trainer(Arguments&& arguments) : Trainer(arguments, prepare_process(arguments.options())) {}
  Trainer(Arguments& arguments, TrainerOptions options);

  /// Validates the options (no side effects), then applies the process-wide settings.
  static TrainerOptions prepare_process(TrainerOptions options) {
    options.validate();
    apply_process_settings(options);
    return options;
  }
  static std::shared_ptr<Module> on_device(std::shared_ptr<Module> model, const torch::Device& device) {
    model->to(device);
    return model;
  }

  template <class TrainSet, class ValidationSet>
  void fit_impl(TrainSet& train, ValidationSet* validation);
  /// TrainerOptions::resume (and init_from when there is nothing to resume), once per Trainer
  /// (at the first fit).
  void resume_as_configured();
  /// With fork_from or init_from, the checkpoint that resume("auto") found must be this run's:
  /// one whose lineage starts from that file (or, for fork_from, the file itself). Otherwise
  /// the directory belongs to another run, and resuming it would silently ignore the option.
  void check_run_owns(const ckpt::fs::path& found, const ckpt::Container& container) const;
  /// Applies a verified container to the whole state, or nothing; then a fork's changes.
  void apply(const ckpt::Container& container, const std::string& path);
  /// Throws IncompleteLoadError while the state is partly from a load that failed partway.
  void require_whole_state() const;

  State state_;
  loop::CheckpointSaver<State, Format> saver_;
  std::optional<std::int64_t> loaded_train_size_;  // of the checkpoint loaded last
  bool resume_handled_ = false;
  std::string incomplete_load_;  // the checkpoint whose load failed partway (IncompleteLoadError)
};

// ---- the members that do the work ----------------------------------------------------------

template <class... P>
Trainer<P...>::Trainer(Arguments& arguments, TrainerOptions options)
    : state_(options, on_device(arguments.model(), options.device()), arguments.optimizer_options(),
             arguments.param_groups(), arguments.scheduler_options(), arguments.callbacks()),
      saver_(state_) {
  state::check_declarations(state_);
}

template <class... P>
template <class TrainSet>
void Trainer<P...>::fit(TrainSet& train) {
  fit_impl<TrainSet, loop::NoValidation>(train, nullptr);
}

template <class... P>
template <class TrainSet, class ValidationSet>
void Trainer<P...>::fit(TrainSet& train, ValidationSet& validation) {
  fit_impl(train, &validation);
}

template <class... P>
template <class Dataset>
Metrics Trainer<P...>::evaluate(Dataset& dataset) {
  require_whole_state();
  state_.take_place();
  return loop::evaluate(state_, dataset, /*with_hooks=*/false);
}

template <class... P>
void Trainer<P...>::save_checkpoint(const ckpt::fs::path& path) {
  require_whole_state();
  state_.take_place();
  saver_.write(path);
}

template <class... P>
void Trainer<P...>::load_checkpoint(const ckpt::fs::path& path) {
  apply(ckpt::read_container(path), path.string());
}

template <class... P>
void Trainer<P...>::load_checkpoint(std::vector<char> bytes, const std::string& name) {
  apply(ckpt::parse_container(std::move(bytes), name), name);
}

template <class... P>
std::optional<ckpt::fs::path> Trainer<P...>::resume_latest(const ckpt::fs::path& directory) {
  auto found = ckpt::newest_valid_checkpoint(directory, Format::extension);
  if (!found) return std::nullopt;
  apply(found->second, found->first.string());
  return found->first;
}

template <class... P>
void Trainer<P...>::warm_start(const ckpt::fs::path& path) {
  state_.take_place();
  state::warm_start<Format>(state_, ckpt::read_container(path), path.string());
  state_.publish_lrs();
}

template <class... P>
std::string Trainer<P...>::state_digest() {
  require_whole_state();
  state_.take_place();
  return state::state_digest<Format>(state_);
}

template <class... P>
Fingerprint Trainer<P...>::fingerprint() const {
  return state_.fingerprint(Format::keel_name);
}

template <class... P>
template <class TrainSet, class ValidationSet>
void Trainer<P...>::fit_impl(TrainSet& train, ValidationSet* validation) {
  static_assert(data::check_dataset<TrainSet>());
  static_assert(loop::check_training_step<Module, data::batch_t<TrainSet>>());
  if constexpr (!std::is_same_v<ValidationSet, loop::NoValidation>)
    static_assert(loop::check_validation_step<Module, data::batch_t<ValidationSet>>());

  const auto& options = state_.options;
  state_.take_place();
  state_.strategy.join(state_);  // (before the resume: the fingerprint records the world size)
  data::SamplerOptions sampling;
  sampling.batch_size = options.batch_size();
  sampling.shuffle = options.shuffle();
  sampling.drop_last = options.drop_last();
  const data::EpochSampler sampler(data::dataset_size(train), state_.strategy.shard(sampling), state_.loop.data_seed);
  state_.train_size = sampler.dataset_size();
  state_.view.batches_per_epoch = sampler.batches_per_epoch();
  state_.view.steps_per_epoch = (sampler.batches_per_epoch() + options.accumulate() - 1) / options.accumulate();

  require_whole_state();
  saver_.lock_directory();
  // From here on a stop signal ends training at the next optimizer-step boundary, saved.
  loop::StopSignals signals(options.stop_signals());
  resume_as_configured();
  // Every process starts this fit from the same state (after a load: checked to be the same),
  // each rank's own random streams aside (the ranks may draw differently, each from its own),
  // and validates alike (the ranks evaluate together).
  Fingerprint configuration = fingerprint();
  configuration.add("fit.validation", validation ? "a validation set" : "none");
  state_.strategy.start(state_, /*loaded=*/!state_.view.checkpoint_path.empty(), configuration,
                        [&] { return state::state_digest<Format>(state_, {"rng"}); });
  if (loaded_train_size_ && *loaded_train_size_ != state_.train_size)
    throw ConfigError("keel: the checkpoint was trained on " + std::to_string(*loaded_train_size_) +
                      " samples but this training set has " + std::to_string(state_.train_size) +
                      "; resume with the same dataset");
  loop::fit(state_, saver_, signals, train, validation, sampler);
}

template <class... P>
void Trainer<P...>::resume_as_configured() {
  if (resume_handled_) return;
  resume_handled_ = true;
  const std::string& resume = state_.options.resume();
  std::optional<ckpt::fs::path> from;
  if (resume == "auto") {
    const auto& start = state_.options.fork_from();
    auto found = ckpt::newest_valid_checkpoint(state_.options.checkpoint_dir(), Format::extension);
    if (found) {
      check_run_owns(found->first, found->second);
      apply(found->second, found->first.string());
      from = found->first;
    } else if (!start.empty()) {
      load_checkpoint(start);
      from = start;
    }
  } else if (resume != "never") {
    load_checkpoint(resume);
    from = resume;
  }
  if (from)
    notice("resumed from " + from->string() + " (epoch " + std::to_string(state_.loop.epoch) + ", step " +
           std::to_string(state_.loop.global_step) + ")");
  else if (!state_.options.init_from().empty())
    warm_start(state_.options.init_from());
}

template <class... P>
void Trainer<P...>::check_run_owns(const ckpt::fs::path& found, const ckpt::Container& container) const {
  const auto& options = state_.options;
  const std::string& start = !options.fork_from().empty() ? options.fork_from() : options.init_from();
  if (start.empty()) return;
  std::error_code ignored;
  if (!options.fork_from().empty() && ckpt::fs::equivalent(found, start, ignored)) return;
  for (const auto& entry : state::read_lineage<Format>(container).entries)
    if (entry.source == start) return;
  throw ConfigError("keel: checkpoint_dir '" + options.checkpoint_dir() + "' holds checkpoints of another run (newest: " +
                    found.string() + ") that did not start from '" + start +
                    "'; give this run a checkpoint directory of its own (the Fashion-MNIST example: --ckpt-dir)");
}

template <class... P>
void Trainer<P...>::apply(const ckpt::Container& container, const std::string& path) {
  state_.take_place();
  auto loaded = [&] {
    try {
      return state::load_checkpoint<Format>(state_, container, path);
    } catch (const IncompleteLoadError&) {
      incomplete_load_ = path;
      throw;
    }
  }();
  incomplete_load_.clear();
  loaded_train_size_ = loaded.train_size;
  if (loaded.fork) state::apply_fork(state_, std::move(*loaded.fork));
  state::follow_lineage(state_);  // checked by load_checkpoint: it does not throw
  state_.publish_lrs();
  state_.view.checkpoint_path = path;
  saver_.loaded();
  resume_handled_ = true;
  state_.dispatch(event::on_load_checkpoint{});
}

template <class... P>
void Trainer<P...>::require_whole_state() const {
  if (!incomplete_load_.empty())
    throw IncompleteLoadError(incomplete_load_, "see the error that load threw; nothing has been trained or saved since");
}

}  // namespace keel
