// The threaded batch loader: order, worker-independence, prefetch bound, errors, early exit.
#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

namespace loader_test {

using keel::data::BatchLoader;
using keel::data::EpochSampler;
using keel::data::SampleContext;

/// Each sample is its index plus a per-sample random number; loading takes a random while, so
/// workers finish out of order. Counts how far loading runs ahead of delivery.
struct SlowDataset {
  std::int64_t n = 64;
  std::int64_t fail_at = -1;
  mutable std::atomic<int> loading{0};
  mutable std::atomic<int> most_loading{0};

  std::size_t size() const { return static_cast<std::size_t>(n); }
  keel::data::Example get(std::size_t index, const SampleContext& ctx) const {
    const int now = ++loading;
    int seen = most_loading.load();
    while (now > seen && !most_loading.compare_exchange_weak(seen, now)) {
    }
    keel::data::SplitMix64 jitter(index * 7919 + 1);
    std::this_thread::sleep_for(std::chrono::microseconds(jitter.below(400)));
    --loading;
    if (static_cast<std::int64_t>(index) == fail_at) throw std::runtime_error("unreadable record");
    const double noise = static_cast<double>(keel::data::SplitMix64(ctx.sample_seed(static_cast<std::int64_t>(index))).below(1000));
    return {torch::tensor({static_cast<double>(index), noise}), torch::tensor(static_cast<std::int64_t>(index))};
  }
};

std::vector<torch::Tensor> load_epoch(SlowDataset& data, int workers, std::int64_t first_batch = 0) {
  keel::data::SamplerOptions options;
  options.batch_size = 5;
  const EpochSampler sampler(data.n, options, 11);
  BatchLoader<SlowDataset> loader(data, sampler, 3, first_batch, SampleContext(11, 3, true), workers, 0);
  std::vector<torch::Tensor> batches;
  for (std::int64_t b = first_batch; b < sampler.batches_per_epoch(); ++b) batches.push_back(loader.next().data);
  return batches;
}

TEST_CASE("batches arrive in order and are identical for 0, 1, 2 and 4 workers") {
  SlowDataset data;
  const auto reference = load_epoch(data, 0);
  REQUIRE(reference.size() == 13);
  for (int workers : {1, 2, 4}) {
    CAPTURE(workers);
    const auto batches = load_epoch(data, workers);
    REQUIRE(batches.size() == reference.size());
    for (std::size_t b = 0; b < batches.size(); ++b) CHECK(torch::equal(batches[b], reference[b]));
  }
  // Resuming at batch 6 yields the tail of the same epoch.
  const auto tail = load_epoch(data, 4, 6);
  REQUIRE(tail.size() == 7);
  for (std::size_t b = 0; b < tail.size(); ++b) CHECK(torch::equal(tail[b], reference[b + 6]));
}

TEST_CASE("per-sample randomness depends on (seed, epoch, index) only") {
  const SampleContext a(5, 2, true), b(5, 2, true), other_epoch(5, 3, true), other_seed(6, 2, true);
  CHECK(a.sample_seed(17) == b.sample_seed(17));
  CHECK(a.sample_seed(17) != a.sample_seed(18));
  CHECK(a.sample_seed(17) != other_epoch.sample_seed(17));
  CHECK(a.sample_seed(17) != other_seed.sample_seed(17));
  CHECK(torch::equal(torch::rand(4, a.generator(3)), torch::rand(4, b.generator(3))));
}

TEST_CASE("loading runs at most `prefetch` batches ahead") {
  SlowDataset data;
  data.n = 200;
  keel::data::SamplerOptions options;
  options.batch_size = 1;
  const EpochSampler sampler(data.n, options, 1);
  BatchLoader<SlowDataset> loader(data, sampler, 0, 0, SampleContext(1, 0, true), 4, 3);
  for (int b = 0; b < 50; ++b) {
    loader.next();
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // a slow consumer
  }
  CHECK(data.most_loading.load() <= 3);
}

TEST_CASE("a worker's failure reaches the training thread with the sample index") {
  SlowDataset data;
  data.fail_at = 23;
  keel::data::SamplerOptions options;
  options.batch_size = 4;
  options.shuffle = false;
  const EpochSampler sampler(data.n, options, 1);
  for (int workers : {0, 3}) {
    CAPTURE(workers);
    BatchLoader<SlowDataset> loader(data, sampler, 0, 0, SampleContext(1, 0, true), workers, 0);
    for (int b = 0; b < 5; ++b) loader.next();  // samples 0..19 load fine
    try {
      loader.next();
      FAIL("the failure was swallowed");
    } catch (const keel::data::LoadError& e) {
      CHECK(e.sample() == 23);
      CHECK(std::string(e.what()) == "keel: loading sample 23 failed: unreadable record");
    }
  }
}

TEST_CASE("leaving early stops and joins the workers") {
  SlowDataset data;
  data.n = 10000;
  keel::data::SamplerOptions options;
  options.batch_size = 8;
  const EpochSampler sampler(data.n, options, 1);
  const auto start = std::chrono::steady_clock::now();
  {
    BatchLoader<SlowDataset> loader(data, sampler, 0, 0, SampleContext(1, 0, true), 4, 0);
    loader.next();
  }  // destroyed with most of the epoch unread
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  CHECK(data.loading.load() == 0);
}

TEST_CASE("a LibTorch dataset is adapted in one line") {
  struct Squares : torch::data::datasets::Dataset<Squares> {
    torch::data::Example<> get(size_t i) override {
      return {torch::tensor(static_cast<double>(i * i)), torch::tensor(static_cast<std::int64_t>(i))};
    }
    torch::optional<size_t> size() const override { return 10; }
  };
  auto data = keel::data::from_torch(Squares());
  static_assert(keel::data::check_dataset<decltype(data)>());
  const auto batch = keel::data::fetch_batch(data, {2, 3}, SampleContext(0, 0, true));
  CHECK(batch.data.equal(torch::tensor({4.0, 9.0}, torch::kFloat64)));
  CHECK(keel::data::dataset_size(data) == 10);
}

}  // namespace loader_test
