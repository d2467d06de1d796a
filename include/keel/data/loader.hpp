#pragma once
// The batch loader: worker threads read and assemble batches ahead of the training thread and
// hand them over strictly in order, through a bounded window of prefetched batches.
//
// Which samples form batch b, and their per-sample randomness, are fixed before any worker
// runs (EpochSampler, SampleContext), so the batches are the same whatever the worker count,
// whichever worker loads them and in whatever order they finish. A worker's exception is kept
// with its batch and re-raised in the training thread when that batch is asked for. The
// destructor stops and joins every worker, so an early exit (max_steps, an exception, a stop
// request) leaves no thread behind.

#include <keel/data/dataset.hpp>
#include <keel/data/sampler.hpp>
#include <keel/detail/helper_thread.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace keel::data {

template <class Dataset>
class BatchLoader {
 public:
  using Batch = batch_t<Dataset>;

  /// Loads the batches of `epoch` from `first_batch` on, with `workers` threads (0: in the
  /// calling thread, on demand), keeping at most `prefetch` batches (0: twice the workers)
  /// ahead of the consumer.
  BatchLoader(Dataset& dataset, const EpochSampler& sampler, std::int64_t epoch, std::int64_t first_batch,
              SampleContext context, int workers, int prefetch)
      : dataset_(dataset),
        sampler_(sampler),
        order_(sampler.epoch_order(epoch)),
        end_(sampler.batches_per_epoch()),
        context_(context),
        prefetch_(prefetch > 0 ? prefetch : 2 * std::max(workers, 1)),
        next_to_claim_(first_batch),
        next_to_deliver_(first_batch) {
    threads_.reserve(static_cast<std::size_t>(std::max(workers, 0)));
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }

  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  ~BatchLoader() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    can_claim_.notify_all();
    for (auto& thread : threads_) thread.join();
  }

  /// The next batch in order. Rethrows the exception that loading it raised.
  Batch next() {
    if (threads_.empty()) return load(next_to_deliver_++);
    std::unique_lock<std::mutex> lock(mutex_);
    const std::int64_t wanted = next_to_deliver_;
    ready_cv_.wait(lock, [&] { return ready_.count(wanted) != 0; });
    Slot slot = std::move(ready_.at(wanted));
    ready_.erase(wanted);
    ++next_to_deliver_;
    lock.unlock();
    can_claim_.notify_one();  // one slot freed: one worker may claim one batch
    if (slot.error) std::rethrow_exception(slot.error);
    return std::move(*slot.batch);
  }

  /// The sample indices of batch `b`.
  std::vector<std::int64_t> indices(std::int64_t b) const { return sampler_.batch(order_, b); }

 private:
  struct Slot {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };

  Batch load(std::int64_t b) { return fetch_batch(dataset_, indices(b), context_); }

  void work() {
    keel::detail::block_stop_signals_in_this_thread();  // they belong to the training thread

    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      can_claim_.wait(lock, [&] {
        return stopping_ || next_to_claim_ >= end_ || next_to_claim_ < next_to_deliver_ + prefetch_;
      });
      if (stopping_ || next_to_claim_ >= end_) return;
      const std::int64_t b = next_to_claim_++;
      lock.unlock();
      Slot slot;
      try {
        slot.batch.emplace(load(b));
      } catch (...) {
        slot.error = std::current_exception();
      }
      lock.lock();
      ready_.emplace(b, std::move(slot));
      ready_cv_.notify_one();  // only the training thread waits here
    }
  }

  Dataset& dataset_;
  const EpochSampler& sampler_;
  const std::vector<std::int64_t> order_;
  const std::int64_t end_;
  const SampleContext context_;
  const std::int64_t prefetch_;

  std::mutex mutex_;
  std::condition_variable can_claim_;  // workers: a batch may be claimed, or stop
  std::condition_variable ready_cv_;   // consumer: a batch is ready
  std::map<std::int64_t, Slot> ready_;
  std::int64_t next_to_claim_;
  std::int64_t next_to_deliver_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace keel::data
