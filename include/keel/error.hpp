#pragma once
// The exceptions keel throws. Every message names the offending value and what to do.

#include <stdexcept>
#include <string>
#include <vector>

namespace keel {

/// A user error in how keel was configured or called (bad option value, wrong dataset...).
class ConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A loss or gradient that is NaN or infinite, under NonFinitePolicy::stop. Nothing was
/// applied: the parameters are those before the step, and no checkpoint holds the bad values.
class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A checkpoint that cannot be written, read or applied. `problems()` lists every problem
/// found, not only the first, so that one failed resume tells the whole story.
class CheckpointError : public std::runtime_error {
 public:
  CheckpointError(std::string path, std::vector<std::string> problems)
      : std::runtime_error(format(path, problems)),
        path_(std::move(path)),
        problems_(std::move(problems)) {}

  const std::string& path() const noexcept { return path_; }
  const std::vector<std::string>& problems() const noexcept { return problems_; }

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

}  // namespace keel
