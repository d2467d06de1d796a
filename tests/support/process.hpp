#pragma once
// Running child processes from tests: run to completion capturing output, or start one and
// kill it at a chosen moment.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace keel_test {

struct ProcessResult {
  int exit_code = -1;    ///< exit status, or -1 if killed by a signal
  int signal = 0;        ///< the signal that ended it, or 0
  std::string output;    ///< stdout and stderr together
};

/// A started child process whose stdout and stderr go to a pipe.
class Process {
 public:
  explicit Process(const std::vector<std::string>& argv) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      std::fprintf(stderr, "exec %s failed: %s\n", args[0], std::strerror(errno));
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }

  pid_t pid() const { return pid_; }

  /// Reads output until `timeout` passes or the child closes its end; true if it closed.
  bool pump(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{out_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      char buffer[4096];
      const ssize_t n = ::read(out_, buffer, sizeof buffer);
      if (n <= 0) return true;
      output_.append(buffer, static_cast<std::size_t>(n));
    }
  }

  /// Reads output until it contains `text` (true), the child closes its end, or `timeout`.
  bool pump_until(const std::string& text, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (output_.find(text) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      if (pump(std::min(left, std::chrono::milliseconds(20))) && output_.find(text) == std::string::npos) return false;
    }
    return true;
  }

  void kill(int signal) { ::kill(pid_, signal); }

  /// Waits for the child to end (reading its output), killing it after `timeout`.
  ProcessResult wait(std::chrono::seconds timeout = std::chrono::seconds(600)) {
    if (!pump(timeout)) ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    ProcessResult result;
    result.output = output_;
    if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
    return result;
  }

  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string output_;
};

inline ProcessResult run(const std::vector<std::string>& argv,
                         std::chrono::seconds timeout = std::chrono::seconds(600)) {
  Process p(argv);
  return p.wait(timeout);
}

/// The lines of `text` that start with `prefix`, sorted (processes that run at once print in any order).
inline std::vector<std::string> lines_starting(const std::string& text, const std::string& prefix) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  return lines;
}

/// The value of the last line `key=value` in a program's output, or nullopt.
inline std::optional<std::string> value_of(const std::string& output, const std::string& key) {
  std::optional<std::string> found;
  std::size_t at = 0;
  const std::string prefix = key + "=";
  while ((at = output.find(prefix, at)) != std::string::npos) {
    if (at == 0 || output[at - 1] == '\n') {
      const std::size_t end = output.find('\n', at);
      found = output.substr(at + prefix.size(), end == std::string::npos ? std::string::npos : end - at - prefix.size());
    }
    at += prefix.size();
  }
  return found;
}

}  // namespace keel_test
