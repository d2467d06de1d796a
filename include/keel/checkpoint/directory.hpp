#pragma once
// A directory of checkpoints: file names, the `last.ckpt` link, rotation, and the choice of
// the checkpoint to resume from.
//
// Files are named `step-<global step, 9 digits>.ckpt`, so the newest sorts last. `last.ckpt` is
// a symbolic link moved atomically after each new checkpoint is complete, so opening it always
// opens a complete checkpoint. Rotation runs only after the new checkpoint is committed and
// never deletes the newest one.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <keel/log.hpp>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace keel::ckpt {

/// The link to the checkpoint written last: "last" and the format's extension (last.ckpt).
inline std::string last_link_name(const std::string& extension = ".ckpt") { return "last" + extension; }

inline std::string step_file_name(std::int64_t global_step, const char* extension = ".ckpt") {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "step-%09lld%s", static_cast<long long>(global_step), extension);
  return buffer;
}

/// The global step in a checkpoint file name, or nullopt if the name is not one of keel's.
inline std::optional<std::int64_t> step_of_file_name(const std::string& name,
                                                     const std::string& extension = ".ckpt") {
  const std::string prefix = "step-";
  if (name.size() <= prefix.size() + extension.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - extension.size(), extension.size(), extension) != 0)
    return std::nullopt;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - extension.size());
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

struct CheckpointFile {
  fs::path path;
  std::int64_t global_step;
};

/// keel's checkpoint files in `directory`, newest (highest step) first.
inline std::vector<CheckpointFile> list_checkpoints(const fs::path& directory,
                                                    const std::string& extension = ".ckpt") {
  std::vector<CheckpointFile> out;
  std::error_code error;
  if (!fs::is_directory(directory, error)) return out;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    if (!entry.is_regular_file(error) || entry.is_symlink(error)) continue;
    if (auto step = step_of_file_name(entry.path().filename().string(), extension))
      out.push_back({entry.path(), *step});
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointFile& a, const CheckpointFile& b) { return a.global_step > b.global_step; });
  return out;
}

/// Which checkpoints rotation keeps: the newest `keep_last` (0: every one) and, in addition,
/// the `keep_best` with the best value of the monitored metric (recorded in each manifest as
/// the facts `monitor` and `monitor_value`).
struct Retention {
  std::int64_t keep_last = 3;
  std::int64_t keep_best = 0;
  std::string monitor;         ///< metric name, e.g. "val_loss"
  bool higher_is_better = false;
};

/// Deletes the checkpoints that `retention` does not keep. Call it only after the checkpoint
/// named `newest` is committed: that file is never deleted, whatever its step or metric.
/// Returns what could not be deleted, one line per file ("" when all went; a file already gone
/// is not a problem).
inline std::string rotate(const fs::path& directory, const Retention& retention, const std::string& newest,
                          const std::string& extension = ".ckpt") {
  if (retention.keep_last <= 0) return {};
  const auto files = list_checkpoints(directory, extension);  // newest first
  std::vector<bool> keep(files.size(), false);
  for (std::size_t i = 0; i < files.size(); ++i)
    keep[i] = files[i].path.filename() == newest || static_cast<std::int64_t>(i) < retention.keep_last;
  if (retention.keep_best > 0 && !retention.monitor.empty()) {
    std::vector<std::pair<double, std::size_t>> scored;  // (value, index), best first after sorting
    for (std::size_t i = 0; i < files.size(); ++i) {
      const auto manifest = read_manifest(files[i].path);
      if (!manifest || manifest->fact("monitor") != retention.monitor) continue;
      char* end = nullptr;
      const std::string text = manifest->fact("monitor_value");
      const double value = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || std::isnan(value)) continue;
      scored.emplace_back(retention.higher_is_better ? -value : value, i);
    }
    std::stable_sort(scored.begin(), scored.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });  // ties: newer first
    for (std::size_t k = 0; k < scored.size() && static_cast<std::int64_t>(k) < retention.keep_best; ++k)
      keep[scored[k].second] = true;
  }
  std::string problems;
  for (std::size_t i = 0; i < files.size(); ++i) {
    if (keep[i]) continue;
    std::error_code error;
    fs::remove(files[i].path, error);
    if (error && error != std::errc::no_such_file_or_directory)
      problems += (problems.empty() ? "" : "\n") + files[i].path.string() + ": " + error.message();
  }
  return problems;
}

/// The checkpoint to resume from in `directory`, or nullopt if there is none. The file that
/// `last.ckpt` (last<extension>) names comes first: it is the one written last, even when a run was restarted from
/// an older checkpoint and files with higher steps remain from the abandoned continuation. If it
/// is missing or fails verification, the others follow, highest step first. Each file skipped
/// gets a warning (keel::warn, standard error by default) with the reason.
inline std::optional<std::pair<fs::path, Container>> newest_valid_checkpoint(
    const fs::path& directory, const std::string& extension = ".ckpt") {
  std::vector<fs::path> candidates;
  std::error_code error;
  const fs::path link = directory / last_link_name(extension);
  if (fs::is_symlink(link, error)) {
    const fs::path target = fs::read_symlink(link, error);
    if (!error && !target.has_parent_path() && step_of_file_name(target.string(), extension))
      candidates.push_back(directory / target);
  }
  for (const auto& file : list_checkpoints(directory, extension))
    if (candidates.empty() || file.path != candidates.front()) candidates.push_back(file.path);
  for (const auto& path : candidates) {
    try {
      return std::make_pair(path, read_container(path));
    } catch (const CheckpointError& e) {
      warn("skipping " + std::string(e.what()));
    }
  }
  return std::nullopt;
}

/// Removes temporary files that a killed writer left in `directory` (`.<name>.tmp.<pid>` whose
/// process no longer exists), and those with this process's pid: called once the directory's
/// lock is held and before any write, they come from an earlier process that had the same pid
/// (in a container, often). Files of other live processes are left alone.
inline void remove_stale_temporaries(const fs::path& directory) {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    const auto at = name.rfind(".tmp.");
    if (name.empty() || name[0] != '.' || at == std::string::npos) continue;
    const std::string pid_text = name.substr(at + 5);
    if (pid_text.empty() || pid_text.size() > 9 || pid_text.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    if (pid == ::getpid() || (::kill(pid, 0) != 0 && errno == ESRCH)) {
      std::error_code ignored;
      fs::remove(entry.path(), ignored);
    }
  }
}

/// Creates the checkpoint directory if it is gone (IoError if it cannot). Part of every save's
/// write, so that with async_save it runs on the writing thread, and continue_on_save_error
/// covers it.
inline void ensure_checkpoint_directory(const fs::path& directory) {
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) throw IoError("create checkpoint directory", directory, error.value());
}

/// An exclusive lock on a checkpoint directory for the life of the object, so that two
/// trainers never write, rotate and resume in one directory at once. The kernel drops the
/// lock when its process ends, however it ends (kill -9 included), so no stale lock remains.
class DirectoryLock {
 public:
  explicit DirectoryLock(const fs::path& directory) {
    std::error_code error;
    fs::create_directories(directory, error);
    if (error) throw IoError("create checkpoint directory", directory, error.value());
    const fs::path path = directory / ".keel.lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw IoError("open lock file", path, errno);
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int lock_error = errno;
      char holder[32] = {};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      if (lock_error == EWOULDBLOCK)
        throw ConfigError("keel: another process" + (n > 0 ? " (pid " + std::string(holder, static_cast<std::size_t>(n)) + ")" : std::string()) +
                          " is training with checkpoint directory '" + directory.string() +
                          "'; use another checkpoint_dir or stop that run first");
      throw IoError("lock", path, lock_error);
    }
    const std::string pid = std::to_string(::getpid());
    if (::ftruncate(fd_, 0) == 0) {
      const ssize_t written = ::pwrite(fd_, pid.data(), pid.size(), 0);
      (void)written;  // the pid is only a courtesy for the message above
    }
  }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock() { ::close(fd_); }

 private:
  int fd_ = -1;
};

}  // namespace keel::ckpt
