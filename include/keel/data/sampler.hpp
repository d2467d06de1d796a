#pragma once
// The deterministic, resumable order of samples. The permutation of epoch e is a pure function
// of (seed, e): no generator state carries over between epochs, so a resume needs only
// (seed, epoch, cursor) and jumps to the cursor without touching the samples before it.
// The shuffle uses keel's own generator and bounded-integer rule rather than std::shuffle,
// whose algorithm differs between standard libraries.

#include <keel/error.hpp>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace keel::data {

/// SplitMix64: a small, well-mixed generator; enough for shuffling indices.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform integer in [0, bound), without modulo bias (Lemire's method with rejection).
  std::uint64_t below(std::uint64_t bound) {
    __uint128_t product = static_cast<__uint128_t>(next()) * bound;
    auto low = static_cast<std::uint64_t>(product);
    if (low < bound) {
      const std::uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) {
        product = static_cast<__uint128_t>(next()) * bound;
        low = static_cast<std::uint64_t>(product);
      }
    }
    return static_cast<std::uint64_t>(product >> 64);
  }

 private:
  std::uint64_t state_;
};

/// A seed for one purpose derived from a base seed and up to three coordinates.
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0,
                                 std::uint64_t c = 0) {
  SplitMix64 mix(seed ^ 0x6b65656c2d736565ULL);  // "keel-see"
  std::uint64_t out = mix.next();
  for (std::uint64_t part : {a, b, c}) {
    SplitMix64 step(out ^ (part * 0xd1342543de82ef95ULL));
    out = step.next();
  }
  return out;
}

struct SamplerOptions {
  std::int64_t batch_size = 32;
  bool shuffle = true;
  bool drop_last = false;
  std::int64_t rank = 0;        ///< this process's shard (data parallelism)
  std::int64_t world_size = 1;  ///< number of shards
  /// true: every rank gets as many samples (padded by wrapping around, or truncated with
  /// drop_last), so that the ranks take their steps together. false (evaluation): each sample
  /// exactly once, the first size % world_size ranks one more than the others (a rank may get none).
  bool even = true;
};

/// Which samples form batch b of epoch e, for one rank. The epoch's order is one permutation of
/// the dataset; rank r takes its positions start + r, start + r + world_size, ... in turn, so
/// after b batches of B on W ranks the positions [start, start + b*B*W) are taken, whatever B
/// and W are. An epoch resumed with another B or W goes on from there (`start` > 0).
class EpochSampler {
 public:
  EpochSampler(std::int64_t dataset_size, SamplerOptions options, std::uint64_t seed, std::int64_t start = 0)
      : size_(dataset_size), options_(options), seed_(seed), start_(start) {
    if (options_.batch_size <= 0)
      throw ConfigError("keel: batch_size must be positive, got " + std::to_string(options_.batch_size));
    if (options_.world_size <= 0 || options_.rank < 0 || options_.rank >= options_.world_size)
      throw ConfigError("keel: rank " + std::to_string(options_.rank) + " is outside world_size " +
                        std::to_string(options_.world_size));
    if (size_ <= 0) throw ConfigError("keel: the training dataset is empty");
    if (start_ < 0 || start_ > size_)  // (start == size: the epoch was trained to its end)
      throw ConfigError("keel: an epoch cannot start at sample " + std::to_string(start_) + " of " +
                        std::to_string(size_));
    // Every rank gets the same number of samples: the order is padded by wrapping around
    // (or truncated with drop_last), as torch.utils.data.DistributedSampler does.
    const std::int64_t world = options_.world_size;
    const std::int64_t left = size_ - start_;
    if (!options_.even) per_rank_ = (left - options_.rank + world - 1) / world;
    else per_rank_ = options_.drop_last ? left / world : (left + world - 1) / world;
    if (left == 0) per_rank_ = 0;
    batches_ = options_.drop_last ? per_rank_ / options_.batch_size
                                  : (per_rank_ + options_.batch_size - 1) / options_.batch_size;
    // (The rest of a resumed epoch may hold less than one batch per rank: with drop_last it has none.)
    if (batches_ == 0 && options_.drop_last && start_ == 0)
      throw ConfigError("keel: with drop_last, batch_size " + std::to_string(options_.batch_size) +
                        " exceeds the " + std::to_string(per_rank_) +
                        " samples per epoch, so an epoch has no batch");
  }

  /// The same epochs from position `start` of their order on: the rest of an epoch resumed with
  /// another batch size or number of processes.
  EpochSampler starting_at(std::int64_t start) const { return EpochSampler(size_, options_, seed_, start); }

  std::int64_t dataset_size() const noexcept { return size_; }
  std::int64_t batches_per_epoch() const noexcept { return batches_; }
  const SamplerOptions& options() const noexcept { return options_; }
  std::uint64_t seed() const noexcept { return seed_; }
  std::int64_t start() const noexcept { return start_; }

  /// This rank's sample indices for the whole epoch, in order.
  std::vector<std::int64_t> epoch_order(std::int64_t epoch) const {
    std::vector<std::int64_t> all(static_cast<std::size_t>(size_));
    std::iota(all.begin(), all.end(), std::int64_t{0});
    if (options_.shuffle) {
      SplitMix64 rng(derive_seed(seed_, static_cast<std::uint64_t>(epoch)));
      for (std::size_t i = all.size() - 1; i > 0; --i)  // Fisher-Yates
        std::swap(all[i], all[rng.below(i + 1)]);
    }
    std::vector<std::int64_t> mine;
    mine.reserve(static_cast<std::size_t>(per_rank_));
    for (std::int64_t i = 0; i < per_rank_; ++i) {
      const std::int64_t position = start_ + i * options_.world_size + options_.rank;
      mine.push_back(all[static_cast<std::size_t>(position % size_)]);
    }
    return mine;
  }

  /// The indices of batch `batch` given the epoch's order.
  std::vector<std::int64_t> batch(const std::vector<std::int64_t>& order, std::int64_t batch) const {
    const std::int64_t begin = batch * options_.batch_size;
    const std::int64_t end = std::min<std::int64_t>(begin + options_.batch_size, per_rank_);
    return {order.begin() + begin, order.begin() + end};
  }

 private:
  std::int64_t size_;
  SamplerOptions options_;
  std::uint64_t seed_;
  std::int64_t start_ = 0;
  std::int64_t per_rank_ = 0;
  std::int64_t batches_ = 0;
};

}  // namespace keel::data
