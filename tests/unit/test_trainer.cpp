// The Trainer in one process: composition, limits, gradient accumulation, schedules, early
// stopping, and errors for bad configuration.
#include "support/compare.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <stdexcept>

#include <unistd.h>

namespace trainer_test {

using keel_test::SmallNetImpl;
using keel_test::SyntheticImages;

// Policies in any order, defaults for the rest.
using Reordered = keel::Trainer<keel::scheduler<keel::sched::StepDecay>, keel::model<SmallNetImpl>,
                                keel::optimizer<keel::optim::SGD>>;
static_assert(std::is_same_v<Reordered::Optimizer, keel::optim::SGD>);
static_assert(std::is_same_v<Reordered::Scheduler, keel::sched::StepDecay>);
static_assert(std::is_same_v<Reordered::Callbacks, std::tuple<>>);
static_assert(std::is_same_v<Reordered::Format, keel::format::Binary>);
static_assert(keel::check_optimizer<keel::optim::SGD>() && keel::check_optimizer<keel::optim::Adam>() &&
              keel::check_optimizer<keel::optim::AdamW>());
static_assert(keel::check_scheduler<keel::sched::Constant>() && keel::check_scheduler<keel::sched::StepDecay>() &&
              keel::check_scheduler<keel::sched::CosineWarmup>());
using Defaults = keel::Trainer<keel::model<SmallNetImpl>>;
static_assert(std::is_same_v<Defaults::Optimizer, keel::optim::AdamW>);
static_assert(std::is_same_v<Defaults::Scheduler, keel::sched::Constant>);

/// A linear model without randomness or batch statistics, for exact gradient arithmetic.
struct LinearImpl : torch::nn::Module {
  LinearImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target);
  }
  keel::Metrics validation_step(const keel::data::Example&) { return {{"val_loss", 1.0}}; }
  BOOST_HANA_DEFINE_STRUCT(LinearImpl, (torch::nn::Linear, fc));
};

struct CountEvents {
  std::int64_t batches = 0, steps = 0, epochs = 0;
  template <class A>
  void serialize(A& a) {
    a(batches, steps, epochs);
  }
  void on_train_batch_end(keel::Context&) { ++batches; }
  void on_optimizer_step_end(keel::Context&) { ++steps; }
  void on_train_epoch_end(keel::Context&) { ++epochs; }
};

TEST_CASE("epochs, steps and accumulation windows add up, with a short last window") {
  SyntheticImages data(80, 1);  // 10 batches of 8
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<CountEvents>> trainer(
      keel::TrainerOptions().max_epochs(2).batch_size(8).accumulate(4), torch::optim::SGDOptions(0.1));
  trainer.fit(data);
  const auto& counts = trainer.callback<CountEvents>();
  CHECK(counts.batches == 20);
  CHECK(counts.steps == 6);  // windows of 4, 4, 2 per epoch
  CHECK(counts.epochs == 2);
  CHECK(trainer.loop().epoch == 2);
  CHECK(trainer.loop().global_step == 6);
  CHECK(trainer.loop().micro_batch == 0);
}

TEST_CASE("max_steps stops mid-epoch at an optimizer-step boundary") {
  SyntheticImages data(80, 1);
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>> trainer(
      keel::TrainerOptions().max_epochs(5).max_steps(7).batch_size(8).accumulate(2), torch::optim::SGDOptions(0.1));
  trainer.fit(data);
  CHECK(trainer.loop().global_step == 7);
  CHECK(trainer.loop().epoch == 1);
  CHECK(trainer.loop().batch_in_epoch == 4);
}

TEST_CASE("accumulating two micro-batches gives the gradient of their union") {
  SyntheticImages data(16, 4);
  keel::seed_everything(3);
  auto accumulated = std::make_shared<LinearImpl>();
  auto whole = std::make_shared<LinearImpl>();
  {
    torch::NoGradGuard no_grad;
    whole->fc->weight.copy_(accumulated->fc->weight);
    whole->fc->bias.copy_(accumulated->fc->bias);
  }
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>> a(
      accumulated, keel::TrainerOptions().max_steps(1).batch_size(8).accumulate(2).shuffle(false),
      torch::optim::SGDOptions(1.0));
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>> b(
      whole, keel::TrainerOptions().max_steps(1).batch_size(16).shuffle(false), torch::optim::SGDOptions(1.0));
  a.fit(data);
  b.fit(data);
  CHECK(torch::allclose(accumulated->fc->weight, whole->fc->weight, 1e-5, 1e-6));
  CHECK(torch::allclose(accumulated->fc->bias, whole->fc->bias, 1e-5, 1e-6));
  CHECK_FALSE(keel_test::bitwise_equal(accumulated->fc->weight, torch::zeros_like(whole->fc->weight)));
}

TEST_CASE("schedules are closed-form functions of the step") {
  auto model = std::make_shared<LinearImpl>();
  keel::optim::SGD optimizer(model->named_parameters(), torch::optim::SGDOptions(0.4));
  keel::sched::CosineWarmup cosine(optimizer.torch_optimizer(), keel::sched::CosineWarmupOptions(4, 14).min_lr_ratio(0.25));
  CHECK(optimizer.lr() == doctest::Approx(0.1));  // (0 + 1) / 4 of the base before the first step
  for (int i = 0; i < 3; ++i) cosine.step();
  CHECK(optimizer.lr() == doctest::Approx(0.4));  // warm-up done after 4 - 1 steps
  cosine.step();
  CHECK(optimizer.lr() == doctest::Approx(0.4));  // cosine starts at the peak
  for (int i = 0; i < 5; ++i) cosine.step();
  CHECK(optimizer.lr() == doctest::Approx(0.4 * (0.25 + 0.75 * 0.5)));  // halfway down
  for (int i = 0; i < 10; ++i) cosine.step();
  CHECK(optimizer.lr() == doctest::Approx(0.1));  // the floor

  keel::optim::SGD fresh(model->named_parameters(), torch::optim::SGDOptions(0.4));
  keel::sched::StepDecay decay(fresh.torch_optimizer(), keel::sched::StepDecayOptions(3, 0.5));
  CHECK(fresh.lr() == doctest::Approx(0.4));
  for (int i = 0; i < 3; ++i) decay.step();
  CHECK(fresh.lr() == doctest::Approx(0.2));
  for (int i = 0; i < 3; ++i) decay.step();
  CHECK(fresh.lr() == doctest::Approx(0.1));
}

TEST_CASE("early stopping ends training when the metric stops improving") {
  SyntheticImages data(32, 1);
  keel::Trainer<keel::model<LinearImpl>, keel::callbacks<keel::EarlyStopping>> trainer(
      keel::TrainerOptions().max_epochs(10).batch_size(8), keel::EarlyStopping("val_loss", 2));
  trainer.fit(data, data);  // validation_step reports a constant loss
  CHECK(trainer.loop().epoch == 3);  // the first sets the best, two more without improvement stop
  CHECK(trainer.loop().stop_requested);
  CHECK(trainer.callback<keel::EarlyStopping>().stopped_epoch() == 2);
}

TEST_CASE("bad configuration is refused with the value and the fix") {
  CHECK_THROWS_WITH_AS((keel::Trainer<keel::model<LinearImpl>>(keel::TrainerOptions().max_epochs(0))),
                       doctest::Contains("set max_epochs or max_steps"), keel::ConfigError);
  CHECK_THROWS_WITH_AS((keel::Trainer<keel::model<LinearImpl>>(keel::TrainerOptions().batch_size(-2))),
                       "keel::TrainerOptions: batch_size must be positive, got -2", keel::ConfigError);
  CHECK_THROWS_WITH_AS((keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>>()),
                       doctest::Contains("pass its options (e.g. torch::optim::SGDOptions(lr))"), keel::ConfigError);
  CHECK_THROWS_WITH_AS((keel::Trainer<keel::model<LinearImpl>, keel::scheduler<keel::sched::CosineWarmup>>(
                           keel::sched::CosineWarmupOptions(10, 5))),
                       doctest::Contains("total_steps (5) must exceed warmup_steps (10)"), keel::ConfigError);
  CHECK_THROWS_WITH_AS((keel::Trainer<keel::model<LinearImpl>>(keel::TrainerOptions().resume("auto"))),
                       doctest::Contains("needs a checkpoint_dir"), keel::ConfigError);
}

}  // namespace trainer_test

namespace trainer_test {

/// Asks to stop in the middle of the first accumulation window.
struct StopEarly {
  void on_train_batch_end(keel::Context& ctx) {
    if (ctx.loop().micro_batch == 1) ctx.request_stop();
  }
};

TEST_CASE("a stop request takes effect at the next optimizer-step boundary and is saved") {
  SyntheticImages data(80, 1);
  keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<StopEarly, CountEvents>>
      trainer(keel::TrainerOptions().max_epochs(2).batch_size(8).accumulate(3), torch::optim::SGDOptions(0.1));
  trainer.fit(data);
  CHECK(trainer.loop().stop_requested);
  CHECK(trainer.loop().global_step == 1);  // the window was finished, not cut
  CHECK(trainer.loop().micro_batch == 0);
  CHECK(trainer.loop().batch_in_epoch == 3);
  CHECK(trainer.callback<CountEvents>().steps == 1);
}

TEST_CASE("two callbacks of one type get distinct sections and each gets its own state back") {
  using Twice = keel::Trainer<keel::model<LinearImpl>, keel::optimizer<keel::optim::SGD>,
                              keel::callbacks<CountEvents, StopEarly, CountEvents>>;
  SyntheticImages data(80, 1);
  const auto file = std::filesystem::temp_directory_path() / ("keel-twice-" + std::to_string(::getpid()) + ".ckpt");
  Twice writer(keel::TrainerOptions().max_steps(3).batch_size(8), torch::optim::SGDOptions(0.1));
  writer.fit(data);
  std::get<2>(writer.callbacks()).steps = 42;  // tell the two apart
  writer.save_checkpoint(file);
  const auto container = keel::ckpt::read_container(file);
  const std::string name = "callback." + keel::detail::type_name<CountEvents>();
  REQUIRE(container.manifest.find(name));
  REQUIRE(container.manifest.find(name + "#1"));
  CHECK(container.manifest.find(name + "#2") == nullptr);

  Twice reader(keel::TrainerOptions().max_steps(3).batch_size(8), torch::optim::SGDOptions(0.1));
  reader.load_checkpoint(file);
  CHECK(std::get<0>(reader.callbacks()).steps == 1);  // StopEarly stopped the first fit after one step
  CHECK(std::get<2>(reader.callbacks()).steps == 42);
  CHECK(reader.state_digest() == writer.state_digest());
  std::filesystem::remove(file);
}

TEST_CASE("every keel exception is a keel::Error with the exit status a program returns") {
  CHECK(keel::exit_status(keel::ConfigError("x")) == 2);
  CHECK(keel::exit_status(keel::CheckpointError("f", {"broken"})) == 3);
  CHECK(keel::exit_status(keel::ckpt::IoError("write", "f", ENOSPC)) == 4);
  CHECK(keel::exit_status(keel::NonFiniteError("x")) == 5);
  CHECK(keel::exit_status(keel::Interrupted(SIGTERM, "f")) == 128 + SIGTERM);
  CHECK(keel::exit_status(keel::data::LoadError(3, "x")) == 1);
  CHECK(keel::exit_status(std::runtime_error("x")) == 1);
  // Bad options are refused when the Trainer is built, with the value in the message.
  try {
    keel::Trainer<keel::model<LinearImpl>> bad(keel::TrainerOptions().batch_size(0));
    FAIL("a batch size of 0 was accepted");
  } catch (const keel::Error& e) {
    CHECK(e.exit_status() == 2);
    CHECK(std::string(e.what()).find("batch_size must be positive, got 0") != std::string::npos);
  }
}

}  // namespace trainer_test
