#pragma once
// What a thread keel starts beside the training thread (the loader's workers, the writer of
// background saves) does first: it blocks the stop signals, which belong to the training
// thread (signals.hpp decides how to stop; a helper thread taking one would delay that).

#include <csignal>

#include <pthread.h>
#include <signal.h>

namespace keel::detail {

/// Blocks SIGINT, SIGTERM and SIGUSR1 (keel's default stop signals) in the calling thread.
inline void block_stop_signals_in_this_thread() {
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGINT);
  sigaddset(&blocked, SIGTERM);
  sigaddset(&blocked, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
}

}  // namespace keel::detail
