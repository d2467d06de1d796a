#pragma once
// The exceptions keel throws. Every one derives from keel::Error, whose exit_status() is the
// status a program should end with, so a `main` maps any keel failure to an exit code in one
// catch (keel::exit_status). Every message names the offending value and what to do.

#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace keel {

/// The base of every keel exception.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  /// The process exit status this failure stands for (1 unless a subclass says otherwise).
  virtual int exit_status() const noexcept { return 1; }
};

/// A user error in how keel was configured or called (bad option value, wrong dataset...).
class ConfigError : public Error {
 public:
  using Error::Error;
  int exit_status() const noexcept override { return 2; }
};

/// A checkpoint that cannot be read or applied. `problems()` lists every problem found, not
/// only the first, so that one failed resume tells the whole story.
class CheckpointError : public Error {
 public:
  /// `hint`, when not empty, says how to proceed; it follows the list of problems.
  CheckpointError(std::string path, std::vector<std::string> problems, const std::string& hint = {})
      : Error(format(path, problems) + (hint.empty() ? "" : "\n" + hint)), path_(std::move(path)),
        problems_(std::move(problems)) {}

  const std::string& path() const noexcept { return path_; }
  const std::vector<std::string>& problems() const noexcept { return problems_; }
  int exit_status() const noexcept override { return 3; }

 private:
  static std::string format(const std::string& path, const std::vector<std::string>& problems) {
    std::string out = "keel: checkpoint '" + path + "' ";
    if (problems.size() == 1) return out + problems.front();
    out += "has " + std::to_string(problems.size()) + " problems:";
    for (const auto& p : problems) out += "\n  - " + p;
    return out;
  }

  std::string path_;
  std::vector<std::string> problems_;
};

/// A load that failed after every check had passed, while it applied the state (reading the
/// tensors it had left in the file into place: an I/O error, or the file changed on disk
/// meanwhile): the state is partly from the checkpoint. The Trainer refuses to train, evaluate,
/// save or digest until a load succeeds.
class IncompleteLoadError : public CheckpointError {
 public:
  IncompleteLoadError(std::string path, const std::string& reason)
      : CheckpointError(std::move(path), {"could not be applied to the end after every check had passed (" + reason + ")"},
                        "The Trainer's state is now partly from this checkpoint: load a checkpoint again (this one, "
                        "once it reads, or another), or construct a new Trainer.") {}
};

// Also keel::Error, declared beside what throws them: ckpt::IoError (a checkpoint cannot be
// written, status 4), Interrupted (a stop signal, 128 + signal), data::LoadError (a sample
// cannot be loaded, 1).

/// A loss or gradient that is NaN or infinite, under NonFinitePolicy::stop. Nothing was
/// applied: the parameters are those before the step, and no checkpoint holds the bad values.
class NonFiniteError : public Error {
 public:
  using Error::Error;
  int exit_status() const noexcept override { return 5; }
};

/// The exit status for an exception leaving `main`: a keel::Error's own, 1 for anything else.
///   0 done, 1 other error, 2 bad configuration, 3 unusable checkpoint, 4 checkpoint not
///   written, 5 non-finite loss or gradient, 128 + N stopped by signal N after saving.
inline int exit_status(const std::exception& e) noexcept {
  if (const auto* error = dynamic_cast<const Error*>(&e)) return error->exit_status();
  return 1;
}

}  // namespace keel
