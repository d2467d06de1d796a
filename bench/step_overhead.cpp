// Benchmark: the time of keel's training step against a hand-written LibTorch loop with the
// identical model, data, batch order, optimizer and thread count. Prints a Markdown table row
// per model; bench/run.sh collects them into bench/README.md.
//
//   bench_step_overhead [--steps N] [--threads T] [--repeats R] [--data DIR]

#include "../examples/fashion_mnist/fashion_mnist_data.hpp"
#include "../examples/fashion_mnist/models.hpp"

#include <keel/keel.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

/// The loop a LibTorch user writes by hand: same sampler order, same optimizer, no keel.
template <class Module>
double hand_written_seconds(const fashion_mnist::Dataset& data, std::int64_t steps, std::int64_t batch_size) {
  keel::seed_everything(1);
  auto model = std::make_shared<Module>();
  model->train();
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-3));
  keel::data::SamplerOptions options;
  options.batch_size = batch_size;
  const keel::data::EpochSampler sampler(static_cast<std::int64_t>(data.size()), options, 1);
  const auto order = sampler.epoch_order(0);
  const auto start = Clock::now();
  for (std::int64_t step = 0; step < steps; ++step) {
    const auto batch = data.get_batch(sampler.batch(order, step % sampler.batches_per_epoch()),
                                      keel::data::SampleContext(1, 0, true));
    optimizer.zero_grad();
    model->training_step(batch).backward();
    optimizer.step();
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

template <class Module>
double keel_seconds(fashion_mnist::Dataset& data, std::int64_t steps, std::int64_t batch_size) {
  keel::seed_everything(1);
  keel::Trainer<keel::model<Module>, keel::optimizer<keel::optim::AdamW>> trainer(
      std::make_shared<Module>(), keel::TrainerOptions().max_steps(steps).max_epochs(0).batch_size(batch_size).seed(1),
      torch::optim::AdamWOptions(1e-3));
  const auto start = Clock::now();
  trainer.fit(data);
  return std::chrono::duration<double>(Clock::now() - start).count();
}

template <class Module>
void measure(const char* name, fashion_mnist::Dataset& data, std::int64_t steps, int repeats) {
  constexpr std::int64_t batch_size = 64;
  hand_written_seconds<Module>(data, std::max<std::int64_t>(5, steps / 10), batch_size);  // warm-up
  std::vector<double> hand, framework;
  for (int r = 0; r < repeats; ++r) {  // interleaved, alternating who goes first, so drift affects both alike
    if (r % 2 == 0) hand.push_back(hand_written_seconds<Module>(data, steps, batch_size));
    framework.push_back(keel_seconds<Module>(data, steps, batch_size));
    if (r % 2 == 1) hand.push_back(hand_written_seconds<Module>(data, steps, batch_size));
  }
  const double h = median(hand) / static_cast<double>(steps) * 1e3;
  const double k = median(framework) / static_cast<double>(steps) * 1e3;
  std::printf("| %s | %lld | %d | %.3f | %.3f | %.3f |\n", name, static_cast<long long>(batch_size),
              at::get_num_threads(), h, k, k / h);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t steps = 200;
  int threads = 2;
  int repeats = 5;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) threads = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--data")) data_dir = argv[i + 1];
  }
  torch::set_num_threads(threads);
  fashion_mnist::Dataset data(data_dir, "train");
  std::printf("| model | batch | threads | hand-written LibTorch ms/step | keel ms/step | ratio |\n");
  std::printf("|---|---|---|---|---|---|\n");
  measure<fashion_mnist::MlpImpl>("mlp", data, steps, repeats);
  measure<fashion_mnist::CnnImpl>("cnn", data, std::max<std::int64_t>(20, steps / 4), repeats);
  return 0;
}
