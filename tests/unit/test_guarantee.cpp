// The construction-time half of the compile-time guarantee, the new members sections, and the
// documented limits (README.md, "What the guarantee covers, and what it cannot"). The refusals
// that happen at compile time are in tests/compile_fail/.
#include "support/process.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <string>

namespace fs = std::filesystem;

namespace guarantee_test {

using keel_test::StatefulNetImpl;
using keel_test::SyntheticImages;

fs::path fresh_file(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-guarantee-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::remove(dir / name);
  return dir / name;
}

keel::TrainerOptions quiet_options(std::int64_t steps) {
  return keel::TrainerOptions().max_epochs(100).max_steps(steps).batch_size(16).seed(3).threads(1);
}

/// A Trainer trained for some steps and saved, and a second one, built from the same arguments,
/// that loaded the checkpoint.
template <class T>
struct Reloaded {
  std::unique_ptr<T> trained;
  std::unique_ptr<T> fresh;
  fs::path path;
};
template <class T, class... Args>
Reloaded<T> train_save_reload(const std::string& file, std::int64_t steps, const Args&... args) {
  SyntheticImages data(64, 5);
  keel::seed_everything(3);
  Reloaded<T> out{std::make_unique<T>(quiet_options(steps), args...), nullptr, fresh_file(file)};
  out.trained->fit(data);
  out.trained->save_checkpoint(out.path);
  out.fresh = std::make_unique<T>(quiet_options(steps), args...);
  out.fresh->load_checkpoint(out.path);
  return out;
}

TEST_CASE("a model's declared plain members are saved in 'model.members' and come back on load") {
  using T = keel::Trainer<keel::model<StatefulNetImpl>, keel::optimizer<keel::optim::SGD>>;
  const auto reloaded = train_save_reload<T>("stateful.ckpt", 6, torch::optim::SGDOptions(0.05));
  const auto& trained = reloaded.trained;
  const auto& fresh = reloaded.fresh;
  const auto& path = reloaded.path;
  REQUIRE(trained->model()->calls == 6);
  CHECK(keel::ckpt::read_container(path).manifest.find("model.members") != nullptr);
  CHECK(fresh->model()->calls == 6);
  CHECK(fresh->model()->running_mean == trained->model()->running_mean);
  CHECK(fresh->model()->scale.item<float>() == trained->model()->scale.item<float>());
  CHECK(fresh->state_digest() == trained->state_digest());
}

struct UnregisteredTensorNet : torch::nn::Module {
  UnregisteredTensorNet() : fc(register_module("fc", torch::nn::Linear(64, 4))), shift(torch::zeros({4})) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data.flatten(1)).add(shift).sum(); }
  BOOST_HANA_DEFINE_STRUCT(UnregisteredTensorNet, (torch::nn::Linear, fc), (torch::Tensor, shift));
};

struct UnregisteredModuleNet : torch::nn::Module {
  UnregisteredModuleNet() : fc(torch::nn::Linear(64, 4)) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data.flatten(1)).sum(); }
  BOOST_HANA_DEFINE_STRUCT(UnregisteredModuleNet, (torch::nn::Linear, fc));
};

TEST_CASE("a declared tensor or submodule that is not registered is refused before the first step") {
  using keel::ConfigError;
  CHECK_THROWS_WITH_AS(keel::Trainer<keel::model<UnregisteredTensorNet>>(quiet_options(1)),
                       doctest::Contains("UnregisteredTensorNet's declared tensor 'shift' is not a registered "
                                         "parameter or buffer"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(keel::Trainer<keel::model<UnregisteredModuleNet>>(quiet_options(1)),
                       doctest::Contains("UnregisteredModuleNet's declared submodule 'fc' is not registered"),
                       ConfigError);
}

/// A member declared before the declaration, in the padding before `count`: sizeof and the data
/// size are what the declared members predict, only the offsets differ.
struct EarlyFlag {
  EarlyFlag() {}
  bool hidden = false;
  BOOST_HANA_DEFINE_STRUCT(EarlyFlag, (char, mode), (int, count));
  void on_optimizer_step_end(keel::Context&) { ++count; }
};
static_assert(keel::layout::size_matches<EarlyFlag>() && keel::layout::tail_matches<EarlyFlag>(),
              "compile time cannot see this member: the test relies on it");

TEST_CASE("a member hidden in padding before the declaration is refused when the Trainer is constructed") {
  using T = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::callbacks<EarlyFlag>>;
  CHECK_THROWS_WITH_AS(T(quiet_options(1)),
                       doctest::Contains("EarlyFlag's declared member 'mode' lies at byte 1 but would lie at byte 0"),
                       keel::ConfigError);
}

/// A module that cannot be changed (think of a library's): plain members, no declaration.
struct LibraryNet : torch::nn::Module {
  LibraryNet() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data.flatten(1)).sum(); }
  torch::nn::Linear fc;
  int unsaved_setting = 1;
};

TEST_CASE("the parameters_only opt-out is written at the Trainer and recorded in each checkpoint") {
  using T = keel::Trainer<keel::model<LibraryNet, keel::parameters_only>>;
  T trainer(quiet_options(1));
  const auto entries = trainer.fingerprint().entries();
  bool recorded = false;
  for (const auto& [key, value] : entries) recorded = recorded || (key == "model.state" && value == "parameters only");
  CHECK(recorded);
  const auto path = fresh_file("parameters-only.ckpt");
  trainer.save_checkpoint(path);
  const auto manifest = keel::ckpt::read_container(path).manifest;
  CHECK(manifest.find("model.members") == nullptr);
  CHECK(manifest.fingerprint.differences_from(trainer.fingerprint()).empty());
  // keel-ckpt info says so in words.
  if (std::string(KEEL_CKPT_TOOL).empty()) {
    MESSAGE("keel-ckpt not built (KEEL_BUILD_TOOLS=OFF): its info line is not checked");
  } else {
    const auto info = keel_test::run({KEEL_CKPT_TOOL, "info", path.string()});
    INFO(info.output);
    CHECK(info.exit_code == 0);
    CHECK(info.output.find("model state:       parameters and buffers only (keel::parameters_only") != std::string::npos);
    CHECK(info.output.find("model.state = parameters only") != std::string::npos);
  }
  // A declared model's checkpoint carries no such entry.
  keel::Trainer<keel::model<keel_test::SmallNetImpl>> declared(quiet_options(1));
  const keel::Fingerprint declared_fingerprint = declared.fingerprint();
  for (const auto& [key, value] : declared_fingerprint.entries()) CHECK(key != "model.state");
}

/// An optimizer policy with state of its own: LibTorch's SGD plus a count of its steps.
struct CountingSGD : keel::optim::TorchOptimizer<keel::optim::SGDTraits> {
  static constexpr const char* keel_name = "guarantee_test::CountingSGD";
  CountingSGD(const keel::optim::NamedParameters& params, Options options)
      : TorchOptimizer(params, std::move(options)), steps_taken(0) {}
  void step() {
    TorchOptimizer::step();
    ++steps_taken;
  }
  BOOST_HANA_DEFINE_STRUCT(CountingSGD, (std::int64_t, steps_taken));
};

TEST_CASE("an optimizer policy's declared members are saved in 'optimizer.members'") {
  using T = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::optimizer<CountingSGD>>;
  const auto reloaded = train_save_reload<T>("counting-sgd.ckpt", 4, torch::optim::SGDOptions(0.05));
  const auto& trained = reloaded.trained;
  const auto& fresh = reloaded.fresh;
  const auto& path = reloaded.path;
  REQUIRE(trained->optimizer().steps_taken == 4);
  CHECK(keel::ckpt::read_container(path).manifest.find("optimizer.members") != nullptr);
  CHECK(fresh->optimizer().steps_taken == 4);
}

/// Every member declared, and a virtual destructor: the vptr is not a hidden member.
struct PolymorphicCounter {
  PolymorphicCounter() : steps(0), total(0.0) {}
  virtual ~PolymorphicCounter() = default;
  PolymorphicCounter(const PolymorphicCounter&) = default;
  PolymorphicCounter& operator=(const PolymorphicCounter&) = default;
  BOOST_HANA_DEFINE_STRUCT(PolymorphicCounter, (std::int64_t, steps), (double, total));
  void on_optimizer_step_end(keel::Context&) {
    ++steps;
    total += 0.5;
  }
};

TEST_CASE("a polymorphic callback whose members are all declared is accepted and saved") {
  using T = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::callbacks<PolymorphicCounter>>;
  const auto reloaded = train_save_reload<T>("polymorphic.ckpt", 3);
  CHECK(reloaded.fresh->callback<PolymorphicCounter>().steps == 3);
  CHECK(reloaded.fresh->callback<PolymorphicCounter>().total == 1.5);
}

// ---- the documented limits: pinned, so that a change in them is noticed --------------------------

/// A static data member is no part of any object: C++ offers no way to find it.
struct StaticCounter {
  static inline std::int64_t steps = 0;
  void on_optimizer_step_end(keel::Context&) { ++steps; }
};
static_assert(std::is_empty_v<StaticCounter>, "to keel, a class with only static data holds nothing");

TEST_CASE("limit: a static data member is not saved (README: what the guarantee cannot cover)") {
  using T = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::callbacks<StaticCounter>>;
  SyntheticImages data(64, 5);
  T trainer(quiet_options(2));
  trainer.fit(data);
  CHECK(StaticCounter::steps == 2);
  const std::string digest = trainer.state_digest();
  StaticCounter::steps = 1000;
  CHECK(trainer.state_digest() == digest);
}

/// A hand-written serialize decides what is saved; it may leave out a member on purpose.
struct SkipsOnPurpose {
  std::int64_t saved = 0;
  std::int64_t skipped = 0;
  void on_optimizer_step_end(keel::Context&) {
    ++saved;
    ++skipped;
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("saved", saved));
  }
};

TEST_CASE("limit: a member a hand-written serialize leaves out is not saved (README)") {
  using T = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::callbacks<SkipsOnPurpose>>;
  const auto reloaded = train_save_reload<T>("skips.ckpt", 2);
  CHECK(reloaded.fresh->callback<SkipsOnPurpose>().saved == 2);
  CHECK(reloaded.fresh->callback<SkipsOnPurpose>().skipped == 0);
}

/// A member declared before a model's declaration, small enough for the tail padding after
/// torch::nn::Module's last member (a bool): no measurement sees it.
struct EarlyCounterNet : torch::nn::Module {
  EarlyCounterNet() : fc(register_module("fc", torch::nn::Linear(64, 4))), rate(1.0) {}
  std::int32_t batches_seen = 0;
  torch::Tensor training_step(const keel::data::Example& b) {
    ++batches_seen;
    return fc(b.data.flatten(1)).sum() * rate;
  }
  BOOST_HANA_DEFINE_STRUCT(EarlyCounterNet, (torch::nn::Linear, fc), (double, rate));
};
static_assert(keel::layout::data_size<torch::nn::Module>() % 8 != 0, "torch::nn::Module ends in tail padding");

TEST_CASE("limit: a small member before a model's declaration hides in torch::nn::Module's padding (README)") {
  using T = keel::Trainer<keel::model<EarlyCounterNet>>;
  const auto reloaded = train_save_reload<T>("early-counter.ckpt", 2);  // constructs: nothing sees the member
  REQUIRE(reloaded.trained->model()->batches_seen == 2);
  CHECK(reloaded.fresh->model()->batches_seen == 0);  // not saved: the documented limit
}

/// A registered parameter that the model also keeps in a vector: loading keeps the vector's
/// tensors the registered ones (copied in place), so training goes on updating what forward uses.
struct ListedNet : torch::nn::Module {
  ListedNet() : weights{register_parameter("w0", torch::ones({64, 4})), register_parameter("w1", torch::ones({4}))} {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return (b.data.flatten(1).matmul(weights[0]) + weights[1]).pow(2).mean();
  }
  BOOST_HANA_DEFINE_STRUCT(ListedNet, (std::vector<torch::Tensor>, weights));
};

TEST_CASE("a loaded vector of tensors keeps aliasing the registered parameters") {
  using T = keel::Trainer<keel::model<ListedNet>, keel::optimizer<keel::optim::SGD>>;
  const auto reloaded = train_save_reload<T>("listed.ckpt", 2, torch::optim::SGDOptions(0.01));
  const auto& fresh = *reloaded.fresh->model();
  const auto params = fresh.named_parameters();
  CHECK(fresh.weights[0].is_same(params["w0"]));
  CHECK(fresh.weights[1].is_same(params["w1"]));
  CHECK(torch::equal(fresh.weights[0], reloaded.trained->model()->weights[0]));
}

}  // namespace guarantee_test
