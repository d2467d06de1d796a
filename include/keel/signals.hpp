#pragma once
// Graceful stops on preemption signals (SIGTERM from a cluster scheduler, SIGINT from Ctrl-C,
// SIGUSR1 as a scheduler's early warning). While fit() runs, the handler only records the
// signal; the Trainer finishes the optimizer step in progress, writes a checkpoint and throws
// keel::Interrupted, whose exit_status() (128 + signal) is the conventional status for a program
// ended by that signal. Further signals while that happens are noted and ignored, so a second
// Ctrl-C cannot tear the checkpoint write; SIGKILL (or Ctrl-\) still ends the process at once,
// and even then the previous checkpoint stays whole (writes are atomic).

#include <keel/error.hpp>

#include <atomic>
#include <csignal>
#include <cstring>
#include <string>
#include <vector>

#include <signal.h>
#include <unistd.h>

namespace keel {

/// Thrown by fit() after a stop signal, once the checkpoint is written.
class Interrupted : public Error {
 public:
  explicit Interrupted(int signal, const std::string& checkpoint)
      : Error("keel: stopped by " + signal_name(signal) +
                           (checkpoint.empty() ? std::string(" (no checkpoint_dir, so no checkpoint was written)")
                                               : " after saving " + checkpoint + "; run again to resume")),
        signal_(signal) {}

  int signal() const noexcept { return signal_; }
  /// 128 + the signal number: what a shell reports for a process ended by that signal, and
  /// what job schedulers (Slurm, Kubernetes) read as "terminated by signal".
  int exit_status() const noexcept override { return 128 + signal_; }

  static std::string signal_name(int signal) {
    switch (signal) {
      case SIGINT: return "SIGINT";
      case SIGTERM: return "SIGTERM";
      case SIGUSR1: return "SIGUSR1";
      case SIGUSR2: return "SIGUSR2";
      case SIGHUP: return "SIGHUP";
      default: return "signal " + std::to_string(signal);
    }
  }

 private:
  int signal_;
};

namespace detail {
// The first stop signal received (0: none) and how many arrived. Lock-free atomics are
// async-signal-safe; nothing else is touched in the handler except write(2).
inline std::atomic<int> stop_signal{0};
inline std::atomic<int> stop_signal_count{0};

inline void record_stop_signal(int signal) {
  int none = 0;
  const bool first = stop_signal.compare_exchange_strong(none, signal);
  stop_signal_count.fetch_add(1);
  const char* text = first ? "\nkeel: stop signal received: finishing the current step and saving a checkpoint "
                             "(SIGKILL or Ctrl-\\ stops at once)\n"
                           : "\nkeel: still saving the checkpoint; the extra signal is ignored\n";
  const ssize_t written = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)written;
}
}  // namespace detail

/// Installs the stop handler for `signals` for its lifetime and restores the previous
/// handlers afterwards. One at a time per process (fit() is not reentrant anyway).
class StopSignalGuard {
 public:
  explicit StopSignalGuard(const std::vector<int>& signals) {
    static_assert(std::atomic<int>::is_always_lock_free, "keel: the signal flag must be lock-free");
    detail::stop_signal.store(0);
    detail::stop_signal_count.store(0);
    for (int signal : signals) {
      if (signal <= 0 || signal >= NSIG || signal == SIGKILL || signal == SIGSTOP)
        throw ConfigError("keel::TrainerOptions: stop_signals holds " + std::to_string(signal) +
                          ", which cannot be caught; use signals such as SIGTERM, SIGINT, SIGUSR1");
      struct sigaction action {};
      action.sa_handler = &detail::record_stop_signal;
      sigemptyset(&action.sa_mask);
      action.sa_flags = SA_RESTART;  // blocking reads and waits carry on; the flag is polled
      struct sigaction previous {};
      if (::sigaction(signal, &action, &previous) != 0)
        throw ConfigError("keel: cannot install a handler for " + Interrupted::signal_name(signal) + ": " +
                          std::strerror(errno));
      installed_.push_back({signal, previous});
    }
  }
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;
  ~StopSignalGuard() {
    for (auto it = installed_.rbegin(); it != installed_.rend(); ++it) ::sigaction(it->first, &it->second, nullptr);
  }

  /// The first stop signal received since the guard was installed, or 0.
  static int pending() noexcept { return detail::stop_signal.load(); }

 private:
  std::vector<std::pair<int, struct sigaction>> installed_;
};

}  // namespace keel
