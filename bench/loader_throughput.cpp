// Benchmark: samples per second of keel's BatchLoader against LibTorch's
// torch::data::make_data_loader on the same in-memory Fashion-MNIST tensors, the same batch
// size, shuffled, for several worker counts. Prints a Markdown table (bench/run.sh).
//
//   bench_loader_throughput [--epochs N] [--repeats R] [--batch-size B] [--data DIR]
// Each figure is the median of R runs of N epochs.

#include "../examples/fashion_mnist/fashion_mnist_data.hpp"

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

/// The LibTorch way: a Dataset whose get(i) returns one example, stacked by a transform.
class TorchFashion : public torch::data::datasets::Dataset<TorchFashion> {
 public:
  TorchFashion(torch::Tensor images, torch::Tensor labels) : images_(std::move(images)), labels_(std::move(labels)) {}
  torch::data::Example<> get(size_t index) override {
    return {images_[static_cast<std::int64_t>(index)], labels_[static_cast<std::int64_t>(index)]};
  }
  torch::optional<size_t> size() const override { return static_cast<size_t>(labels_.size(0)); }

 private:
  torch::Tensor images_, labels_;
};

/// keel with the same per-sample get (stacked by keel), the like-for-like comparison.
struct PerSample {
  torch::Tensor images, labels;
  std::size_t size() const { return static_cast<std::size_t>(labels.size(0)); }
  keel::data::Example get(std::size_t index) const {
    return {images[static_cast<std::int64_t>(index)], labels[static_cast<std::int64_t>(index)]};
  }
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double torch_samples_per_second(const fashion_mnist::Dataset& data, int workers, std::int64_t batch, int epochs) {
  auto dataset = TorchFashion(data.images(), data.labels()).map(torch::data::transforms::Stack<>());
  auto loader = torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
      std::move(dataset), torch::data::DataLoaderOptions().batch_size(static_cast<size_t>(batch)).workers(static_cast<size_t>(workers)));
  std::int64_t samples = 0;
  const auto start = Clock::now();
  for (int e = 0; e < epochs; ++e)
    for (auto& b : *loader) samples += b.data.size(0);
  return static_cast<double>(samples) / seconds_since(start);
}

template <class Dataset>
double keel_samples_per_second(Dataset& dataset, std::int64_t n, int workers, std::int64_t batch, int epochs) {
  keel::data::SamplerOptions options;
  options.batch_size = batch;
  const keel::data::EpochSampler sampler(n, options, 1);
  std::int64_t samples = 0;
  const auto start = Clock::now();
  for (int e = 0; e < epochs; ++e) {
    keel::data::BatchLoader<Dataset> loader(dataset, sampler, e, 0, keel::data::SampleContext(1, e, true), workers, 0);
    for (std::int64_t b = 0; b < sampler.batches_per_epoch(); ++b) samples += loader.next().data.size(0);
  }
  return static_cast<double>(samples) / seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  int epochs = 1;
  int repeats = 5;
  std::int64_t batch = 64;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batch-size")) batch = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--data")) data_dir = argv[i + 1];
  }
  torch::set_num_threads(1);  // loading is measured, not intra-op parallelism
  fashion_mnist::Dataset data(data_dir, "train");
  PerSample per_sample{data.images(), data.labels()};
  const auto n = static_cast<std::int64_t>(data.size());

  std::printf("| workers | LibTorch make_data_loader (samples/s) | keel, per-sample get (samples/s) | keel, get_batch (samples/s) | keel get / LibTorch | keel get_batch / LibTorch |\n");
  std::printf("|---|---|---|---|---|---|\n");
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (int workers : {0, 1, 2, 4}) {
    std::vector<double> ts, ks, kbs;
    for (int r = 0; r < repeats; ++r) {  // interleaved, so drift affects all three alike
      ts.push_back(torch_samples_per_second(data, workers, batch, epochs));
      ks.push_back(keel_samples_per_second(per_sample, n, workers, batch, epochs));
      kbs.push_back(keel_samples_per_second(data, n, workers, batch, epochs));
    }
    const double t = median(ts), k = median(ks), kb = median(kbs);
    std::printf("| %d | %.0f | %.0f | %.0f | %.2f | %.2f |\n", workers, t, k, kb, k / t, kb / t);
    std::fflush(stdout);
  }
  return 0;
}
