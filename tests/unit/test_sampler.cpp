// The data order: a pure function of (seed, epoch), resumable at any batch, sharded by rank.
#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <set>

namespace sampler_test {

using keel::data::EpochSampler;
using keel::data::SamplerOptions;

namespace {
SamplerOptions options(std::int64_t batch, bool shuffle = true, bool drop_last = false, std::int64_t rank = 0,
                       std::int64_t world = 1) {
  SamplerOptions o;
  o.batch_size = batch;
  o.shuffle = shuffle;
  o.drop_last = drop_last;
  o.rank = rank;
  o.world_size = world;
  return o;
}
}  // namespace

TEST_CASE("each epoch's order is a permutation that depends only on (seed, epoch)") {
  const EpochSampler a(1000, options(32), 7);
  const EpochSampler b(1000, options(32), 7);
  const auto e0 = a.epoch_order(0);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (std::int64_t i = 0; i < 1000; ++i) REQUIRE(sorted[static_cast<std::size_t>(i)] == i);
  CHECK(b.epoch_order(3) == a.epoch_order(3));  // another sampler, queried out of order
  CHECK(a.epoch_order(0) == e0);                // no hidden state advanced
  CHECK(a.epoch_order(1) != e0);
  CHECK(EpochSampler(1000, options(32), 8).epoch_order(0) != e0);
}

TEST_CASE("the shuffle is fixed across platforms and standard libraries") {
  // keel uses its own generator and bounded-integer rule, so this order is a constant.
  // A checkpoint written on one machine must replay the same batches on another.
  const EpochSampler sampler(10, options(4), 42);
  CHECK(sampler.epoch_order(0) == std::vector<std::int64_t>{4, 9, 2, 7, 5, 1, 3, 8, 0, 6});
  CHECK(sampler.epoch_order(1) == std::vector<std::int64_t>{1, 9, 8, 7, 6, 2, 0, 5, 3, 4});
  keel::data::SplitMix64 rng(0);
  CHECK(rng.next() == 0xe220a8397b1dcdafULL);  // the reference SplitMix64 sequence from seed 0
  CHECK(rng.next() == 0x6e789e6aa1b965f4ULL);
}

TEST_CASE("without shuffle the order is the identity; batches cover the epoch") {
  const EpochSampler sampler(10, options(4, false), 1);
  const auto order = sampler.epoch_order(5);
  CHECK(order == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(sampler.batches_per_epoch() == 3);
  CHECK(sampler.batch(order, 2) == std::vector<std::int64_t>{8, 9});
  CHECK(EpochSampler(10, options(4, false, true), 1).batches_per_epoch() == 2);
}

TEST_CASE("a resume mid-epoch sees exactly the batches the uninterrupted epoch had left") {
  const EpochSampler sampler(103, options(10), 3);
  const auto order = sampler.epoch_order(2);
  const EpochSampler resumed(103, options(10), 3);  // a new process: nothing but (seed, epoch, cursor)
  const auto order_again = resumed.epoch_order(2);
  for (std::int64_t b = 4; b < sampler.batches_per_epoch(); ++b) CHECK(resumed.batch(order_again, b) == sampler.batch(order, b));
}

TEST_CASE("shards of one epoch are disjoint, equal in size, and cover the dataset") {
  std::set<std::int64_t> seen;
  std::size_t total = 0;
  for (std::int64_t rank = 0; rank < 3; ++rank) {
    const EpochSampler shard(30, options(4, true, false, rank, 3), 9);
    const auto order = shard.epoch_order(1);
    CHECK(order.size() == 10);
    total += order.size();
    seen.insert(order.begin(), order.end());
  }
  CHECK(total == 30);
  CHECK(seen.size() == 30);
}

TEST_CASE("uneven shards (evaluation) hold each sample once; the first size % world ranks hold one more") {
  std::vector<std::int64_t> all;
  std::vector<std::int64_t> batches;
  for (std::int64_t rank = 0; rank < 4; ++rank) {
    SamplerOptions o = options(2, false, false, rank, 4);
    o.even = false;
    const EpochSampler shard(6, o, 0);
    const auto order = shard.epoch_order(0);
    all.insert(all.end(), order.begin(), order.end());
    batches.push_back(shard.batches_per_epoch());
  }
  // ranks 0 and 1: {0, 4} and {1, 5}; ranks 2 and 3: {2} and {3} (no wrap-around padding)
  CHECK(all == std::vector<std::int64_t>{0, 4, 1, 5, 2, 3});
  CHECK(batches == std::vector<std::int64_t>{1, 1, 1, 1});
  SamplerOptions o = options(2, false, false, 3, 4);
  o.even = false;
  CHECK(EpochSampler(3, o, 0).batches_per_epoch() == 0);  // more ranks than samples: this one has none
}

// An epoch resumed with another batch size or number of ranks (keel/state/fork.hpp): after b
// batches of B on W ranks the positions [0, b*B*W) of the order were taken, so the rest starts
// there and every sample of the epoch is taken once.
TEST_CASE("an epoch goes on from a sample position under another batch size and number of ranks") {
  const std::int64_t size = 200;
  // {ranks before, batch before, ranks after, batch after, batches trained before}
  for (const auto& c : std::vector<std::array<std::int64_t, 5>>{
           {2, 16, 1, 16, 3}, {1, 16, 2, 8, 5}, {2, 10, 4, 5, 4}, {3, 7, 2, 9, 2}, {1, 15, 4, 5, 1}}) {
    const std::int64_t before_world = c[0], before_batch = c[1], after_world = c[2], after_batch = c[3], trained = c[4];
    CAPTURE(before_world);
    CAPTURE(after_world);
    CAPTURE(trained);
    std::multiset<std::int64_t> seen;
    for (std::int64_t rank = 0; rank < before_world; ++rank) {
      const EpochSampler shard(size, options(before_batch, true, false, rank, before_world), 5);
      const auto order = shard.epoch_order(3);
      for (std::int64_t b = 0; b < trained; ++b)
        for (auto index : shard.batch(order, b)) seen.insert(index);
    }
    const std::int64_t start = trained * before_batch * before_world;
    std::int64_t padded = 0;  // (wrapped-around positions that even out the ranks)
    for (std::int64_t rank = 0; rank < after_world; ++rank) {
      const EpochSampler rest =
          EpochSampler(size, options(after_batch, true, false, rank, after_world), 5).starting_at(start);
      CHECK(rest.start() == start);
      const auto order = rest.epoch_order(3);
      CHECK(static_cast<std::int64_t>(order.size()) == (size - start + after_world - 1) / after_world);
      for (std::int64_t b = 0; b < rest.batches_per_epoch(); ++b)
        for (auto index : rest.batch(order, b)) seen.insert(index);
      padded += static_cast<std::int64_t>(order.size());
    }
    padded -= size - start;
    // Each of the 200 samples once, and the padding (fewer than the ranks) from the order's start.
    CHECK(static_cast<std::int64_t>(seen.size()) == size + padded);
    CHECK(padded < after_world);
    for (std::int64_t i = 0; i < size; ++i) CHECK(seen.count(i) >= 1);
    std::set<std::int64_t> distinct(seen.begin(), seen.end());
    CHECK(static_cast<std::int64_t>(distinct.size()) == size);
  }
  // drop_last: the rest may hold less than one batch per rank, and then has none (not an error).
  CHECK(EpochSampler(200, options(16, true, true, 0, 2), 5).starting_at(190).batches_per_epoch() == 0);
  // At the end: nothing left (a checkpoint of an epoch's last step, before the epoch ended).
  CHECK(EpochSampler(200, options(16, true, false, 1, 2), 5).starting_at(200).batches_per_epoch() == 0);
  CHECK_THROWS_WITH_AS(EpochSampler(200, options(16), 5).starting_at(201), "keel: an epoch cannot start at sample 201 of 200",
                       keel::ConfigError);
}

TEST_CASE("bad sampler settings are refused with the offending value") {
  CHECK_THROWS_WITH_AS(EpochSampler(10, options(0), 1), "keel: batch_size must be positive, got 0", keel::ConfigError);
  CHECK_THROWS_WITH_AS(EpochSampler(0, options(4), 1), "keel: the training dataset is empty", keel::ConfigError);
  CHECK_THROWS_AS(EpochSampler(3, options(4, true, true), 1), keel::ConfigError);
  CHECK_THROWS_AS(EpochSampler(10, options(4, true, false, 3, 2), 1), keel::ConfigError);
}

}  // namespace sampler_test
