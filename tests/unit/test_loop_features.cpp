// Loop features in one process: gradient clipping (by norm, by value, the norm reported),
// validation every N steps and every N epochs, schedulers that step per epoch or on
// validation metrics, bf16 autocast, dynamic loss scaling, the wall-time limit, the
// exponential moving average of the weights, the optimizers RMSprop and Adagrad in a Trainer,
// param groups, policies chosen at run time (OneOf, Optional) and the learning-rate monitor.
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace loop_features_test {

using keel_test::SyntheticImages;

/// A linear model without randomness or batch statistics: an SGD step moves the weights by
/// exactly lr times the (clipped) gradient.
struct LinearImpl : torch::nn::Module {
  LinearImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return 30.0 * torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target);  // large gradients
  }
  keel::Metrics validation_step(const keel::data::Example& b) {
    return {{"val_loss", torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target).item<double>()}};
  }
  BOOST_HANA_DEFINE_STRUCT(LinearImpl, (torch::nn::Linear, fc));
};

/// Records, per optimizer step, the reported norm and how far the parameters moved.
struct StepProbe {
  std::vector<double> norms, moved_norm, moved_max;
  std::vector<torch::Tensor> before;  // not state: refilled at every step start
  template <class A>
  void serialize(A& a) {
    a(norms, moved_norm, moved_max);
  }
  void on_optimizer_step_start(keel::Context& ctx) {
    before.clear();
    for (const auto& p : ctx.model().parameters()) before.push_back(p.detach().clone());
  }
  void on_optimizer_step_end(keel::Context& ctx) {
    norms.push_back(ctx.grad_norm());
    double squares = 0.0, largest = 0.0;
    const auto params = ctx.model().parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto delta = (params[i].detach() - before[i]).to(torch::kFloat64);
      squares += delta.pow(2).sum().item<double>();
      largest = std::max(largest, delta.abs().max().item<double>());
    }
    moved_norm.push_back(std::sqrt(squares));
    moved_max.push_back(largest);
  }
};

using Clipped = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<StepProbe>>;

TEST_CASE("clip_grad_norm bounds the step and reports the norm before clipping") {
  SyntheticImages data(64, 3);
  const double lr = 0.01, max_norm = 0.5;
  Clipped trainer(keel::TrainerOptions().max_epochs(10).max_steps(6).batch_size(16).accumulate(2).clip_grad_norm(max_norm),
                  torch::optim::SGDOptions(lr));
  trainer.fit(data);
  const auto& probe = trainer.callback<StepProbe>();
  REQUIRE(probe.norms.size() == 6);
  for (std::size_t i = 0; i < probe.norms.size(); ++i) {
    CAPTURE(i);
    CHECK(probe.norms[i] > max_norm);  // the gradients are large: every step was clipped
    CHECK(probe.moved_norm[i] / lr == doctest::Approx(max_norm).epsilon(1e-3));
  }
  // Without clipping no norm is computed, and the step is the whole gradient.
  Clipped plain(keel::TrainerOptions().max_steps(1).batch_size(16), torch::optim::SGDOptions(lr));
  plain.fit(data);
  CHECK(std::isnan(plain.callback<StepProbe>().norms.at(0)));
  CHECK(plain.callback<StepProbe>().moved_norm.at(0) / lr > max_norm);
}

TEST_CASE("clip_grad_value clamps every entry and reports the norm before clamping") {
  SyntheticImages data(64, 3);
  const double lr = 0.01, value = 1e-3;
  Clipped trainer(keel::TrainerOptions().max_steps(3).batch_size(16).clip_grad_value(value), torch::optim::SGDOptions(lr));
  trainer.fit(data);
  const auto& probe = trainer.callback<StepProbe>();
  for (std::size_t i = 0; i < probe.norms.size(); ++i) {
    CAPTURE(i);
    CHECK(probe.moved_max[i] / lr <= value * (1 + 1e-3));  // (float32 weights: the move is rounded)
    CHECK(probe.moved_max[i] / lr == doctest::Approx(value).epsilon(1e-3));  // some entry was clamped
    CHECK(probe.norms[i] > probe.moved_norm[i] / lr);
  }
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().clip_grad_norm(1.0).clip_grad_value(1.0).validate(),
                       doctest::Contains("set clip_grad_norm or clip_grad_value, not both"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().clip_grad_norm(-1.0).validate(),
                       doctest::Contains("clip_grad_norm must be >= 0 (0: off), got -1"), keel::ConfigError);
}

/// Records the global step of every validation.
struct ValidationSteps {
  std::vector<std::int64_t> at;
  template <class A>
  void serialize(A& a) {
    a(at);
  }
  void on_validation_end(keel::Context& ctx) { at.push_back(ctx.global_step()); }
};
using Validated = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<ValidationSteps>>;

TEST_CASE("validation every N steps and every N epochs, never twice for one step") {
  SyntheticImages train(208, 5), validation(32, 6);  // 13 steps per epoch in batches of 16
  auto steps_validated = [&](keel::TrainerOptions options) {
    Validated trainer(options.batch_size(16).max_epochs(2), torch::optim::SGDOptions(0.01));
    trainer.fit(train, validation);
    return trainer.callback<ValidationSteps>().at;
  };
  CHECK(steps_validated(keel::TrainerOptions()) == std::vector<std::int64_t>{13, 26});
  CHECK(steps_validated(keel::TrainerOptions().validate_every_steps(5)) ==
        std::vector<std::int64_t>{5, 10, 13, 15, 20, 25, 26});
  // The epoch's last step is validated once, by the step rule.
  CHECK(steps_validated(keel::TrainerOptions().validate_every_steps(13)) == std::vector<std::int64_t>{13, 26});
  CHECK(steps_validated(keel::TrainerOptions().validate_every_epochs(2)) == std::vector<std::int64_t>{26});
  CHECK(steps_validated(keel::TrainerOptions().validate_every_epochs(0).validate_every_steps(10)) ==
        std::vector<std::int64_t>{10, 20});
}

TEST_CASE("a scheduler of the epoch interval steps once per epoch inside the Trainer") {
  SyntheticImages train(64, 5);
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::scheduler<keel::sched::StepLR>> trainer(
      keel::TrainerOptions().max_epochs(3).batch_size(16), torch::optim::SGDOptions(0.1),
      keel::sched::StepLROptions(1, 0.5).interval(keel::sched::Interval::epoch));
  trainer.fit(train);
  CHECK(trainer.scheduler().steps() == 3);
  CHECK(trainer.optimizer().lr(0) == doctest::Approx(0.1 * 0.125));
}

TEST_CASE("a fork may not change a scheduler's interval: its saved step count would change unit") {
  SyntheticImages train(64, 5);
  const auto dir = std::filesystem::temp_directory_path() / ("keel-interval-fork-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  using Stepped = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::scheduler<keel::sched::StepLR>>;
  auto options = [&] { return keel::TrainerOptions().max_epochs(2).batch_size(16).checkpoint_dir(dir.string()).resume("auto"); };
  {
    Stepped per_epoch(options(), torch::optim::SGDOptions(0.1), keel::sched::StepLROptions(1, 0.5).interval(keel::sched::Interval::epoch));
    per_epoch.fit(train);
  }
  Stepped per_step(options().max_epochs(3).allow_changes({"*"}), torch::optim::SGDOptions(0.1), keel::sched::StepLROptions(1, 0.5));
  CHECK_THROWS_WITH_AS(per_step.fit(train), doctest::Contains("the scheduler's saved step count is in epochs"),
                       keel::CheckpointError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("ReduceLROnPlateau steps on validation, and refuses a fit without a validation set") {
  SyntheticImages train(64, 5), validation(32, 6);
  using Plateau = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>,
                                keel::scheduler<keel::sched::ReduceLROnPlateau>>;
  // lr 0: the model never changes, so the loss never improves after the first validation.
  Plateau stuck(keel::TrainerOptions().max_epochs(4).batch_size(16), torch::optim::SGDOptions(0.0),
                keel::sched::ReduceLROnPlateauOptions("val_loss").patience(0).factor(0.5));
  CHECK_THROWS_WITH_AS(stuck.fit(train), doctest::Contains("steps on validation metrics, and fit() was given no validation set"),
                       keel::ConfigError);
  Plateau never_validated(keel::TrainerOptions().max_epochs(4).batch_size(16).validate_every_epochs(0),
                          torch::optim::SGDOptions(0.0), keel::sched::ReduceLROnPlateauOptions("val_loss"));
  CHECK_THROWS_WITH_AS(never_validated.fit(train, validation),
                       doctest::Contains("validate_every_epochs and validate_every_steps are both 0"), keel::ConfigError);
  Plateau trainer(keel::TrainerOptions().max_epochs(4).batch_size(16), torch::optim::SGDOptions(1e-6),
                  keel::sched::ReduceLROnPlateauOptions("val_loss").patience(0).factor(0.5).threshold(0.5));
  trainer.fit(train, validation);
  // threshold 0.5 (relative) and a rate too small to halve the loss: only the first validation
  // improves (on infinity); patience 0 halves the rate at each of the other three.
  CHECK(trainer.scheduler().steps() == 4);
  CHECK(trainer.optimizer().lr(0) == doctest::Approx(1e-6 / 8));
}

/// Records the dtype of its logits, the part of the forward pass that autocast changes.
c10::ScalarType logits_dtype = c10::kFloat;
struct DtypeProbeImpl : torch::nn::Module {
  DtypeProbeImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    auto logits = fc(b.data.flatten(1));
    logits_dtype = logits.scalar_type();
    return torch::nn::functional::cross_entropy(logits, b.target);
  }
  BOOST_HANA_DEFINE_STRUCT(DtypeProbeImpl, (torch::nn::Linear, fc));
};

TEST_CASE("bf16 autocast runs the forward pass in bfloat16, keeps the weights in float32, and ends with the fit") {
  SyntheticImages train(64, 5);
  keel::Trainer<keel::model<DtypeProbeImpl>, keel::optimizer<keel::optim::SGD>> trainer(
      keel::TrainerOptions().max_steps(2).batch_size(16).precision(keel::Precision::bf16), torch::optim::SGDOptions(0.1));
  trainer.fit(train);
  CHECK(std::string(c10::toString(logits_dtype)) == "BFloat16");
  CHECK(std::string(c10::toString(trainer.model()->fc->weight.scalar_type())) == "Float");
  CHECK(std::string(c10::toString(trainer.model()->fc->weight.grad().scalar_type())) == "Float");
  CHECK_FALSE(keel::detail::autocast_enabled(c10::DeviceType::CPU));  // restored after the forward passes
  keel::Trainer<keel::model<DtypeProbeImpl>, keel::optimizer<keel::optim::SGD>> fp32(
      keel::TrainerOptions().max_steps(1).batch_size(16), torch::optim::SGDOptions(0.1));
  fp32.fit(train);
  CHECK(std::string(c10::toString(logits_dtype)) == "Float");
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().precision(keel::Precision::fp16).validate(),
                       doctest::Contains("precision fp16 needs a CUDA device"), keel::ConfigError);
}

TEST_CASE("WallTimeLimit stops at a step boundary with a checkpoint, counts time across resumes, and a fork raises it") {
  SyntheticImages train(64, 5);
  const auto dir = std::filesystem::temp_directory_path() / ("keel-walltime-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  using Timed = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<keel::WallTimeLimit>>;
  double first_trained = 0.0;
  auto options = [&] {
    return keel::TrainerOptions().max_epochs(5).batch_size(16).checkpoint_dir(dir.string()).resume("auto").keep_last(0);
  };
  {
    Timed trainer(options(), torch::optim::SGDOptions(0.01), keel::WallTimeLimit(1e-9));  // reached at once
    trainer.fit(train);
    CHECK(trainer.loop().global_step == 1);  // stopped after the first step
    CHECK(trainer.loop().stop_requested);
    CHECK(std::filesystem::exists(dir / keel::ckpt::step_file_name(1)));
    first_trained = trainer.callback<keel::WallTimeLimit>().trained_seconds();
    CHECK(first_trained > 0.0);
  }
  {
    Timed again(options(), torch::optim::SGDOptions(0.01), keel::WallTimeLimit(1e-9));
    again.fit(train);
    CHECK(again.loop().global_step == 1);  // the limit is spent: nothing more
    CHECK(again.callback<keel::WallTimeLimit>().trained_seconds() == first_trained);  // the saved time came back
  }
  {
    Timed longer(options().allow_changes({"callback.0.seconds"}), torch::optim::SGDOptions(0.01), keel::WallTimeLimit(3600));
    longer.fit(train);
    CHECK(longer.loop().global_step == 20);  // a fork with a higher limit trains to the end
  }
  CHECK_THROWS_WITH_AS(keel::WallTimeLimit(-1.0), doctest::Contains("seconds must be >= 0"), keel::ConfigError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("deterministic(true) turns on LibTorch's deterministic algorithms for the process") {
  REQUIRE_FALSE(at::globalContext().deterministicAlgorithms());
  SyntheticImages train(32, 5);
  {
    keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>> trainer(
        keel::TrainerOptions().max_steps(1).batch_size(16).deterministic(true), torch::optim::SGDOptions(0.1));
    CHECK(at::globalContext().deterministicAlgorithms());
    trainer.fit(train);  // keel's own path has no operation without a deterministic implementation
  }
  at::globalContext().setDeterministicAlgorithms(false, false);  // process-wide: leave it as found
}

TEST_CASE("RMSprop and Adagrad train in a Trainer and save their state by parameter name") {
  SyntheticImages train(64, 5);
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::RMSprop>> rmsprop(
      keel::TrainerOptions().max_steps(3).batch_size(16), torch::optim::RMSpropOptions(1e-3).momentum(0.9).centered(true));
  rmsprop.fit(train);
  const auto rms_state = rmsprop.optimizer().state();
  REQUIRE(rms_state.params.size() == 2);
  CHECK(rms_state.params[0].name == "fc.weight");
  CHECK(rms_state.params[0].step == 3);
  for (const auto& named : rms_state.params[0].tensors) {
    CAPTURE(named.first);  // (no structured binding: clang 14 cannot capture one)
    CHECK(named.second.defined());  // momentum and centering: all three are in use
  }
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::Adagrad>> adagrad(
      keel::TrainerOptions().max_steps(2).batch_size(16), torch::optim::AdagradOptions(1e-2));
  adagrad.fit(train);
  const auto ada_state = adagrad.optimizer().state();
  REQUIRE(ada_state.params.size() == 2);
  CHECK(ada_state.params[1].name == "fc.bias");
  CHECK(ada_state.params[1].step == 2);
  CHECK(ada_state.params[1].tensors.at(0).first == "sum");
  CHECK(ada_state.params[1].tensors.at(0).second.sum().item<double>() > 0.0);
}

/// Parameters of a module, cloned.
std::vector<torch::Tensor> weights_of(const torch::nn::Module& module) {
  std::vector<torch::Tensor> out;
  for (const auto& p : module.parameters()) out.push_back(p.detach().clone());
  return out;
}
bool same_tensors(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

using Scaled = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<StepProbe>>;

TEST_CASE("dynamic loss scaling: a power-of-two scale changes no weight, and the scale grows every N good steps") {
  SyntheticImages train(64, 5);
  auto options = [] { return keel::TrainerOptions().max_epochs(10).max_steps(6).batch_size(16).accumulate(2); };
  keel::seed_everything(3);
  Scaled plain(options(), torch::optim::SGDOptions(0.01).momentum(0.9));
  plain.fit(train);
  keel::seed_everything(3);
  Scaled scaled(options().loss_scaling(keel::LossScaling().init_scale(1024).growth_interval(2)),
                torch::optim::SGDOptions(0.01).momentum(0.9));
  scaled.fit(train);
  // Multiplying by 2^k and dividing again is exact in binary floating point (short of overflow).
  CHECK(same_tensors(weights_of(*plain.model()), weights_of(*scaled.model())));
  CHECK(scaled.loop().loss_scale.scale == 1024.0 * 8);  // doubled after steps 2, 4 and 6
  CHECK(scaled.loop().loss_scale.growth_tracker == 0);
  CHECK(scaled.loop().loss_scale.skipped_steps == 0);
  CHECK(plain.loop().loss_scale.scale == 0.0);  // no scaling: no scale
}

TEST_CASE("dynamic loss scaling: an overflowing scale skips the step and backs off; the scaler's state resumes exactly") {
  SyntheticImages train(64, 5);
  const auto dir = std::filesystem::temp_directory_path() / ("keel-lossscale-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const double huge = std::ldexp(1.0, 126);  // loss * 2^126 overflows float32: infinite gradients
  auto options = [&](std::int64_t steps) {
    return keel::TrainerOptions().max_epochs(10).max_steps(steps).batch_size(16).loss_scaling(
        keel::LossScaling().init_scale(huge).growth_interval(3).backoff_factor(0.25));
  };
  keel::seed_everything(4);
  Scaled whole(options(14), torch::optim::SGDOptions(0.01));
  const auto initial = weights_of(*whole.model());
  whole.fit(train);
  const auto& scale = whole.loop().loss_scale;
  const auto& probe = whole.callback<StepProbe>();
  REQUIRE(probe.moved_norm.size() == 14);
  const std::int64_t skipped = scale.skipped_steps;
  REQUIRE(skipped > 0);
  REQUIRE(skipped < 14);
  CHECK(probe.moved_norm[0] == 0.0);  // 2^126 overflows at once
  // Replays the scaler from the steps that moved nothing (skipped) and those that moved: backed
  // off by 0.25 per skip, grown by 2 after every 3 good steps in a row.
  double expected = huge;
  std::int64_t tracker = 0, zero_steps = 0;
  for (std::int64_t i = 0; i < 14; ++i) {
    if (probe.moved_norm[i] == 0.0) {
      expected *= 0.25;
      tracker = 0;
      ++zero_steps;
    } else if (++tracker == 3) {
      expected *= 2.0;
      tracker = 0;
    }
  }
  CHECK(zero_steps == skipped);
  CHECK(scale.scale == expected);
  CHECK(scale.growth_tracker == tracker);
  CHECK(whole.loop().skipped_steps == 0);  // overflows are the scaler's, not on_nonfinite's
  CHECK_FALSE(same_tensors(initial, weights_of(*whole.model())));

  // Stopped mid-way and resumed: the same state, byte for byte.
  keel::seed_everything(4);
  {
    Scaled first(options(7).checkpoint_dir(dir.string()).keep_last(0), torch::optim::SGDOptions(0.01));
    first.fit(train);
  }  // (a Trainer holds its checkpoint directory until it is destroyed)
  Scaled second(options(14).checkpoint_dir(dir.string()).resume("auto"), torch::optim::SGDOptions(0.01));
  second.fit(train);
  CHECK(second.loop().loss_scale.scale == scale.scale);
  CHECK(second.state_digest() == whole.state_digest());
  std::filesystem::remove_all(dir);

  CHECK_THROWS_WITH_AS(keel::TrainerOptions().loss_scaling(keel::LossScaling().growth_factor(1.0)).validate(),
                       doctest::Contains("growth_factor must be > 1"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().loss_scaling(keel::LossScaling().backoff_factor(1.5)).validate(),
                       doctest::Contains("backoff_factor must be in (0, 1)"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().loss_scaling(keel::LossScaling().init_scale(0)).validate(),
                       doctest::Contains("init_scale must be positive"), keel::ConfigError);
}

/// A finite loss whose gradient is NaN (the derivative of sqrt at 0, times 0): a NaN no loss
/// scale causes or cures.
struct NanGradientImpl : torch::nn::Module {
  NanGradientImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    const auto zero = fc->weight.sum() - fc->weight.sum().detach();
    return torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target) + 0.0 * torch::sqrt(zero);
  }
  BOOST_HANA_DEFINE_STRUCT(NanGradientImpl, (torch::nn::Linear, fc));
};

TEST_CASE("dynamic loss scaling: gradients still not finite after max_backoffs_in_a_row back-offs go to on_nonfinite") {
  SyntheticImages train(64, 5);
  using Nan = keel::Trainer<keel::model<NanGradientImpl>, keel::optimizer<keel::optim::SGD>>;
  auto options = [] {
    return keel::TrainerOptions().max_epochs(10).max_steps(8).batch_size(16).loss_scaling(
        keel::LossScaling().init_scale(1024).max_backoffs_in_a_row(3));
  };
  Nan stopping(options(), torch::optim::SGDOptions(0.01));
  CHECK_THROWS_WITH_AS(stopping.fit(train), doctest::Contains("the gradient of 'fc.weight' is not finite"), keel::NonFiniteError);
  CHECK(stopping.loop().global_step == 3);  // three back-offs, then the fourth step stops
  CHECK(stopping.loop().loss_scale.scale == 128.0);
  CHECK(stopping.loop().loss_scale.skipped_steps == 3);

  Nan skipping(options().on_nonfinite(keel::NonFinitePolicy::skip_step), torch::optim::SGDOptions(0.01));
  skipping.fit(train);
  CHECK(skipping.loop().global_step == 8);
  CHECK(skipping.loop().loss_scale.skipped_steps == 3);  // the scale's doing: 3
  CHECK(skipping.loop().skipped_steps == 5);             // on_nonfinite's: the rest
  CHECK(skipping.loop().loss_scale.scale == 128.0);      // no more back-offs
}

/// Reports the sum of its weights as a validation metric: which weights validation ran on.
struct WeightSumImpl : torch::nn::Module {
  WeightSumImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target);
  }
  keel::Metrics validation_step(const keel::data::Example&) {
    return {{"weight_sum", fc->weight.to(torch::kFloat64).sum().item<double>()}};
  }
  BOOST_HANA_DEFINE_STRUCT(WeightSumImpl, (torch::nn::Linear, fc));
};

/// Records the validation metrics it sees.
struct MetricsProbe {
  std::vector<double> weight_sums;
  template <class A>
  void serialize(A& a) {
    a(weight_sums);
  }
  void on_validation_end(keel::Context& ctx) { weight_sums.push_back(ctx.metrics().at("weight_sum")); }
};

TEST_CASE("EMA averages the weights, validates on the average, leaves training untouched, and resumes exactly") {
  SyntheticImages train(64, 5), validation(32, 6);
  using Averaged = keel::Trainer<keel::model<WeightSumImpl>, keel::optimizer<keel::optim::SGD>,
                                 keel::callbacks<keel::EMA, MetricsProbe>>;
  using Plain = keel::Trainer<keel::model<WeightSumImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<MetricsProbe>>;
  auto options = [](std::int64_t steps) {
    return keel::TrainerOptions().max_epochs(10).max_steps(steps).batch_size(16).validate_every_steps(2);
  };

  // One step with decay 0.5: the average is exactly half the old weights plus half the new.
  keel::seed_everything(5);
  Averaged one(options(1), torch::optim::SGDOptions(0.1), keel::EMA(0.5));
  const auto before = weights_of(*one.model());
  one.fit(train, validation);
  const auto after = weights_of(*one.model());
  const auto& average = one.callback<keel::EMA>().average();
  REQUIRE(average.parameters.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) CHECK(torch::equal(average.parameters[i].tensor, before[i].mul(0.5).add(after[i], 0.5)));
  CHECK(one.callback<keel::EMA>().updates() == 1);

  // Validation sees the average; training goes on with the live weights, bit for bit as without EMA.
  keel::seed_everything(5);
  Averaged ema(options(8), torch::optim::SGDOptions(0.1), keel::EMA(0.9));
  ema.fit(train, validation);
  keel::seed_everything(5);
  Plain plain(options(8), torch::optim::SGDOptions(0.1));
  plain.fit(train, validation);
  CHECK(same_tensors(weights_of(*ema.model()), weights_of(*plain.model())));
  const auto& averaged_sums = ema.callback<MetricsProbe>().weight_sums;
  const auto& live_sums = plain.callback<MetricsProbe>().weight_sums;
  REQUIRE(averaged_sums.size() == live_sums.size());
  REQUIRE(averaged_sums.size() >= 4);
  CHECK(averaged_sums.back() ==
        ema.callback<keel::EMA>().average().parameters.at(0).tensor.to(torch::kFloat64).sum().item<double>());
  CHECK(averaged_sums.back() != live_sums.back());
  // apply_to copies the average into a module of one's own.
  WeightSumImpl copy;
  ema.callback<keel::EMA>().apply_to(copy);
  CHECK(torch::equal(copy.fc->weight, ema.callback<keel::EMA>().average().parameters.at(0).tensor));

  // Stopped at step 3 and resumed: the same state, the average included.
  const auto dir = std::filesystem::temp_directory_path() / ("keel-ema-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  keel::seed_everything(5);
  {
    Averaged first(options(3).checkpoint_dir(dir.string()).keep_last(0), torch::optim::SGDOptions(0.1), keel::EMA(0.9));
    first.fit(train, validation);
  }
  Averaged second(options(8).checkpoint_dir(dir.string()).resume("auto"), torch::optim::SGDOptions(0.1), keel::EMA(0.9));
  second.fit(train, validation);
  CHECK(second.state_digest() == ema.state_digest());
  std::filesystem::remove_all(dir);

  CHECK_THROWS_WITH_AS(keel::EMA(1.0), doctest::Contains("decay must be in [0, 1)"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::EMA(0.99, 0), doctest::Contains("every_n_steps must be positive"), keel::ConfigError);
}

using GroupedTrainer = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                     keel::scheduler<keel::sched::CosineAnnealingLR>>;

std::vector<std::string> names_in_group(GroupedTrainer& trainer, std::size_t group) {
  std::map<const void*, std::string> names;
  for (const auto& item : trainer.model()->named_parameters()) names[item.value().unsafeGetTensorImpl()] = item.key();
  std::vector<std::string> out;
  for (const auto& p : trainer.optimizer().torch_optimizer().param_groups().at(group).params())
    out.push_back(names[p.unsafeGetTensorImpl()]);
  return out;
}
double weight_decay_of(GroupedTrainer& trainer, std::size_t group) {
  return static_cast<const torch::optim::AdamWOptions&>(trainer.optimizer().torch_optimizer().param_groups().at(group).options())
      .weight_decay();
}

TEST_CASE("param groups: no weight decay for biases and norms, a learning rate of their own, saved and matched by name") {
  namespace optim = keel::optim;
  SyntheticImages train(64, 5);
  const auto dir = std::filesystem::temp_directory_path() / ("keel-groups-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto no_decay = [] { return optim::ParamGroup("no_decay", optim::bias_or_norm).set("weight_decay", 0.0); };
  const auto head = [] { return optim::ParamGroup("head", optim::name_contains("fc.weight")).set("lr", 3e-4); };
  auto options = [&](std::int64_t steps) {
    return keel::TrainerOptions().max_epochs(10).max_steps(steps).batch_size(16).checkpoint_dir(dir.string()).keep_last(0);
  };
  keel::seed_everything(6);
  GroupedTrainer grouped(options(5), torch::optim::AdamWOptions(1e-3).weight_decay(0.1), keel::sched::CosineAnnealingLROptions(20),
                         optim::ParamGroups({no_decay(), head()}));
  auto& optimizer = grouped.optimizer();
  REQUIRE(optimizer.group_count() == 3);
  CHECK(optimizer.group_name(0) == "default");
  CHECK(optimizer.group_name(1) == "no_decay");
  CHECK(optimizer.group_name(2) == "head");
  CHECK(names_in_group(grouped, 0) == std::vector<std::string>{"conv.weight"});
  CHECK(names_in_group(grouped, 1) == std::vector<std::string>{"conv.bias", "bn.weight", "bn.bias", "fc.bias"});
  CHECK(names_in_group(grouped, 2) == std::vector<std::string>{"fc.weight"});
  CHECK(weight_decay_of(grouped, 0) == 0.1);
  CHECK(weight_decay_of(grouped, 1) == 0.0);
  CHECK(weight_decay_of(grouped, 2) == 0.1);
  grouped.fit(train);
  // The scheduler drives every group from its own base rate.
  CHECK(optimizer.lr(2) / optimizer.lr(0) == doctest::Approx(0.3).epsilon(1e-12));
  CHECK(optimizer.lr(1) == optimizer.lr(0));
  CHECK(optimizer.lr(0) < 1e-3);
  const auto saved = optimizer.state();
  REQUIRE(saved.groups.size() == 3);
  CHECK(saved.groups[1].name == "no_decay");
  const auto entries = grouped.fingerprint().entries();
  auto entry = [&](const std::string& key) {
    for (const auto& e : entries)
      if (e.first == key) return e.second;
    return std::string("(absent)");
  };
  CHECK(entry("optimizer.groups") == "default,no_decay,head");
  CHECK(entry("optimizer.group.no_decay.weight_decay") == "0");
  CHECK(entry("optimizer.group.head.lr") == "0.0003");
  const auto file = dir / keel::ckpt::step_file_name(5);
  REQUIRE(std::filesystem::exists(file));

  // Loaded by name into a run with the same groups: training continues exactly as it would have.
  keel::seed_everything(6);
  GroupedTrainer whole(options(9).checkpoint_dir(""), torch::optim::AdamWOptions(1e-3).weight_decay(0.1),
                       keel::sched::CosineAnnealingLROptions(20), optim::ParamGroups({no_decay(), head()}));
  whole.fit(train);
  GroupedTrainer resumed(options(9).checkpoint_dir("").resume(file.string()), torch::optim::AdamWOptions(1e-3).weight_decay(0.1),
                         keel::sched::CosineAnnealingLROptions(20), optim::ParamGroups({no_decay(), head()}));
  resumed.fit(train);
  CHECK(resumed.loop().global_step == 9);
  CHECK(resumed.state_digest() == whole.state_digest());
  CHECK(resumed.optimizer().lr(2) / resumed.optimizer().lr(0) == doctest::Approx(0.3).epsilon(1e-12));

  // The same groups in another order: refused (the scheduler's state follows the group order).
  GroupedTrainer reordered(options(9).checkpoint_dir("").resume(file.string()).allow_changes({"optimizer.*"}),
                           torch::optim::AdamWOptions(1e-3).weight_decay(0.1), keel::sched::CosineAnnealingLROptions(20),
                           optim::ParamGroups({head(), no_decay()}));
  CHECK_THROWS_WITH(reordered.fit(train), doctest::Contains("optimizer param groups are in another order in the checkpoint "
                                                            "(default, no_decay, head) than in this run (default, head, no_decay)"));

  // Without the groups (even as an allowed change), the checkpoint's are named in the refusal.
  GroupedTrainer plain(options(9).checkpoint_dir("").resume(file.string()).allow_changes({"optimizer.*"}),
                       torch::optim::AdamWOptions(1e-3).weight_decay(0.1),
                       keel::sched::CosineAnnealingLROptions(20));
  CHECK_THROWS_WITH(plain.fit(train), doctest::Contains("optimizer param group 'no_decay' is in the checkpoint but not in this run"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("param groups: mistakes are refused with what to do") {
  namespace optim = keel::optim;
  using Trainer = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::optimizer<keel::optim::SGD>>;
  auto make = [](optim::ParamGroups groups) {
    Trainer trainer(keel::TrainerOptions().max_steps(1), torch::optim::SGDOptions(0.1).weight_decay(1e-4), std::move(groups));
  };
  CHECK_THROWS_WITH_AS(make(optim::ParamGroups({optim::ParamGroup("embeddings", optim::name_contains("embedding"))})),
                       doctest::Contains("ParamGroup 'embeddings' selects no parameter of the model"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(make(optim::ParamGroups({optim::ParamGroup("no_decay", optim::bias_or_norm).set("weight_dacay", 0)})),
                       doctest::Contains("keel::optim::SGD has no hyper-parameter 'weight_dacay'; it has lr, momentum, "
                                         "dampening, weight_decay, nesterov"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS(optim::ParamGroups({optim::ParamGroup("a", optim::bias_or_norm), optim::ParamGroup("a", optim::bias_or_norm)}),
                       doctest::Contains("two groups are named 'a'"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(optim::ParamGroup("default", optim::bias_or_norm), doctest::Contains("is reserved"), keel::ConfigError);
}

}  // namespace loop_features_test

namespace loop_features_test {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::filesystem::path fresh_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("keel-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

using ChosenOptimizer = keel::optim::OneOf<keel::optim::SGD, keel::optim::AdamW>;
using ChosenScheduler =
    keel::sched::OneOf<keel::sched::StepLR, keel::sched::CosineAnnealingLR, keel::sched::ReduceLROnPlateau>;
using ChosenTrainer = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::optimizer<ChosenOptimizer>,
                                    keel::scheduler<ChosenScheduler>>;

TEST_CASE("OneOf: an optimizer and a scheduler chosen at run time save as the chosen policies, and either resumes the other") {
  SyntheticImages train(64, 5);
  const auto dir = fresh_dir("one-of");
  auto options = [&](std::int64_t steps) {
    return keel::TrainerOptions().max_epochs(10).max_steps(steps).batch_size(16).keep_last(0);
  };
  const auto groups = [] {
    return keel::optim::ParamGroups(
        {keel::optim::ParamGroup("no_decay", keel::optim::bias_or_norm).set("weight_decay", 0.0)});
  };
  keel::seed_everything(6);
  ChosenTrainer chosen(options(5).checkpoint_dir(dir.string()), ChosenOptimizer::Options(torch::optim::AdamWOptions(1e-3).weight_decay(0.1)),
                       ChosenScheduler::Options(keel::sched::CosineAnnealingLROptions(20)), groups());
  CHECK(chosen.optimizer().keel_component_name() == "keel::optim::AdamW");
  CHECK(chosen.optimizer().group_name(1) == "no_decay");
  chosen.fit(train);
  const auto file = dir / keel::ckpt::step_file_name(5);
  const auto manifest = keel::ckpt::read_manifest(file);
  REQUIRE(manifest);
  REQUIRE(manifest->find("optimizer"));
  CHECK(manifest->find("optimizer")->type == "keel::optim::AdamW");
  REQUIRE(manifest->find("scheduler"));
  CHECK(manifest->find("scheduler")->type == "keel::sched::CosineAnnealingLR");

  // The same configuration with the policies fixed at compile time: the same fingerprint, the
  // same training, and each resumes the other's checkpoint exactly.
  keel::seed_everything(6);
  GroupedTrainer fixed(options(9), torch::optim::AdamWOptions(1e-3).weight_decay(0.1),
                       keel::sched::CosineAnnealingLROptions(20), groups());
  CHECK(fixed.fingerprint().entries() == chosen.fingerprint().entries());
  fixed.fit(train);
  GroupedTrainer fixed_resumed(options(9).resume(file.string()), torch::optim::AdamWOptions(1e-3).weight_decay(0.1),
                               keel::sched::CosineAnnealingLROptions(20), groups());
  fixed_resumed.fit(train);
  CHECK(fixed_resumed.state_digest() == fixed.state_digest());
  ChosenTrainer chosen_resumed(options(9).resume(file.string()),
                               ChosenOptimizer::Options(torch::optim::AdamWOptions(1e-3).weight_decay(0.1)),
                               ChosenScheduler::Options(keel::sched::CosineAnnealingLROptions(20)), groups());
  chosen_resumed.fit(train);
  CHECK(chosen_resumed.state_digest() == fixed.state_digest());

  // Another choice is another configuration: refused, naming it.
  ChosenTrainer other(options(9).resume(file.string()), ChosenOptimizer::Options(torch::optim::SGDOptions(1e-3)),
                      ChosenScheduler::Options(keel::sched::CosineAnnealingLROptions(20)), groups());
  CHECK_THROWS_WITH(other.fit(train), doctest::Contains("optimizer.type"));

  // The scheduler's needs follow the choice: ReduceLROnPlateau needs a validation set.
  ChosenTrainer plateau(options(3), ChosenOptimizer::Options(torch::optim::SGDOptions(0.1)),
                        ChosenScheduler::Options(keel::sched::ReduceLROnPlateauOptions("val_loss")));
  CHECK_THROWS_WITH_AS(plateau.fit(train), doctest::Contains("keel::sched::ReduceLROnPlateau steps on validation metrics"),
                       keel::ConfigError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("keel::Optional: a callback switched on is the callback itself; switched off it saves nothing and says so") {
  SyntheticImages train(64, 5);
  using Optional = keel::Trainer<keel::model<WeightSumImpl>, keel::optimizer<keel::optim::SGD>,
                                 keel::callbacks<keel::Optional<keel::EMA>>>;
  using Always = keel::Trainer<keel::model<WeightSumImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<keel::EMA>>;
  const auto dir = fresh_dir("optional");
  auto options = [&](std::int64_t steps) {
    return keel::TrainerOptions().max_epochs(10).max_steps(steps).batch_size(16).keep_last(0);
  };
  keel::seed_everything(3);
  Optional on(options(4).checkpoint_dir((dir / "on").string()), torch::optim::SGDOptions(0.1),
              keel::Optional<keel::EMA>(keel::EMA(0.5)));
  on.fit(train);
  REQUIRE(on.callback<keel::Optional<keel::EMA>>().get());
  CHECK(on.callback<keel::Optional<keel::EMA>>().get()->updates() == 4);
  const auto on_file = dir / "on" / keel::ckpt::step_file_name(4);
  const auto on_manifest = keel::ckpt::read_manifest(on_file);
  REQUIRE(on_manifest);
  CHECK(on_manifest->find("callback.keel::EMA"));

  // Its checkpoint is keel::EMA's: a Trainer with keel::EMA itself resumes it exactly.
  keel::seed_everything(3);
  Always always(options(7), torch::optim::SGDOptions(0.1), keel::EMA(0.5));
  CHECK(always.fingerprint().entries() == on.fingerprint().entries());
  always.fit(train);
  Always resumed(options(7).resume(on_file.string()), torch::optim::SGDOptions(0.1), keel::EMA(0.5));
  resumed.fit(train);
  CHECK(resumed.state_digest() == always.state_digest());
  CHECK(resumed.callback<keel::EMA>().updates() == 7);

  // Off: no hook runs, no section; the fingerprint records the choice, so switching it on at a
  // resume is a configuration change.
  keel::seed_everything(3);
  Optional off(options(4).checkpoint_dir((dir / "off").string()), torch::optim::SGDOptions(0.1), keel::Optional<keel::EMA>());
  off.fit(train);
  CHECK_FALSE(off.callback<keel::Optional<keel::EMA>>().on());
  const auto off_file = dir / "off" / keel::ckpt::step_file_name(4);
  const auto off_manifest = keel::ckpt::read_manifest(off_file);
  REQUIRE(off_manifest);
  for (const auto& section : off_manifest->sections) CHECK(section.name.find("EMA") == std::string::npos);
  Optional switched(options(7).resume(off_file.string()), torch::optim::SGDOptions(0.1),
                    keel::Optional<keel::EMA>(keel::EMA(0.5)));
  CHECK_THROWS_WITH(switched.fit(train), doctest::Contains("enabled"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("LearningRateMonitor: the rate every step applied, per param group, each step once across a resume") {
  SyntheticImages train(64, 5);
  using Monitored = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                  keel::scheduler<keel::sched::CosineAnnealingLR>, keel::callbacks<keel::LearningRateMonitor>>;
  const auto dir = fresh_dir("lr-monitor");
  const auto head = [] {
    return keel::optim::ParamGroups({keel::optim::ParamGroup("head", keel::optim::name_contains("fc.")).set("lr", 3e-4)});
  };
  auto make = [&](const std::string& name, std::int64_t steps, const std::string& resume) {
    return Monitored(keel::TrainerOptions().max_epochs(10).max_steps(steps).batch_size(16).keep_last(0).checkpoint_dir(
                         (dir / name / "ckpt").string()).resume(resume),
                     torch::optim::AdamWOptions(1e-3), keel::sched::CosineAnnealingLROptions(20), head(),
                     keel::LearningRateMonitor((dir / name / "logs").string(), 1));
  };
  keel::seed_everything(8);
  auto whole = make("whole", 9, "never");
  whole.fit(train);
  const std::string rates = read_text(dir / "whole" / "logs" / "lr.csv");
  std::istringstream lines(rates);
  std::string line;
  std::getline(lines, line);
  CHECK(line == "step,epoch,lr_default,lr_head");
  // Step s applied CosineAnnealingLR's rate after s - 1 scheduler steps: base (1 + cos(pi (s-1) / 20)) / 2.
  const double pi = std::acos(-1.0);
  for (int step = 1; step <= 9; ++step) {
    REQUIRE(std::getline(lines, line));
    double lr_default = 0.0, lr_head = 0.0;
    long long logged_step = 0, epoch = 0;
    REQUIRE(std::sscanf(line.c_str(), "%lld,%lld,%lf,%lf", &logged_step, &epoch, &lr_default, &lr_head) == 4);
    CHECK(logged_step == step);
    const double factor = (1.0 + std::cos(pi * (step - 1) / 20.0)) / 2.0;
    CHECK(lr_default == doctest::Approx(1e-3 * factor).epsilon(1e-8));
    CHECK(lr_head == doctest::Approx(3e-4 * factor).epsilon(1e-8));
  }
  CHECK_FALSE(std::getline(lines, line));

  // Killed after its checkpoint at step 5 had written two more rows and half of one: the resumed
  // run cuts them off and writes each step once.
  {
    keel::seed_everything(8);
    auto first = make("resumed", 5, "never");  // (its directory lock ends with it)
    first.fit(train);
  }
  {
    std::ofstream out(dir / "resumed" / "logs" / "lr.csv", std::ios::app);
    out << "6,0,0.1,0.1\n7,0,0.1,0.1\n8,0,0.";
  }
  auto second = make("resumed", 9, "auto");
  second.fit(train);
  CHECK(read_text(dir / "resumed" / "logs" / "lr.csv") == rates);
  std::filesystem::remove_all(dir);
}

}  // namespace loop_features_test
