#pragma once
// keel::Trainer: the training loop, composed at compile time from policies.
//
//   using MyTrainer = keel::Trainer<keel::model<Net>, keel::optimizer<keel::optim::AdamW>,
//                                   keel::scheduler<keel::sched::CosineWarmup>,
//                                   keel::callbacks<keel::EarlyStopping>>;
//   MyTrainer trainer(std::make_shared<NetImpl>(), keel::TrainerOptions().max_epochs(3),
//                     torch::optim::AdamWOptions(1e-3), keel::sched::CosineWarmupOptions(100, 3000));
//   trainer.fit(train_set, validation_set);
//
// The Trainer owns every component. Its checkpoints hold everything that influences a later
// step (DESIGN.md section 3), so a run resumed from one continues bitwise identically.

#include <keel/checkpoint/binary_format.hpp>
#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/digest.hpp>
#include <keel/checkpoint/directory.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/checkpoint/sections.hpp>
#include <keel/component_checks.hpp>
#include <keel/context.hpp>
#include <keel/data/dataset.hpp>
#include <keel/data/loader.hpp>
#include <keel/data/sampler.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/hash.hpp>
#include <keel/hooks.hpp>
#include <keel/model_state.hpp>
#include <keel/optim/adam.hpp>
#include <keel/policies.hpp>
#include <keel/rng.hpp>
#include <keel/sched/constant.hpp>
#include <keel/signals.hpp>
#include <keel/state_check.hpp>
#include <keel/trainer_options.hpp>

#include <ATen/Parallel.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <iostream>
#include <istream>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel {

namespace detail {
template <class>
inline constexpr bool always_false = false;

/// A component that adds its configuration to the fingerprint.
template <class T, class = void>
struct has_describe : std::false_type {};
template <class T>
struct has_describe<T, std::void_t<decltype(std::declval<const T&>().describe(
                           std::declval<Fingerprint&>(), std::declval<const std::string&>()))>>
    : std::true_type {};

/// The validation set of a fit() without one.
struct NoValidation {};

template <class T, class Tuple>
struct index_in_tuple;
template <class T, class... Ts>
struct index_in_tuple<T, std::tuple<Ts...>> {
  static constexpr std::size_t count = (std::size_t{0} + ... + (std::is_same_v<T, Ts> ? 1 : 0));
  static constexpr std::size_t value = [] {
    std::size_t i = 0;
    static_cast<void>(((std::is_same_v<T, Ts> ? false : (++i, true)) && ...));
    return i;
  }();
};

template <class Model, class Batch, class = void>
struct has_training_step : std::false_type {};
template <class Model, class Batch>
struct has_training_step<Model, Batch,
                         std::void_t<decltype(std::declval<Model&>().training_step(std::declval<const Batch&>()))>>
    : std::is_convertible<decltype(std::declval<Model&>().training_step(std::declval<const Batch&>())),
                          torch::Tensor> {};

template <class Model, class Batch, class = void>
struct has_validation_step : std::false_type {};
template <class Model, class Batch>
struct has_validation_step<
    Model, Batch, std::void_t<decltype(std::declval<Model&>().validation_step(std::declval<const Batch&>()))>>
    : std::is_convertible<decltype(std::declval<Model&>().validation_step(std::declval<const Batch&>())),
                          Metrics> {};

}  // namespace detail

template <class... Policies>
class Trainer {
  static_assert((detail::is_policy<Policies>::value && ...),
                "keel::Trainer takes policies only: keel::model<M>, keel::optimizer<O>, "
                "keel::scheduler<S>, keel::callbacks<C...>, keel::checkpoint<F>.");

  using ModelArgument = typename detail::find_policy<detail::model_role, detail::no_policy, Policies...>::type;
  static_assert(!std::is_same_v<ModelArgument, detail::no_policy>,
                "keel::Trainer needs a model: add keel::model<YourModule> to its policies.");

 public:
  using Module = module_impl_t<ModelArgument>;
  using Optimizer = typename detail::find_policy<detail::optimizer_role, optim::AdamW, Policies...>::type;
  using Scheduler = typename detail::find_policy<detail::scheduler_role, sched::Constant, Policies...>::type;
  using Callbacks = typename detail::find_policy<detail::callbacks_role, std::tuple<>, Policies...>::type;
  using Format = typename detail::find_policy<detail::checkpoint_role, format::Binary, Policies...>::type;
  using OptimizerOptions = typename Optimizer::Options;
  using SchedulerOptions = typename Scheduler::Options;

 private:
  template <class... C>
  static constexpr bool check_callbacks(std::tuple<C...>*) {
    return ((hooks::check_hooks<C>() && check_component_state<C, Format>()) && ... && true);
  }
  static_assert(check_model<Module>());
  static_assert(check_optimizer<Optimizer>());
  static_assert(check_scheduler<Scheduler>());
  static_assert(check_callbacks(static_cast<Callbacks*>(nullptr)));
  static_assert(check_component_state<Scheduler, Format>());

  // Constructor arguments, gathered by type so that they may come in any order.
  template <class Tuple>
  struct OptionalTuple;
  template <class... C>
  struct OptionalTuple<std::tuple<C...>> {
    using type = std::tuple<std::optional<C>...>;
  };
  struct Setup {
    TrainerOptions options;
    std::shared_ptr<Module> model;
    std::optional<OptimizerOptions> optimizer_options;
    std::optional<SchedulerOptions> scheduler_options;
    typename OptionalTuple<Callbacks>::type callbacks;
  };

  template <class Arg>
  static void take(Setup& setup, Arg&& arg) {
    using A = std::decay_t<Arg>;
    if constexpr (std::is_same_v<A, TrainerOptions>) {
      setup.options = std::forward<Arg>(arg);
    } else if constexpr (std::is_convertible_v<A, std::shared_ptr<Module>>) {
      setup.model = std::forward<Arg>(arg);
    } else if constexpr (std::is_base_of_v<torch::nn::ModuleHolder<Module>, A>) {
      setup.model = arg.ptr();
    } else if constexpr (std::is_same_v<A, OptimizerOptions>) {
      setup.optimizer_options = std::forward<Arg>(arg);
    } else if constexpr (std::is_same_v<A, SchedulerOptions>) {
      setup.scheduler_options = std::forward<Arg>(arg);
    } else if constexpr (detail::index_in_tuple<A, Callbacks>::count == 1) {
      std::get<detail::index_in_tuple<A, Callbacks>::value>(setup.callbacks) = std::forward<Arg>(arg);
    } else {
      static_assert(detail::always_false<A>,
                    "keel::Trainer: a constructor argument matches no component. Pass any of: "
                    "keel::TrainerOptions, the model (std::shared_ptr<Impl> or its holder), the "
                    "optimizer's options, the scheduler's options, a callback of the Trainer.");
    }
  }

  template <class... Args>
  static Setup collect(Args&&... args) {
    Setup setup;
    (take(setup, std::forward<Args>(args)), ...);
    return setup;
  }

 public:
  /// Takes, in any order: TrainerOptions, the model, the optimizer's and the scheduler's
  /// options, and callback objects. Anything left out is default-constructed.
  template <class... Args>
  explicit Trainer(Args&&... args) : Trainer(collect(std::forward<Args>(args)...), 0) {}

  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // ---- training ------------------------------------------------------------------------------

  /// Trains on `train` until max_epochs or max_steps (or a callback's stop request).
  template <class TrainSet>
  void fit(TrainSet& train) {
    fit_impl<TrainSet, detail::NoValidation>(train, nullptr);
  }
  /// Trains on `train`, validating on `validation` at the end of each epoch.
  template <class TrainSet, class ValidationSet>
  void fit(TrainSet& train, ValidationSet& validation) {
    fit_impl(train, &validation);
  }

  /// Runs the model's validation_step over `dataset` (in order, no hooks) and returns the
  /// sample-weighted means of its metrics. Draws no random numbers.
  template <class Dataset>
  Metrics evaluate(Dataset& dataset) {
    return run_validation(dataset, /*with_hooks=*/false);
  }

  // ---- checkpoints ---------------------------------------------------------------------------

  /// Writes a complete checkpoint to `path` atomically (temp file, fsync, rename).
  /// Refuses (NonFiniteError) when a parameter holds NaN or an infinity: a non-finite state is
  /// never written over a good checkpoint.
  void save_checkpoint(const ckpt::fs::path& path) {
    if (const std::string bad = first_nonfinite_parameter(); !bad.empty())
      throw NonFiniteError("keel: parameter '" + bad + "' holds NaN or infinite values at step " +
                           std::to_string(loop_.global_step) + "; " + path.string() +
                           " was not written, and the checkpoints before it are untouched. Lower the "
                           "learning rate or clip gradients");
    ckpt::write_atomically(path, [&](ckpt::HashingFileSink& sink) {
      ckpt::ContainerWriter writer(sink, Format::keel_name, Format::format_id);
      write_sections(writer);
      writer.finish(fingerprint(), facts());
    });
  }

  /// Restores the whole training state from `path`, or nothing: on any problem, throws one
  /// CheckpointError listing every problem, and the trainer is unchanged.
  void load_checkpoint(const ckpt::fs::path& path) {
    apply_checkpoint(ckpt::read_container(path), path.string());
  }
  /// The same for a checkpoint's bytes held in memory (downloaded, say); `name` labels messages.
  void load_checkpoint(std::vector<char> bytes, const std::string& name) {
    apply_checkpoint(ckpt::parse_container(std::move(bytes), name), name);
  }

  /// Restores the newest valid checkpoint of `directory` (skipping, with a warning, newer ones
  /// that fail verification). Returns its path, or nullopt when there is none.
  std::optional<ckpt::fs::path> resume_latest(const ckpt::fs::path& directory) {
    auto found = ckpt::newest_valid_checkpoint(directory, Format::extension);
    if (!found) return std::nullopt;
    apply_checkpoint(found->second, found->first.string());
    return found->first;
  }

  /// A hex digest of the whole training state: every byte a checkpoint would hold (weights,
  /// buffers, optimizer, scheduler, loop and data position, random streams, callbacks). Two
  /// runs print the same digest exactly when their checkpoints would be identical.
  std::string state_digest() {
    ckpt::DigestWriter writer;
    write_sections(writer);
    return writer.hex();
  }

  /// The configuration that must match for a resume.
  Fingerprint fingerprint() const {
    Fingerprint f;
    f.add("format", Format::keel_name);
    f.add("model.type", detail::type_name<Module>());
    optimizer_.describe(f, "optimizer.");
    scheduler_.describe(f, "scheduler.");
    std::string names;
    std::apply([&](const auto&... callback) {
      ((names += (names.empty() ? "" : ", ") + detail::component_name<std::decay_t<decltype(callback)>>()), ...);
    }, callbacks_);
    f.add("callbacks", names);
    describe_callbacks(f, std::make_index_sequence<std::tuple_size_v<Callbacks>>{});
    f.add("data.batch_size", options_.batch_size());
    f.add("data.accumulate", options_.accumulate());
    f.add("data.shuffle", options_.shuffle());
    f.add("data.drop_last", options_.drop_last());
    f.add("data.seed", options_.seed());
    for (const auto& [key, value] : options_.config()) f.add("user." + key, value);
    return f;
  }

 private:
  template <std::size_t... I>
  void describe_callbacks(Fingerprint& f, std::index_sequence<I...>) const {
    [[maybe_unused]] auto one = [&](auto index) {  // unused when there are no callbacks
      const auto& callback = std::get<decltype(index)::value>(callbacks_);
      if constexpr (detail::has_describe<std::decay_t<decltype(callback)>>::value)
        callback.describe(f, "callback." + std::to_string(decltype(index)::value) + ".");
    };
    (one(std::integral_constant<std::size_t, I>{}), ...);
  }

 public:
  // ---- access --------------------------------------------------------------------------------

  std::shared_ptr<Module> model() const noexcept { return model_; }
  Optimizer& optimizer() noexcept { return optimizer_; }
  Scheduler& scheduler() noexcept { return scheduler_; }
  Callbacks& callbacks() noexcept { return callbacks_; }
  template <class C>
  C& callback() noexcept {
    return std::get<C>(callbacks_);
  }
  const LoopState& loop() const noexcept { return loop_; }
  /// Checkpoints not written because of an I/O error (only with continue_on_save_error).
  std::int64_t failed_saves() const noexcept { return failed_saves_; }
  const TrainerOptions& options() const noexcept { return options_; }
  /// Metrics of the latest validation run.
  const Metrics& metrics() const noexcept { return ctx_.metrics_; }

 private:
  Trainer(Setup setup, int)
      : options_(checked(std::move(setup.options))),
        model_(make_model(setup)),
        optimizer_(model_->named_parameters(true), take_optimizer_options(setup)),
        scheduler_(optimizer_.torch_optimizer(), take_scheduler_options(setup)),
        callbacks_(make_callbacks(setup, std::make_index_sequence<std::tuple_size_v<Callbacks>>{})),
        ctx_(loop_, *model_) {
    loop_.data_seed = options_.seed();
    ctx_.max_steps_ = options_.max_steps();
    ctx_.max_epochs_ = options_.max_epochs();
    ctx_.lr_ = optimizer_.lr(0);
  }

  static TrainerOptions checked(TrainerOptions options) {
    auto positive = [](const char* name, std::int64_t value) {
      if (value <= 0)
        throw ConfigError(std::string("keel::TrainerOptions: ") + name + " must be positive, got " +
                          std::to_string(value));
    };
    auto non_negative = [](const char* name, std::int64_t value) {
      if (value < 0)
        throw ConfigError(std::string("keel::TrainerOptions: ") + name + " must be >= 0, got " +
                          std::to_string(value));
    };
    positive("batch_size", options.batch_size());
    positive("accumulate", options.accumulate());
    non_negative("max_epochs", options.max_epochs());
    non_negative("max_steps", options.max_steps());
    non_negative("save_every_steps", options.save_every_steps());
    non_negative("keep_last", options.keep_last());
    non_negative("keep_best", options.keep_best());
    if (options.keep_best() > 0 && options.monitor().empty())
      throw ConfigError("keel::TrainerOptions: keep_best(" + std::to_string(options.keep_best()) +
                        ") needs monitor(\"<validation metric>\"), e.g. monitor(\"val_loss\")");
    non_negative("validation_batch_size", options.validation_batch_size());
    non_negative("threads", options.threads());
    non_negative("workers", options.workers());
    non_negative("prefetch_batches", options.prefetch_batches());
    if (options.max_epochs() == 0 && options.max_steps() == 0)
      throw ConfigError("keel::TrainerOptions: set max_epochs or max_steps (both are 0, so training "
                        "would never end)");
    const auto& resume = options.resume();
    if (resume.empty())
      throw ConfigError("keel::TrainerOptions: resume is empty; use \"never\", \"auto\" or a checkpoint path");
    if (resume == "auto" && options.checkpoint_dir().empty())
      throw ConfigError("keel::TrainerOptions: resume \"auto\" needs a checkpoint_dir to look in");
    if (options.threads() > 0) at::set_num_threads(options.threads());
    if (options.device().is_cuda()) {
      // Bitwise reproducibility on CUDA needs deterministic cuDNN algorithms.
      at::globalContext().setDeterministicCuDNN(true);
      at::globalContext().setBenchmarkCuDNN(false);
    }
    return options;
  }

  std::shared_ptr<Module> make_model(Setup& setup) {
    std::shared_ptr<Module> model = std::move(setup.model);
    if (!model) {
      if constexpr (std::is_default_constructible_v<Module>) {
        model = std::make_shared<Module>();
      } else {
        throw ConfigError("keel::Trainer: pass the model (std::shared_ptr<" + detail::type_name<Module>() +
                          ">) to the constructor; it has no default constructor");
      }
    }
    model->to(options_.device());
    return model;
  }

  static OptimizerOptions take_optimizer_options(Setup& setup) {
    if (setup.optimizer_options) return std::move(*setup.optimizer_options);
    if constexpr (std::is_default_constructible_v<OptimizerOptions>) {
      return OptimizerOptions{};
    } else {
      throw ConfigError("keel::Trainer: " + detail::component_name<Optimizer>() +
                        " has no default options; pass its options (e.g. torch::optim::SGDOptions(lr))"
                        " to the Trainer's constructor");
    }
  }

  static SchedulerOptions take_scheduler_options(Setup& setup) {
    if (setup.scheduler_options) return std::move(*setup.scheduler_options);
    if constexpr (std::is_default_constructible_v<SchedulerOptions>) {
      return SchedulerOptions{};
    } else {
      throw ConfigError("keel::Trainer: " + detail::component_name<Scheduler>() +
                        " has no default options; pass its Options to the Trainer's constructor");
    }
  }

  template <std::size_t I>
  static auto take_callback(Setup& setup) {
    using C = std::tuple_element_t<I, Callbacks>;
    auto& given = std::get<I>(setup.callbacks);
    if (given) return C(std::move(*given));
    if constexpr (std::is_default_constructible_v<C>) {
      return C{};
    } else {
      throw ConfigError("keel::Trainer: callback " + detail::type_name<C>() +
                        " has no default constructor; pass an instance to the Trainer's constructor");
      return C(std::move(*given));  // unreachable; gives the lambda its return type
    }
  }
  template <std::size_t... I>
  static Callbacks make_callbacks(Setup& setup, std::index_sequence<I...>) {
    return Callbacks(take_callback<I>(setup)...);
  }

  template <class Event>
  void dispatch(Event e) {
    hooks::dispatch(e, callbacks_, ctx_);
  }

  // ---- the loop ------------------------------------------------------------------------------

  template <class TrainSet, class ValidationSet>
  void fit_impl(TrainSet& train, ValidationSet* validation) {
    static_assert(data::check_dataset<TrainSet>());
    using Batch = data::batch_t<TrainSet>;
    static_assert(detail::has_training_step<Module, Batch>::value,
                  "keel: the model needs `torch::Tensor training_step(const Batch& batch)` "
                  "returning the scalar loss of one batch (Batch is what the dataset's get_batch "
                  "returns, torch::data::Example<> by default).");

    data::SamplerOptions sampler_options;
    sampler_options.batch_size = options_.batch_size();
    sampler_options.shuffle = options_.shuffle();
    sampler_options.drop_last = options_.drop_last();
    const data::EpochSampler sampler(data::dataset_size(train), sampler_options, loop_.data_seed);
    train_size_ = sampler.dataset_size();
    ctx_.batches_per_epoch_ = sampler.batches_per_epoch();
    ctx_.steps_per_epoch_ = (sampler.batches_per_epoch() + options_.accumulate() - 1) / options_.accumulate();

    if (!options_.checkpoint_dir().empty() && !directory_lock_)
      directory_lock_ = std::make_unique<ckpt::DirectoryLock>(options_.checkpoint_dir());
    // From here on a stop signal ends training at the next optimizer-step boundary, saved.
    std::optional<StopSignalGuard> stop_signals;
    if (!options_.stop_signals().empty()) stop_signals.emplace(options_.stop_signals());
    watching_signals_ = stop_signals.has_value();
    struct Unwatch {
      bool& flag;
      ~Unwatch() { flag = false; }
    } unwatch{watching_signals_};
    resume_as_configured();
    if (loaded_train_size_ && *loaded_train_size_ != train_size_)
      throw ConfigError("keel: the checkpoint was trained on " + std::to_string(*loaded_train_size_) +
                        " samples but this training set has " + std::to_string(train_size_) +
                        "; resume with the same dataset");
    if constexpr (!std::is_same_v<ValidationSet, detail::NoValidation>) {
      using ValidationBatch = data::batch_t<ValidationSet>;
      static_assert(detail::has_validation_step<Module, ValidationBatch>::value,
                    "keel: fit() with a validation set needs the model's "
                    "`keel::Metrics validation_step(const Batch& batch)`.");
    }

    optimizer_.zero_grad();  // every window, the first included, accumulates into zeros
    try {
      dispatch(event::on_fit_start{});
      while (!finished()) {
        stop_if_signalled();
        run_epoch(train, validation, sampler);
      }
      if (dirty_ && !options_.checkpoint_dir().empty()) save_to_directory();
      dispatch(event::on_fit_end{});
    } catch (...) {
      ctx_.exception_ = std::current_exception();
      try {
        dispatch(event::on_exception{});
      } catch (...) {
        // the original exception is the one worth reporting
      }
      ctx_.exception_ = nullptr;
      throw;
    }
  }

  /// After a stop signal: saves (unless the state is saved already) and throws Interrupted.
  void stop_if_signalled() {
    if (!watching_signals_) return;
    const int signal = StopSignalGuard::pending();
    if (signal == 0) return;
    if (dirty_ && !options_.checkpoint_dir().empty()) {
      save_to_directory();
      if (dirty_)  // the save failed and continue_on_save_error let it pass: nothing to resume from
        throw Interrupted(signal, "");
    }
    throw Interrupted(signal, options_.checkpoint_dir().empty() ? std::string() : ctx_.checkpoint_path_);
  }

  /// The name of the first parameter whose gradient holds NaN or an infinity ("" if none).
  /// NaN and infinities survive summation, so a finite total of the gradients' sums proves them
  /// all finite with one reduction per parameter and one synchronization; that costs a fraction
  /// of `isfinite(grad).all()`, which builds a mask as large as the model. Only a non-finite
  /// total (a real NaN, or finite values whose sum overflows) takes the exact per-element pass.
  std::string first_nonfinite_gradient() {
    std::vector<torch::Tensor> sums;
    for (const auto& parameter : model_->parameters(true)) {
      const auto& grad = parameter.grad();
      if (!grad.defined()) continue;
      torch::Tensor sum = grad.sum();
      sums.push_back((sum.is_complex() ? at::abs(sum) : sum).to(torch::kDouble));
    }
    if (sums.empty() || at::isfinite(torch::stack(sums).sum()).template item<bool>()) return {};
    for (const auto& item : model_->named_parameters(true)) {
      const auto& grad = item.value().grad();
      if (grad.defined() && !at::isfinite(grad).all().template item<bool>()) return item.key();
    }
    return {};
  }

  /// The name of the first parameter holding NaN or an infinity ("" if none).
  std::string first_nonfinite_parameter() {
    for (const auto& item : model_->named_parameters(true))
      if (!at::isfinite(item.value()).all().template item<bool>()) return item.key();
    return {};
  }

  std::string nonfinite_message(const std::string& what) const {
    return "keel: " + what + " at step " + std::to_string(loop_.global_step + 1) + " (epoch " +
           std::to_string(loop_.epoch) + ", batch " + std::to_string(loop_.batch_in_epoch) +
           "); training stopped before the optimizer applied it, and no checkpoint holds it. Lower the "
           "learning rate, check the data, or set TrainerOptions().on_nonfinite(keel::NonFinitePolicy::skip_step)";
  }

  bool finished() const {
    return loop_.stop_requested ||
           (options_.max_steps() > 0 && loop_.global_step >= options_.max_steps()) ||
           (options_.max_epochs() > 0 && loop_.epoch >= options_.max_epochs());
  }

  template <class TrainSet, class ValidationSet>
  void run_epoch(TrainSet& train, ValidationSet* validation, const data::EpochSampler& sampler) {
    const std::int64_t batches = sampler.batches_per_epoch();
    if (loop_.batch_in_epoch > batches)
      throw ConfigError("keel: the checkpoint's position (batch " + std::to_string(loop_.batch_in_epoch) +
                        ") lies past the end of an epoch of " + std::to_string(batches) + " batches");
    // Workers start loading at the resume position; earlier samples are never read.
    data::BatchLoader<TrainSet> loader(train, sampler, loop_.epoch, loop_.batch_in_epoch,
                                       data::SampleContext(loop_.data_seed, loop_.epoch, /*training=*/true),
                                       options_.workers(), options_.prefetch_batches());
    if (loop_.batch_in_epoch == 0) dispatch(event::on_train_epoch_start{});
    model_->train();
    const std::int64_t accumulate = options_.accumulate();
    while (loop_.batch_in_epoch < batches && !finished()) {
      if (loop_.micro_batch == 0) stop_if_signalled();  // only between optimizer steps
      // Windows start at multiples of `accumulate`; the epoch's last one may be shorter.
      const std::int64_t window_start = loop_.batch_in_epoch - loop_.micro_batch;
      const std::int64_t window = std::min(accumulate, batches - window_start);

      dispatch(event::on_train_batch_start{});
      auto batch = data::to_device(loader.next(), options_.device());
      torch::Tensor loss = model_->training_step(batch);
      if (!loss.defined() || loss.numel() != 1)
        throw ConfigError("keel: training_step must return a scalar loss tensor, got " +
                          (loss.defined() ? "shape " + shape_string(loss.sizes()) : std::string("an undefined tensor")));
      (window == 1 ? loss : loss / static_cast<double>(window)).backward();
      ctx_.loss_ = loss.detach();
      if (loop_.micro_batch == 0) window_nonfinite_ = false;
      if (!std::isfinite(ctx_.loss_.template item<double>())) {
        window_nonfinite_ = true;
        if (options_.on_nonfinite() == NonFinitePolicy::stop)
          throw NonFiniteError(nonfinite_message("the loss is " + std::to_string(ctx_.loss_.template item<double>())));
      }
      ctx_.batch_size_ = data::batch_size_of(batch);
      window_loss_ = loop_.micro_batch == 0 ? ctx_.loss_ : window_loss_ + ctx_.loss_;
      ++loop_.batch_in_epoch;
      ++loop_.micro_batch;
      dispatch(event::on_train_batch_end{});

      if (loop_.micro_batch == window) optimizer_step(window, batches);
    }
    if (loop_.batch_in_epoch == batches) end_epoch(validation);
  }

  void optimizer_step(std::int64_t window, std::int64_t batches) {
    dispatch(event::on_optimizer_step_start{});
    std::string bad_gradient;
    if (!window_nonfinite_) bad_gradient = first_nonfinite_gradient();
    if (window_nonfinite_ || !bad_gradient.empty()) {
      if (options_.on_nonfinite() == NonFinitePolicy::stop)
        throw NonFiniteError(nonfinite_message("the gradient of '" + bad_gradient + "' is not finite"));
      // skip_step: the step counts (the schedule and the data stay aligned) but applies nothing.
      ++loop_.skipped_steps;
      std::cerr << "keel: warning: step " << loop_.global_step + 1 << " skipped: non-finite "
                << (window_nonfinite_ ? "loss" : "gradient of '" + bad_gradient + "'") << " ("
                << loop_.skipped_steps << " skipped so far)\n";
    } else {
      optimizer_.step();
    }
    window_nonfinite_ = false;
    optimizer_.zero_grad();
    scheduler_.step();
    ++loop_.global_step;
    loop_.micro_batch = 0;
    dirty_ = true;
    ctx_.loss_ = window == 1 ? window_loss_ : window_loss_ / static_cast<double>(window);
    ctx_.lr_ = optimizer_.lr(0);
    dispatch(event::on_optimizer_step_end{});
    if (ctx_.stop_request_) loop_.stop_requested = true;

    const bool epoch_save_follows = loop_.batch_in_epoch == batches && options_.save_on_epoch_end();
    if (options_.save_every_steps() > 0 && loop_.global_step % options_.save_every_steps() == 0 &&
        !epoch_save_follows && !options_.checkpoint_dir().empty())
      save_to_directory();
  }

  template <class ValidationSet>
  void end_epoch(ValidationSet* validation) {
    if constexpr (!std::is_same_v<ValidationSet, detail::NoValidation>) {
      if (validation) {
        ctx_.metrics_ = run_validation(*validation, /*with_hooks=*/true);
        validation_unsaved_ = true;
      }
    }
    dispatch(event::on_train_epoch_end{});
    if (ctx_.stop_request_) loop_.stop_requested = true;
    ++loop_.epoch;
    loop_.batch_in_epoch = 0;
    dirty_ = true;
    if (options_.save_on_epoch_end() && !options_.checkpoint_dir().empty()) save_to_directory();
  }

  template <class Dataset>
  Metrics run_validation(Dataset& dataset, bool with_hooks) {
    static_assert(data::check_dataset<Dataset>());
    using Batch = data::batch_t<Dataset>;
    static_assert(detail::has_validation_step<Module, Batch>::value,
                  "keel: validation needs the model's `keel::Metrics validation_step(const Batch& batch)`, "
                  "returning per-batch mean metrics.");
    data::SamplerOptions in_order;
    in_order.batch_size =
        options_.validation_batch_size() > 0 ? options_.validation_batch_size() : options_.batch_size();
    in_order.shuffle = false;
    const data::EpochSampler sampler(data::dataset_size(dataset), in_order, 0);
    if (with_hooks) dispatch(event::on_validation_start{});
    model_->eval();
    std::map<std::string, double> sums;
    std::int64_t seen = 0;
    {
      torch::NoGradGuard no_grad;
      data::BatchLoader<Dataset> loader(dataset, sampler, 0, 0,
                                        data::SampleContext(loop_.data_seed, loop_.epoch, /*training=*/false),
                                        options_.workers(), options_.prefetch_batches());
      for (std::int64_t b = 0; b < sampler.batches_per_epoch(); ++b) {
        if (with_hooks) dispatch(event::on_validation_batch_start{});
        auto batch = data::to_device(loader.next(), options_.device());
        Metrics batch_metrics = model_->validation_step(batch);
        const std::int64_t n = data::batch_size_of(batch);
        for (const auto& [name, value] : batch_metrics) sums[name] += value * static_cast<double>(n);
        seen += n;
        if (with_hooks) {
          ctx_.batch_metrics_ = std::move(batch_metrics);
          dispatch(event::on_validation_batch_end{});
        }
      }
    }
    model_->train();
    Metrics means;
    for (const auto& [name, sum] : sums) means[name] = seen ? sum / static_cast<double>(seen) : 0.0;
    if (with_hooks) {
      ctx_.metrics_ = means;
      dispatch(event::on_validation_end{});
    }
    return means;
  }

  // ---- saving --------------------------------------------------------------------------------

  void save_to_directory() {
    const ckpt::fs::path directory = options_.checkpoint_dir();
    std::error_code error;
    ckpt::fs::create_directories(directory, error);
    if (error)
      throw ckpt::IoError("create checkpoint directory", directory, error.value());
    ckpt::remove_stale_temporaries(directory);  // left by a process killed while writing
    const std::string name = ckpt::step_file_name(loop_.global_step, Format::extension);
    const ckpt::fs::path path = directory / name;
    const std::string previous_path = ctx_.checkpoint_path_;
    ctx_.checkpoint_path_ = path.string();
    dispatch(event::on_save_checkpoint_start{});
    try {
      save_checkpoint(path);
      ckpt::point_link_atomically(directory / ckpt::last_link_name, name);
    } catch (const ckpt::IoError& e) {
      // The temporary file is gone and the previous checkpoint and last.ckpt are untouched.
      ctx_.checkpoint_path_ = previous_path;
      if (!options_.continue_on_save_error()) throw;
      ++failed_saves_;
      std::cerr << "keel: warning: checkpoint at step " << loop_.global_step << " not saved: " << e.what()
                << "; training continues and the next save retries (continue_on_save_error)\n";
      return;  // still dirty: the next save (or the end of fit) writes this state's successor
    }
    ckpt::rotate(directory,
                 ckpt::Retention{options_.keep_last(), options_.keep_best(), options_.monitor(),
                                 options_.monitor_higher_is_better()},
                 name, Format::extension);
    validation_unsaved_ = false;
    dirty_ = false;
    dispatch(event::on_save_checkpoint_end{});
  }

  std::vector<std::pair<std::string, std::string>> facts() const {
    std::vector<std::pair<std::string, std::string>> out = {
        {"global_step", std::to_string(loop_.global_step)},
        {"epoch", std::to_string(loop_.epoch)},
        {"batch_in_epoch", std::to_string(loop_.batch_in_epoch)},
        {"train_size", std::to_string(train_size_)},
        {"threads", std::to_string(at::get_num_threads())},
        {"keel_version", KEEL_VERSION_STRING},
        {"torch_version", TORCH_VERSION}};
    // The monitored metric of the validation just before this checkpoint ranks it for keep_best.
    if (validation_unsaved_ && !options_.monitor().empty()) {
      if (auto it = ctx_.metrics_.find(options_.monitor()); it != ctx_.metrics_.end()) {
        char value[40];
        std::snprintf(value, sizeof value, "%.17g", it->second);
        out.emplace_back("monitor", options_.monitor());
        out.emplace_back("monitor_value", value);
      }
    }
    return out;
  }

  /// Each section: its name, the type it holds, that type's layout version, and its bytes.
  /// The same list feeds checkpoint files and the state digest.
  template <class Writer>
  void write_sections(Writer& writer) {
    using Out = typename Format::output_archive;
    auto section = [&](const std::string& name, const std::string& type, std::uint32_t version,
                       const auto& value) {
      writer.section(name, type, version, [&](std::ostream& stream) {
        Out archive(stream);
        archive(cereal::make_nvp(name, value));
      });
    };
    section("loop", "keel::LoopState", component_version<LoopState>(), loop_);
    section("model", detail::type_name<Module>(), 1, ModelState::capture(*model_));
    section("optimizer", detail::component_name<Optimizer>(), 1, optimizer_.state());
    section("scheduler", detail::component_name<Scheduler>(), 1, scheduler_);
    for_each_stateful_callback([&](std::size_t index, auto& callback) {
      using C = std::decay_t<decltype(callback)>;
      section(callback_section_name(index), detail::component_name<C>(), component_version<C>(), callback);
    });
    // Captured last, as it is restored last.
    section("rng", "keel::RngState", 1, RngState::capture());
  }

  /// The CEREAL_CLASS_VERSION of C (0 when it declares none).
  template <class C>
  static std::uint32_t component_version() {
    return cereal::detail::Version<C>::version;
  }

  static std::string callback_section_name(std::size_t index) {
    return "callback." + std::to_string(index);
  }

  template <class F>
  void for_each_stateful_callback(F&& f) {
    for_each_stateful_callback(std::forward<F>(f), std::make_index_sequence<std::tuple_size_v<Callbacks>>{});
  }
  template <class F, std::size_t... I>
  void for_each_stateful_callback(F&& f, std::index_sequence<I...>) {
    auto visit = [&](auto index) {
      auto& callback = std::get<decltype(index)::value>(callbacks_);
      if constexpr (!std::is_empty_v<std::decay_t<decltype(callback)>>) f(decltype(index)::value, callback);
    };
    static_cast<void>(visit);  // unused when there are no callbacks
    (visit(std::integral_constant<std::size_t, I>{}), ...);
  }

  // ---- loading -------------------------------------------------------------------------------

  void resume_as_configured() {
    if (resume_handled_) return;
    resume_handled_ = true;
    const std::string& resume = options_.resume();
    if (resume == "never") return;
    if (resume == "auto") {
      if (auto path = resume_latest(options_.checkpoint_dir()))
        std::cerr << "keel: resumed from " << path->string() << " (epoch " << loop_.epoch << ", step "
                  << loop_.global_step << ")\n";
      return;
    }
    load_checkpoint(resume);
    std::cerr << "keel: resumed from " << resume << " (epoch " << loop_.epoch << ", step "
              << loop_.global_step << ")\n";
  }

  /// Parses one section into `value`; a failure becomes a problem line.
  template <class T>
  bool read_section(const ckpt::Container& container, const std::string& name,
                    const std::string& expected_type, T& value, std::vector<std::string>& problems) {
    const ckpt::SectionInfo* info = container.manifest.find(name);
    if (!info) {
      problems.push_back("section '" + name + "' (" + expected_type + ") is missing");
      return false;
    }
    if (info->type != expected_type) {
      problems.push_back("section '" + name + "' holds " + info->type + " but this run uses " + expected_type);
      return false;
    }
    try {
      ckpt::parse_section<Format>(container, *info, value);
    } catch (const std::exception& e) {
      problems.push_back(e.what());
      return false;
    }
    return true;
  }

  void apply_checkpoint(const ckpt::Container& container, const std::string& path) {
    std::vector<std::string> problems;
    std::vector<std::string> warnings;
    std::vector<std::function<void()>> commits;

    if (container.manifest.format != Format::keel_name)
      problems.push_back(std::string("was written in format ") + container.manifest.format +
                         " but this Trainer uses " + Format::keel_name);
    for (auto& line : fingerprint().differences_from(container.manifest.fingerprint))
      problems.push_back(std::move(line));

    auto loop = std::make_shared<LoopState>();
    if (read_section(container, "loop", "keel::LoopState", *loop, problems)) {
      if (loop->micro_batch != 0)
        problems.push_back("section 'loop' is inside a gradient-accumulation window (micro-batch " +
                           std::to_string(loop->micro_batch) + "); keel writes checkpoints only at "
                           "optimizer-step boundaries");
      if (loop->epoch < 0 || loop->global_step < 0 || loop->batch_in_epoch < 0)
        problems.push_back("section 'loop' holds a negative position");
      commits.push_back([this, loop] { loop_ = *loop; });
    }

    auto model_state = std::make_shared<ModelState>();
    if (read_section(container, "model", detail::type_name<Module>(), *model_state, problems)) {
      for (auto& line : model_state->check(*model_)) problems.push_back(std::move(line));
      commits.push_back([this, model_state] { model_state->apply(*model_); });
    }

    auto optimizer_state = std::make_shared<optim::OptimizerState>();
    if (read_section(container, "optimizer", detail::component_name<Optimizer>(), *optimizer_state, problems)) {
      for (auto& line : optimizer_.check(*optimizer_state)) problems.push_back(std::move(line));
      commits.push_back([this, optimizer_state] { optimizer_.apply(*optimizer_state); });
    }

    auto scheduler = std::make_shared<Scheduler>(scheduler_);
    if (read_section(container, "scheduler", detail::component_name<Scheduler>(), *scheduler, problems)) {
      if (scheduler->base_lrs().size() != optimizer_.group_count())
        problems.push_back("section 'scheduler' holds " + std::to_string(scheduler->base_lrs().size()) +
                           " base learning rates for " + std::to_string(optimizer_.group_count()) +
                           " param groups");
      commits.push_back([this, scheduler] { scheduler_ = *scheduler; });
    }

    std::size_t expected_sections = 5;
    for_each_stateful_callback([&](std::size_t index, auto& callback) {
      using C = std::decay_t<decltype(callback)>;
      ++expected_sections;
      std::shared_ptr<C> staged;
      if constexpr (std::is_copy_constructible_v<C>) {
        staged = std::make_shared<C>(callback);
      } else {
        staged = std::make_shared<C>();
      }
      if (read_section(container, callback_section_name(index), detail::component_name<C>(), *staged, problems)) {
        if constexpr (std::is_copy_constructible_v<C> && std::is_move_assignable_v<C>) {
          commits.push_back([&callback, staged] { callback = std::move(*staged); });
        } else {
          // Not assignable: parse again into the live object (the bytes parsed once already).
          const std::string name = callback_section_name(index);
          commits.push_back([this, &container, &callback, name] {
            std::vector<std::string> ignored;
            read_section(container, name, detail::component_name<C>(), callback, ignored);
          });
        }
      }
    });

    auto rng = std::make_shared<RngState>();
    if (read_section(container, "rng", "keel::RngState", *rng, problems))
      for (auto& line : rng->check(warnings)) problems.push_back(std::move(line));

    if (container.manifest.sections.size() != expected_sections)
      for (const auto& s : container.manifest.sections)
        if (!is_expected_section(s.name))
          problems.push_back("unexpected section '" + s.name + "' (" + s.type + ") that this Trainer does not have");

    // The training set size it was written with (checked against the dataset when fit starts).
    std::int64_t saved_train_size = 0;
    const std::string train_size = container.manifest.fact("train_size");
    if (!train_size.empty() && !parse_count(train_size, saved_train_size))
      problems.push_back("its manifest holds an invalid training set size '" + train_size + "'");

    if (!problems.empty()) throw CheckpointError(path, problems);

    const std::string saved_threads = container.manifest.fact("threads");
    if (!saved_threads.empty() && saved_threads != std::to_string(at::get_num_threads()))
      warnings.push_back("the checkpoint was written with " + saved_threads + " intra-op threads and this run "
                         "uses " + std::to_string(at::get_num_threads()) + ": the continuation is faithful "
                         "but not bitwise identical to an uninterrupted run (set the same thread count)");
    for (const auto& line : warnings) std::cerr << "keel: warning: " << path << ": " << line << "\n";

    for (auto& commit : commits) commit();
    rng->apply();  // last: nothing after this draws from the restored streams
    loaded_train_size_ = saved_train_size > 0 ? std::optional<std::int64_t>(saved_train_size) : std::nullopt;
    ctx_.lr_ = optimizer_.lr(0);
    ctx_.stop_request_ = loop_.stop_requested;
    dirty_ = false;
    resume_handled_ = true;
    ctx_.checkpoint_path_ = path;
    dispatch(event::on_load_checkpoint{});
  }

  static bool parse_count(const std::string& text, std::int64_t& out) {
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) return false;
    out = std::stoll(text);
    return true;
  }

  bool is_expected_section(const std::string& name) {
    if (name == "loop" || name == "model" || name == "optimizer" || name == "scheduler" || name == "rng")
      return true;
    bool found = false;
    for_each_stateful_callback([&](std::size_t index, auto&) { found = found || name == callback_section_name(index); });
    return found;
  }

  // Declaration order is construction order: the optimizer needs the model, the scheduler the
  // optimizer, and the context the loop state and the model.
  TrainerOptions options_;
  std::shared_ptr<Module> model_;
  Optimizer optimizer_;
  Scheduler scheduler_;
  Callbacks callbacks_;
  LoopState loop_;
  Context ctx_;
  torch::Tensor window_loss_;
  std::int64_t train_size_ = 0;
  std::optional<std::int64_t> loaded_train_size_;
  std::unique_ptr<ckpt::DirectoryLock> directory_lock_;  // held from the first fit on
  bool dirty_ = false;  // state changed since the last checkpoint
  bool window_nonfinite_ = false;    // a loss of the current accumulation window was not finite
  bool validation_unsaved_ = false;  // a validation ran since the last checkpoint
  bool watching_signals_ = false;  // a StopSignalGuard is installed (inside fit)
  std::int64_t failed_saves_ = 0;  // saves skipped under continue_on_save_error
  bool resume_handled_ = false;
};

}  // namespace keel
