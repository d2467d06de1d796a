// Every component's state round-trips through cereal's binary, portable binary and JSON
// archives, bit for bit.
#include "support/compare.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <cereal/archives/binary.hpp>
#include <cereal/archives/json.hpp>
#include <cereal/archives/portable_binary.hpp>
#include <doctest/doctest.h>

#include <limits>
#include <random>
#include <set>
#include <sstream>

namespace serialization_test {

template <class Out, class In>
struct Archives {
  using Output = Out;
  using Input = In;
};
using Binary = Archives<cereal::BinaryOutputArchive, cereal::BinaryInputArchive>;
using PortableBinary = Archives<cereal::PortableBinaryOutputArchive, cereal::PortableBinaryInputArchive>;
using Json = Archives<cereal::JSONOutputArchive, cereal::JSONInputArchive>;

template <class A, class T>
std::string save(const T& value) {
  std::stringstream stream;
  {
    typename A::Output archive(stream);
    archive(cereal::make_nvp("value", value));
  }
  return stream.str();
}

template <class A, class T>
void load(const std::string& bytes, T& value) {
  std::stringstream stream(bytes);
  typename A::Input archive(stream);
  archive(cereal::make_nvp("value", value));
}

/// Saves, loads into `fresh`, and checks that saving `fresh` gives the same bytes.
template <class A, class T>
void round_trip(const T& original, T& fresh) {
  const std::string first = save<A>(original);
  load<A>(first, fresh);
  CHECK(save<A>(fresh) == first);
}

TEST_CASE_TEMPLATE("tensors of every stored dtype round-trip bit for bit", A, Binary, PortableBinary, Json) {
  auto gen = at::detail::createCPUGenerator(3);
  std::vector<torch::Tensor> tensors = {
      at::randn({3, 4}, gen),
      at::randn({2, 3}, gen).to(torch::kFloat64),
      at::randn({5}, gen).to(torch::kFloat16),
      at::randn({5}, gen).to(torch::kBFloat16),
      torch::arange(10, torch::kInt64).reshape({2, 5}),
      torch::arange(6, torch::kInt32),
      torch::arange(6, torch::kInt16),
      torch::arange(-3, 3, torch::kInt8),
      torch::arange(6, torch::kUInt8),
      torch::tensor({true, false, true}),
      torch::tensor(3.5),                              // 0-d
      torch::empty({0, 3}),                            // no elements
      torch::tensor({-0.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}),
      at::randn({4, 6}, gen).t(),                      // non-contiguous
  };
  for (const auto& t : tensors) {
    CAPTURE(t.scalar_type());
    torch::Tensor loaded;
    load<A>(save<A>(t), loaded);
    CHECK(keel_test::bitwise_equal(loaded, t));
  }
  torch::Tensor undefined, loaded = torch::ones(1);
  load<A>(save<A>(undefined), loaded);
  CHECK_FALSE(loaded.defined());
}

TEST_CASE("a tensor with an absurd shape is refused before any allocation") {
  std::stringstream stream;
  {
    cereal::PortableBinaryOutputArchive archive(stream);
    archive(true, std::string("float32"), std::vector<std::int64_t>{1LL << 40, 1LL << 40});
  }
  cereal::PortableBinaryInputArchive archive(stream);
  torch::Tensor t;
  CHECK_THROWS_WITH_AS(archive(t), doctest::Contains("overflows"), std::runtime_error);

  std::stringstream negative;
  {
    cereal::PortableBinaryOutputArchive out(negative);
    out(true, std::string("float32"), std::vector<std::int64_t>{3, -1});
  }
  cereal::PortableBinaryInputArchive in(negative);
  CHECK_THROWS_WITH_AS(in(t), doctest::Contains("negative"), std::runtime_error);
}

/// Trains a few steps so that every optimizer holds real state.
template <class Optimizer>
std::pair<std::shared_ptr<keel_test::SmallNetImpl>, std::unique_ptr<Optimizer>> trained(
    typename Optimizer::Options options) {
  keel::seed_everything(11);
  auto model = std::make_shared<keel_test::SmallNetImpl>();
  auto optimizer = std::make_unique<Optimizer>(model->named_parameters(), options);
  keel_test::SyntheticImages data(16, 2);
  auto batch = keel::data::fetch_batch(data, {0, 1, 2, 3, 4, 5, 6, 7}, keel::data::SampleContext(0, 0, true));
  for (int i = 0; i < 3; ++i) {
    model->training_step(batch).backward();
    optimizer->step();
    optimizer->zero_grad();
  }
  return {model, std::move(optimizer)};
}

template <class A, class Optimizer>
void check_optimizer_round_trip(typename Optimizer::Options options) {
  auto [model, optimizer] = trained<Optimizer>(options);
  const keel::optim::OptimizerState state = optimizer->state();
  REQUIRE(state.params.size() == model->named_parameters().size());
  keel::optim::OptimizerState loaded;
  load<A>(save<A>(state), loaded);
  REQUIRE(loaded.params.size() == state.params.size());
  for (std::size_t i = 0; i < state.params.size(); ++i) {
    CHECK(loaded.params[i].name == state.params[i].name);
    CHECK(loaded.params[i].step == state.params[i].step);
    REQUIRE(loaded.params[i].tensors.size() == state.params[i].tensors.size());
    for (std::size_t j = 0; j < state.params[i].tensors.size(); ++j)
      CHECK(keel_test::bitwise_equal(loaded.params[i].tensors[j].second, state.params[i].tensors[j].second));
  }
  CHECK(loaded.groups.size() == 1);
  CHECK(loaded.groups[0].hyper_parameters == state.groups[0].hyper_parameters);
  CHECK(loaded.groups[0].params == state.groups[0].params);

  // Applied to a fresh optimizer, it yields the same state.
  auto fresh = std::make_unique<Optimizer>(model->named_parameters(), options);
  CHECK(fresh->check(loaded).empty());
  fresh->apply(loaded);
  CHECK(save<A>(fresh->state()) == save<A>(state));
}

TEST_CASE_TEMPLATE("optimizer state round-trips: SGD, Adam (AMSGrad), AdamW", A, Binary, PortableBinary, Json) {
  check_optimizer_round_trip<A, keel::optim::SGD>(torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(true));
  check_optimizer_round_trip<A, keel::optim::Adam>(torch::optim::AdamOptions(1e-2).amsgrad(true));
  check_optimizer_round_trip<A, keel::optim::AdamW>(torch::optim::AdamWOptions(1e-2));
}

// keel saves every option of LibTorch's optimizers with each param group and puts it in the
// configuration fingerprint (Traits::hyper_parameters). LibTorch's own serialization of the
// options names each of them: should a LibTorch version add one, this test names it.
std::set<std::string> torch_option_names(const torch::optim::OptimizerOptions& options) {
  torch::serialize::OutputArchive out;
  options.serialize(out);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  const auto keys = in.keys();
  return {keys.begin(), keys.end()};
}

template <class Traits, class Options>
std::set<std::string> keel_option_names(const Options& options) {
  std::set<std::string> names;
  for (const auto& [name, value] : Traits::hyper_parameters(options))
    names.insert(name == "beta1" || name == "beta2" ? "betas" : name);  // one tuple in LibTorch
  return names;
}

TEST_CASE("keel's optimizers save every option LibTorch's optimizers have") {
  const torch::optim::AdamOptions adam;
  const torch::optim::AdamWOptions adamw;
  const torch::optim::SGDOptions sgd(0.1);
  CHECK(torch_option_names(adam) == keel_option_names<keel::optim::AdamTraits>(adam));
  CHECK(torch_option_names(adamw) == keel_option_names<keel::optim::AdamWTraits>(adamw));
  CHECK(torch_option_names(sgd) == keel_option_names<keel::optim::SGDTraits>(sgd));
  CHECK(torch_option_names(sgd).count("nesterov") == 1);  // the names are LibTorch's, not empty
}

TEST_CASE_TEMPLATE("model state (parameters and BatchNorm buffers) round-trips", A, Binary, PortableBinary, Json) {
  auto [model, optimizer] = trained<keel::optim::SGD>(torch::optim::SGDOptions(0.1));
  (void)optimizer;
  const auto state = keel::ModelState::capture(*model);
  CHECK(state.buffers.size() == 3);  // running_mean, running_var, num_batches_tracked
  keel::ModelState loaded;
  load<A>(save<A>(state), loaded);
  auto fresh = std::make_shared<keel_test::SmallNetImpl>();
  CHECK(loaded.check(*fresh).empty());
  loaded.apply(*fresh);
  for (const auto& item : model->named_parameters()) CHECK(keel_test::bitwise_equal(fresh->named_parameters()[item.key()], item.value()));
  for (const auto& item : model->named_buffers()) CHECK(keel_test::bitwise_equal(fresh->named_buffers()[item.key()], item.value()));
}

TEST_CASE_TEMPLATE("scheduler state round-trips: Constant, StepDecay and CosineWarmup", A, Binary, PortableBinary, Json) {
  auto model = std::make_shared<keel_test::SmallNetImpl>();
  keel::optim::AdamW optimizer(model->named_parameters(), torch::optim::AdamWOptions(1e-2));
  keel::sched::StepDecay step(optimizer.torch_optimizer(), keel::sched::StepDecayOptions(3, 0.5));
  keel::sched::CosineWarmup cosine(optimizer.torch_optimizer(), keel::sched::CosineWarmupOptions(2, 20));
  for (int i = 0; i < 7; ++i) {
    step.step();
    cosine.step();
  }
  keel::sched::Constant constant(optimizer.torch_optimizer()), constant2(optimizer.torch_optimizer());
  constant.step();
  round_trip<A>(constant, constant2);
  CHECK(constant2.steps() == 1);
  keel::sched::StepDecay step2(optimizer.torch_optimizer(), keel::sched::StepDecayOptions(3, 0.5));
  keel::sched::CosineWarmup cosine2(optimizer.torch_optimizer(), keel::sched::CosineWarmupOptions(2, 20));
  round_trip<A>(step, step2);
  round_trip<A>(cosine, cosine2);
  CHECK(step2.steps() == 7);
  CHECK(cosine2.steps() == 7);
  CHECK(cosine2.base_lrs() == cosine.base_lrs());
}

TEST_CASE_TEMPLATE("loop state, random streams, early stopping and fingerprints round-trip", A, Binary, PortableBinary,
                   Json) {
  keel::LoopState loop{4, 1234, 17, 0, 99, true, 2, {65536.0, 3, 1}};
  keel::LoopState loop2;
  round_trip<A>(loop, loop2);
  CHECK(loop2.global_step == 1234);
  CHECK(loop2.stop_requested);
  CHECK(loop2.skipped_steps == 2);
  CHECK(loop2.loss_scale.scale == 65536.0);
  CHECK(loop2.loss_scale.growth_tracker == 3);
  CHECK(loop2.loss_scale.skipped_steps == 1);

  keel::seed_everything(5);
  (void)torch::rand(7);
  const auto rng = keel::RngState::capture();
  const auto expected = torch::rand(5);
  keel::RngState rng2;
  round_trip<A>(rng, rng2);
  std::vector<std::string> warnings;
  CHECK(rng2.check(warnings).empty());
  rng2.apply();
  CHECK(keel_test::bitwise_equal(torch::rand(5), expected));

  keel::EarlyStopping stopping("val_loss", 4), stopping2("val_loss", 4);
  round_trip<A>(stopping, stopping2);
  CHECK(stopping2.best() == stopping.best());

  std::mt19937_64 engine(3), engine2;
  engine.discard(17);
  round_trip<A>(engine, engine2);
  CHECK(engine2() == engine());

  keel::Fingerprint fingerprint, fingerprint2;
  fingerprint.add("optimizer.lr", 0.001);
  fingerprint.add("data.shuffle", true);
  round_trip<A>(fingerprint, fingerprint2);
  CHECK(fingerprint2.differences_from(fingerprint).empty());
}

TEST_CASE("fingerprint differences name the key and both values") {
  keel::Fingerprint saved, current;
  saved.add("optimizer.lr", 0.001);
  saved.add("data.batch_size", 64);
  current.add("optimizer.lr", 0.01);
  current.add("data.seed", 3);
  const auto differences = current.differences_from(saved);
  REQUIRE(differences.size() == 3);
  CHECK(differences[0] == "configuration 'optimizer.lr' is '0.001' in the checkpoint but '0.01' in this run");
  CHECK(differences[1] == "configuration 'data.batch_size' is '64' in the checkpoint but absent in this run");
  CHECK(differences[2] == "configuration 'data.seed' is '3' in this run but absent in the checkpoint");
}

}  // namespace serialization_test
