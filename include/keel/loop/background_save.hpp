#pragma once
// One checkpoint write at a time on a thread of its own (TrainerOptions::async_save): the
// training thread hands over a job and collects its outcome later, at the next save, the end
// of fit, a stop signal or an exception. The job's exception is kept, not lost. The thread is
// started with the first job and then waits for the next one: starting a thread per save cost
// a quarter of a millisecond of the training thread's time, as much as copying a 1 M-parameter
// state (bench/README.md, "Checkpoints"). A process that forks after the first save must not
// let the child destroy this object: the thread does not exist there.

#include <keel/detail/helper_thread.hpp>

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <stdexcept>
#include <utility>

#include <pthread.h>
#ifdef __linux__
#include <sched.h>
#endif

namespace keel::loop {

class BackgroundSave {
 public:
  BackgroundSave() = default;
  BackgroundSave(const BackgroundSave&) = delete;
  BackgroundSave& operator=(const BackgroundSave&) = delete;
  /// Waits for the job in flight (its outcome is dropped: the owner collects it first when it
  /// can; a destructor cannot report it), then ends the thread.
  ~BackgroundSave() {
    if (!thread_.joinable()) return;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }

  /// Whether a job was started and not collected yet (ask from the thread that starts them).
  bool in_flight() const noexcept { return in_flight_; }

  /// Hands `job` to the writing thread (started here the first time). Call only when nothing
  /// is in flight.
  void start(std::function<void()> job) {
    if (!job) throw std::logic_error("keel: BackgroundSave::start was given an empty job");
    if (!thread_.joinable()) thread_ = std::thread([this] { serve(); });
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      job_ = std::move(job);
      done_ = false;
      error_ = nullptr;
    }
    in_flight_ = true;
    wake_.notify_one();
  }

  /// Waits for the job in flight, if any, and returns its exception (null: it succeeded, or
  /// there was none). The mutex orders the job's writes before what follows.
  std::exception_ptr collect() {
    if (!in_flight_) return nullptr;
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [this] { return done_; });
    in_flight_ = false;
    return std::exchange(error_, nullptr);
  }

 private:
  /// The writing thread: runs each job handed over, until told to quit with none waiting.
  void serve() {
    keel::detail::block_stop_signals_in_this_thread();  // they belong to the training thread
#ifdef __linux__
    // Woken with a job, a normal thread preempts the training thread it was woken by (the
    // scheduler favors a thread that slept), which then waits milliseconds for the write's
    // first slice. A batch thread has the same share of the CPU but does not preempt on waking.
    const sched_param normal{};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &normal);  // (a failure costs only that)
#endif
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return job_ || quit_; });
      if (!job_) return;  // quit_, and the last job is done
      std::function<void()> job = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      std::exception_ptr error;
      try {
        job();
      } catch (...) {
        error = std::current_exception();
      }
      job = nullptr;  // what the job holds is released before it counts as done
      lock.lock();
      error_ = error;
      done_ = true;
      finished_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;      // a job or quit_ for the writing thread
  std::condition_variable finished_;  // done_ for the training thread
  std::function<void()> job_;         // handed over, not yet taken
  std::exception_ptr error_;          // the finished job's
  bool done_ = false;
  bool quit_ = false;
  bool in_flight_ = false;  // the training thread's own record: started, not collected
  std::thread thread_;      // last: started after, and joined before, the members above go
};

}  // namespace keel::loop
