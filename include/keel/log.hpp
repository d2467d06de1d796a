#pragma once
// keel's notices ("resumed from ...") and warnings ("checkpoint ... skipped") go through one
// sink, standard error by default. A program that logs elsewhere (a file, its own logger, a
// test that collects them) replaces the sink once.
//
//   keel::set_log_sink([](keel::LogLevel level, const std::string& message) { ... });

#include <functional>
#include <iostream>
#include <mutex>
#include <string>
#include <utility>

namespace keel {

enum class LogLevel { notice, warning };

/// Receives one complete message (no "keel:" prefix, no newline).
using LogSink = std::function<void(LogLevel, const std::string&)>;

namespace detail {
struct LogState {
  std::mutex mutex;  // loader threads and the training thread may both report
  LogSink sink;
};
inline LogState& log_state() {
  static LogState state;
  return state;
}
inline void write_to_stderr(LogLevel level, const std::string& message) {
  std::cerr << (level == LogLevel::warning ? "keel: warning: " : "keel: ") << message << "\n";
}
}  // namespace detail

/// Sends keel's messages to `sink` from now on and returns the previous one; an empty sink
/// restores the default (standard error, "keel: warning: <message>" and "keel: <message>").
inline LogSink set_log_sink(LogSink sink) {
  auto& state = detail::log_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  return std::exchange(state.sink, std::move(sink));
}

inline void log(LogLevel level, const std::string& message) {
  auto& state = detail::log_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  if (state.sink) {
    state.sink(level, message);
  } else {
    detail::write_to_stderr(level, message);
  }
}
inline void warn(const std::string& message) { log(LogLevel::warning, message); }
inline void notice(const std::string& message) { log(LogLevel::notice, message); }

}  // namespace keel
