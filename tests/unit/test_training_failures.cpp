// Training that goes wrong: NaN or infinite losses and gradients (stop or skip, never saved),
// and checkpoint retention by a monitored metric (keep_best) next to keep_last.
#include "support/fault_report.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <cereal/types/map.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

namespace fs = std::filesystem;

namespace failure_test {

using keel_test::SyntheticImages;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-failure-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// A linear classifier whose loss (or only its gradient) turns non-finite at chosen batches.
struct PoisonedImpl : torch::nn::Module {
  PoisonedImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))), batches_seen(0) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    const auto loss = torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target);
    const std::int64_t batch = batches_seen++;
    if (std::find(nan_loss_at.begin(), nan_loss_at.end(), batch) != nan_loss_at.end())
      return loss * std::numeric_limits<double>::quiet_NaN();
    if (std::find(nan_gradient_at.begin(), nan_gradient_at.end(), batch) != nan_gradient_at.end())
      return loss + (fc->weight - fc->weight.detach()).abs().sqrt().sum();  // 0 in value, NaN in gradient
    if (std::find(huge_gradient_at.begin(), huge_gradient_at.end(), batch) != huge_gradient_at.end())
      return loss + (fc->weight - fc->weight.detach()).sum() * 1e38;  // 0 in value, 1e38 per gradient element
    return loss;
  }
  keel::Metrics validation_step(const keel::data::Example& b) {
    return {{"val_loss", torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target).item<double>()}};
  }
  // The batches to poison are configuration, but they are plain members all the same, so they
  // are declared (and saved in "model.members") with the counter that is the model's state.
  BOOST_HANA_DEFINE_STRUCT(PoisonedImpl, (torch::nn::Linear, fc), (std::vector<std::int64_t>, nan_loss_at),
                           (std::vector<std::int64_t>, nan_gradient_at), (std::vector<std::int64_t>, huge_gradient_at),
                           (std::int64_t, batches_seen));
};

using Trainer = keel::Trainer<keel::model<PoisonedImpl>, keel::optimizer<keel::optim::SGD>>;

bool all_finite(const torch::nn::Module& module) {
  for (const auto& p : module.parameters())
    if (!torch::isfinite(p).all().item<bool>()) return false;
  return true;
}

TEST_CASE("a NaN loss stops training before the optimizer applies it, naming the step; the checkpoint stays good") {
  const auto dir = fresh_directory("nan-stop");
  keel::seed_everything(3);
  auto model = std::make_shared<PoisonedImpl>();
  model->nan_loss_at = {5};
  Trainer trainer(model, keel::TrainerOptions().max_steps(10).batch_size(8).checkpoint_dir(dir.string()).save_every_steps(2),
                  torch::optim::SGDOptions(0.1));
  SyntheticImages data(200, 1);
  std::string error;
  try {
    trainer.fit(data);
  } catch (const keel::NonFiniteError& e) {
    error = e.what();
  }
  CHECK(error.find("the loss is nan at step 6 (epoch 0, batch 5)") != std::string::npos);
  CHECK(error.find("on_nonfinite(keel::NonFinitePolicy::skip_step)") != std::string::npos);
  CHECK(trainer.loop().global_step == 5);
  CHECK(all_finite(*model));
  const auto last = keel::ckpt::read_container(dir / "last.ckpt");
  CHECK(last.manifest.fact("global_step") == "4");
  keel_test::report_fault("NaN loss (policy stop)", 1,
                          "NonFiniteError naming step, epoch and batch; parameters untouched; last checkpoint unchanged");
}

TEST_CASE("a NaN gradient behind a finite loss is caught too, naming the parameter") {
  keel::seed_everything(3);
  auto model = std::make_shared<PoisonedImpl>();
  model->nan_gradient_at = {2};
  Trainer trainer(model, keel::TrainerOptions().max_steps(10).batch_size(8), torch::optim::SGDOptions(0.1));
  SyntheticImages data(200, 1);
  std::string error;
  try {
    trainer.fit(data);
  } catch (const keel::NonFiniteError& e) {
    error = e.what();
  }
  CHECK(error.find("the gradient of 'fc.weight' is not finite at step 3") != std::string::npos);
  CHECK(all_finite(*model));
}

TEST_CASE("finite gradients whose sum overflows are not mistaken for non-finite ones") {
  SyntheticImages data(200, 1);
  auto weight_after = [&](std::int64_t steps) {
    keel::seed_everything(3);
    auto model = std::make_shared<PoisonedImpl>();
    model->huge_gradient_at = {2};  // 256 weights x 1e38 overflows a float sum; every element is finite
    Trainer trainer(model, keel::TrainerOptions().max_steps(steps).batch_size(8), torch::optim::SGDOptions(0.1));
    trainer.fit(data);
    CHECK(trainer.loop().global_step == steps);
    CHECK(trainer.loop().skipped_steps == 0);
    return model->fc->weight.detach().clone();
  };
  const auto before = weight_after(2);
  const auto after = weight_after(3);
  // The third step was applied, not skipped: SGD moved every weight by about lr x 1e38.
  CHECK(torch::isfinite(after).all().item<bool>());
  CHECK((after - before).abs().min().item<double>() > 1e36);
}

TEST_CASE("skip_step drops non-finite steps, counts them, and the count survives a resume") {
  const auto dir = fresh_directory("nan-skip");
  SyntheticImages data(200, 1);
  auto make = [&](std::int64_t max_steps) {
    keel::seed_everything(3);
    auto model = std::make_shared<PoisonedImpl>();
    model->nan_loss_at = {1, 4};
    model->nan_gradient_at = {6};
    return Trainer(model,
                   keel::TrainerOptions().max_steps(max_steps).batch_size(8).checkpoint_dir(dir.string())
                       .on_nonfinite(keel::NonFinitePolicy::skip_step).resume("auto"),
                   torch::optim::SGDOptions(0.1));
  };
  std::string digest;
  {
    auto trainer = make(10);
    trainer.fit(data);
    CHECK(trainer.loop().global_step == 10);
    CHECK(trainer.loop().skipped_steps == 3);
    CHECK(all_finite(*trainer.model()));
    digest = trainer.state_digest();
  }
  auto resumed = make(10);  // resumes from step 10's checkpoint
  resumed.fit(data);
  CHECK(resumed.loop().skipped_steps == 3);
  CHECK(resumed.state_digest() == digest);
  keel_test::report_fault("NaN loss or NaN gradient (policy skip_step)", 3,
                          "step skipped with a warning, counted in the checkpoint; parameters stay finite");
}

TEST_CASE("a parameter that became non-finite is never written over a good checkpoint") {
  const auto dir = fresh_directory("nan-save");
  keel::seed_everything(3);
  auto model = std::make_shared<PoisonedImpl>();
  Trainer trainer(model, keel::TrainerOptions().max_steps(4).batch_size(8).checkpoint_dir(dir.string()).save_every_steps(2),
                  torch::optim::SGDOptions(0.1));
  SyntheticImages data(200, 1);
  trainer.fit(data);  // steps 2 and 4 saved
  {
    torch::NoGradGuard no_grad;
    model->fc->bias[0] = std::numeric_limits<float>::infinity();  // e.g. an overflowing update
  }
  const auto target = dir / keel::ckpt::step_file_name(4);
  const auto before = keel::ckpt::read_file(target);
  CHECK_THROWS_WITH_AS(trainer.save_checkpoint(target), doctest::Contains("parameter 'fc.bias' holds NaN or infinite values"),
                       keel::NonFiniteError);
  CHECK(keel::ckpt::read_file(target) == before);
}

/// A classifier with a second, large layer (a 128 KiB weight: an async_save snapshot copies it)
/// that one chosen batch drives to infinity with finite gradients (1e38 per element, lr 10).
struct OverflowingImpl : torch::nn::Module {
  OverflowingImpl()
      : fc(register_module("fc", torch::nn::Linear(64, 4))), big(register_module("big", torch::nn::Linear(256, 128))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    auto loss = torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target);
    if (batches_seen++ == overflow_at) loss = loss + (big->weight - big->weight.detach()).sum() * 1e38;
    return loss;
  }
  keel::Metrics validation_step(const keel::data::Example& b) {
    return {{"val_loss", torch::nn::functional::cross_entropy(fc(b.data.flatten(1)), b.target).item<double>()}};
  }
  BOOST_HANA_DEFINE_STRUCT(OverflowingImpl, (torch::nn::Linear, fc), (torch::nn::Linear, big),
                           (std::int64_t, overflow_at), (std::int64_t, batches_seen));
};

/// What on_exception sees as the checkpoint path: after a refused save, the last one written.
struct PathAtException {
  std::string* seen = nullptr;
  template <class Archive>
  void serialize(Archive&) {}
  void on_exception(keel::Context& context) { *seen = context.checkpoint_path(); }
};

TEST_CASE("an infinite parameter refuses the checkpoint with async_save too, when the background write is collected") {
  SyntheticImages data(200, 1);
  for (const bool async : {false, true}) {
    CAPTURE(async);
    const auto dir = fresh_directory(async ? "inf-async" : "inf-sync");
    keel::seed_everything(3);
    auto model = std::make_shared<OverflowingImpl>();
    model->overflow_at = 3;  // the fourth step makes big.weight infinite; step 4 is saved
    model->batches_seen = 0;
    std::string path_at_exception;
    keel::Trainer<keel::model<OverflowingImpl>, keel::optimizer<keel::optim::SGD>, keel::callbacks<PathAtException>> trainer(
        model,
        keel::TrainerOptions().max_steps(8).batch_size(8).checkpoint_dir(dir.string()).save_every_steps(2).async_save(async),
        torch::optim::SGDOptions(10.0), PathAtException{&path_at_exception});
    std::string error;
    try {
      trainer.fit(data);
    } catch (const keel::NonFiniteError& e) {
      error = e.what();
    }
    CHECK(error.find("parameter 'big.weight' holds NaN or infinite values at step 4; " +
                     (dir / keel::ckpt::step_file_name(4)).string() + " was not written") != std::string::npos);
    CHECK_FALSE(torch::isfinite(model->big->weight).all().item<bool>());
    // Synchronous: refused at step 4's save. Background: the copy is checked before the file is
    // created, and the refusal comes when the next save (step 6) collects that write.
    CHECK(trainer.loop().global_step == (async ? 6 : 4));
    CHECK_FALSE(fs::exists(dir / keel::ckpt::step_file_name(4)));
    CHECK_FALSE(fs::exists(dir / keel::ckpt::step_file_name(6)));
    CHECK(fs::read_symlink(dir / "last.ckpt") == keel::ckpt::step_file_name(2));
    CHECK(path_at_exception == (dir / keel::ckpt::step_file_name(2)).string());
    for (const auto& entry : fs::directory_iterator(dir))
      CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
  }
}

TEST_CASE("the save's finiteness check finds NaN and infinities anywhere, in every floating type") {
  using keel::loop::detail::all_finite;
  for (const auto type : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    CAPTURE(type);
    const auto good = torch::randn({1000, 37}).to(type);
    CHECK(all_finite(good));
    for (const double bad : {std::nan(""), std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()})
      for (const std::int64_t at : {std::int64_t(0), std::int64_t(17), good.numel() - 1}) {
        CAPTURE(bad);
        CAPTURE(at);
        auto t = good.clone();
        t.view({-1})[at] = bad;
        CHECK_FALSE(all_finite(t));
        CHECK_FALSE(all_finite(t.t()));  // not contiguous
      }
  }
  CHECK(all_finite(torch::empty({0})));
  CHECK(all_finite(torch::tensor({1, 2, 3})));  // integers are always finite
  CHECK(all_finite(torch::full({4}, std::numeric_limits<float>::max())));  // the largest finite value is finite
  CHECK(all_finite(torch::full({4}, std::numeric_limits<double>::max(), torch::kDouble)));
}

/// Records the validation loss after each epoch.
struct RecordValidation {
  std::map<std::int64_t, double> val_loss;  // epoch -> value
  void on_validation_end(keel::Context& ctx) { val_loss[ctx.epoch()] = ctx.metrics().at("val_loss"); }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(CEREAL_NVP(val_loss));
  }
};

TEST_CASE("keep_best keeps the checkpoints with the best monitored metric besides the newest keep_last") {
  const auto dir = fresh_directory("keep-best");
  using Ranked = keel::Trainer<keel::model<PoisonedImpl>, keel::optimizer<keel::optim::SGD>,
                               keel::callbacks<RecordValidation>>;
  keel::seed_everything(5);
  // A large learning rate makes the validation loss go up and down between epochs.
  Ranked trainer(std::make_shared<PoisonedImpl>(),
                 keel::TrainerOptions().max_epochs(8).batch_size(16).checkpoint_dir(dir.string())
                     .save_every_steps(3).keep_last(2).keep_best(2).monitor("val_loss"),
                 torch::optim::SGDOptions(1.0));
  SyntheticImages train(96, 1), validation(64, 2);
  trainer.fit(train, validation);
  const auto& recorded = trainer.callback<RecordValidation>().val_loss;
  REQUIRE(recorded.size() == 8);

  // Epoch e ends at step 6(e+1): its checkpoint carries that epoch's val_loss.
  std::vector<std::pair<double, std::int64_t>> by_value;
  for (const auto& [epoch, value] : recorded) by_value.emplace_back(value, 6 * (epoch + 1));
  std::sort(by_value.begin(), by_value.end());
  std::vector<std::int64_t> expected = {48, 45, by_value[0].second, by_value[1].second};  // newest 2, best 2
  std::sort(expected.begin(), expected.end());
  expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
  std::vector<std::int64_t> kept;
  for (const auto& file : keel::ckpt::list_checkpoints(dir)) kept.push_back(file.global_step);
  std::sort(kept.begin(), kept.end());
  CHECK(kept == expected);
  for (const auto& file : keel::ckpt::list_checkpoints(dir)) {
    const auto manifest = keel::ckpt::read_manifest(file.path);
    REQUIRE(manifest);
    if (file.global_step % 6 == 0) CHECK(manifest->fact("monitor") == "val_loss");
    if (file.global_step % 6 != 0) CHECK(manifest->fact("monitor").empty());  // mid-epoch: no fresh validation
  }
  CHECK(fs::read_symlink(dir / "last.ckpt").string() == keel::ckpt::step_file_name(48));
}

TEST_CASE("keep_best without a monitored metric is refused") {
  CHECK_THROWS_WITH_AS(keel::Trainer<keel::model<PoisonedImpl>>(keel::TrainerOptions().keep_best(2)),
                       doctest::Contains("needs monitor"), keel::ConfigError);
}

}  // namespace failure_test
