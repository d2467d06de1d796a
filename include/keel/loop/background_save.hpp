#pragma once
// One checkpoint write at a time on a thread of its own (TrainerOptions::async_save): the
// training thread hands over a job and collects its outcome later, at the next save, the end
// of fit, a stop signal or an exception. The job's exception is kept, not lost.

#include <exception>
#include <functional>
#include <thread>
#include <utility>

namespace keel::loop {

class BackgroundSave {
 public:
  BackgroundSave() = default;
  BackgroundSave(const BackgroundSave&) = delete;
  BackgroundSave& operator=(const BackgroundSave&) = delete;
  /// Waits for the job in flight (its outcome is dropped: the owner collects it first when it
  /// can; a destructor cannot report it).
  ~BackgroundSave() {
    if (thread_.joinable()) thread_.join();
  }

  /// Whether a job was started and not collected yet.
  bool in_flight() const noexcept { return thread_.joinable(); }

  /// Starts `job` on its own thread. Call only when nothing is in flight.
  void start(std::function<void()> job) {
    error_ = nullptr;
    thread_ = std::thread([this, job = std::move(job)] {
      try {
        job();
      } catch (...) {
        error_ = std::current_exception();
      }
    });
  }

  /// Waits for the job in flight, if any, and returns its exception (null: it succeeded, or
  /// there was none).
  std::exception_ptr collect() {
    if (!thread_.joinable()) return nullptr;
    thread_.join();  // (the join orders the job's writes before what follows)
    return std::exchange(error_, nullptr);
  }

 private:
  std::thread thread_;
  std::exception_ptr error_;
};

}  // namespace keel::loop
