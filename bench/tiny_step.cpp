// Benchmark: keel's per-step cost where the framework shows most. A tiny model
// (Linear(32,64)-ReLU-Linear(64,1)), Adam, batch 16, MSE, one intra-op thread, the same batch
// every step, trained either through keel's Trainer::fit or by a hand-written LibTorch loop.
// One process runs one of the two; bench/tiny_step.sh runs them alternately, pinned to one core,
// and prints the medians (the row in bench/README.md).
//
//   bench_tiny_step --mode keel|hand [--steps N] [--warmup W]
// prints `us_per_step=<float>`: the training loop's wall time over N steps (after W warm-up
// steps in the same process), in microseconds per step.
//   bench_tiny_step --mode parts [--steps N]
// times each piece keel adds to a step on its own (the gradient check, the loss check, the
// loss's detach, fetching the next batch), N calls each.

#include <keel/keel.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

using Clock = std::chrono::steady_clock;

struct TinyImpl : torch::nn::Module {
  TinyImpl()
      : fc1(register_module("fc1", torch::nn::Linear(32, 64))), fc2(register_module("fc2", torch::nn::Linear(64, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::mse_loss(forward(batch.data), batch.target);
  }
  BOOST_HANA_DEFINE_STRUCT(TinyImpl, (torch::nn::Linear, fc1), (torch::nn::Linear, fc2));
};

/// Hands out the same batch whatever the indices: the step's cost, not the data's, is measured.
struct SameBatch {
  std::int64_t samples;
  keel::data::Example batch;
  std::size_t size() const { return static_cast<std::size_t>(samples); }
  keel::data::Example get_batch(const std::vector<std::int64_t>&) const { return batch; }
};

keel::data::Example make_batch() {
  torch::manual_seed(3);
  return {torch::randn({16, 32}), torch::randn({16, 1})};
}

double hand_written(std::int64_t warmup, std::int64_t steps) {
  torch::manual_seed(1);
  auto model = std::make_shared<TinyImpl>();
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  const auto batch = make_batch();
  auto step = [&] {
    optimizer.zero_grad();
    model->training_step(batch).backward();
    optimizer.step();
  };
  for (std::int64_t i = 0; i < warmup; ++i) step();
  const auto start = Clock::now();
  for (std::int64_t i = 0; i < steps; ++i) step();
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / static_cast<double>(steps);
}

/// Starts the clock when the warm-up steps are done (configuration, not state: nothing to save).
struct StartClock {
  std::int64_t after_step = 0;
  Clock::time_point* start = nullptr;
  template <class Archive>
  void serialize(Archive&) {}
  void on_optimizer_step_end(keel::Context& ctx) {
    if (ctx.global_step() == after_step) *start = Clock::now();
  }
};

double with_keel(std::int64_t warmup, std::int64_t steps) {
  torch::manual_seed(1);
  using Trainer = keel::Trainer<keel::model<TinyImpl>, keel::optimizer<keel::optim::Adam>, keel::callbacks<StartClock>>;
  Clock::time_point start = Clock::now();
  Trainer trainer(std::make_shared<TinyImpl>(),
                  keel::TrainerOptions().batch_size(16).shuffle(false).max_epochs(0).max_steps(warmup + steps),
                  torch::optim::AdamOptions(1e-3), StartClock{warmup, &start});
  SameBatch data{16 * (warmup + steps), make_batch()};
  trainer.fit(data);
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / static_cast<double>(steps);
}

/// The microseconds of each piece keel adds to a step, timed alone over `calls` calls on the
/// tiny model after one real step (so that gradients and optimizer state exist).
void parts(std::int64_t calls) {
  torch::manual_seed(1);
  auto model = std::make_shared<TinyImpl>();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  const auto batch = make_batch();
  torch::Tensor loss = model->training_step(batch);
  loss.backward();
  optimizer.step();
  SameBatch data{16 * calls, batch};
  keel::data::SamplerOptions in_order;
  in_order.batch_size = 16;
  in_order.shuffle = false;
  const keel::data::EpochSampler sampler(16 * calls, in_order, 0);
  keel::data::BatchLoader<SameBatch> loader(data, sampler, 0, 0, keel::data::SampleContext(0, 0, true), 0, 0);
  keel::loop::NonFiniteWatch watch(keel::NonFinitePolicy::stop, *model);
  keel::LoopState position;

  auto time = [&](const char* what, auto&& piece) {
    const auto start = Clock::now();
    for (std::int64_t i = 0; i < calls; ++i) piece();
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - start).count() / static_cast<double>(calls);
    std::printf("%s=%.3f\n", what, us);
  };
  time("gradient_check_us", [&] { watch.check_window(position); });
  time("loss_check_us", [&] { watch.check_loss(loss, position); });
  time("loss_detach_us", [&] { static_cast<void>(loss.detach()); });
  time("next_batch_us", [&] { static_cast<void>(keel::data::to_device(loader.next(), torch::kCPU)); });
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "keel";
  std::int64_t steps = 20000;
  std::int64_t warmup = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--mode")) mode = argv[i + 1];
    else if (!std::strcmp(argv[i], "--steps")) steps = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::stoll(argv[i + 1]);
  }
  torch::set_num_threads(1);
  if (mode == "parts") {
    parts(steps);
    return 0;
  }
  if (mode != "keel" && mode != "hand") {
    std::fprintf(stderr, "--mode must be keel, hand or parts\n");
    return 2;
  }
  const double us = mode == "keel" ? with_keel(warmup, steps) : hand_written(warmup, steps);
  std::printf("us_per_step=%.3f\n", us);
  return 0;
}
