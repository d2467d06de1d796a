#pragma once
// A run's lineage: the forks (resumes that changed the configuration, allowed explicitly) and
// warm starts it descends from, oldest first. Saved in the "lineage" section of every
// checkpoint, so it is part of the state digest; keel-ckpt info prints it. The schedule of an
// extended run is derived from it (keel/sched/scheduler_base.hpp), which is why a run killed
// after a fork and resumed continues the very same schedule.

#include <keel/error.hpp>
#include <keel/fingerprint.hpp>

#include <cereal/cereal.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace keel {

/// What a schedule does when a fork changes the run's length (TrainerOptions::schedule_extension).
/// Factors are relative to the base learning rate (the optimizer's lr option).
struct ScheduleExtension {
  enum class Kind : std::uint8_t { rescale = 0, append_constant = 1, append_cosine = 2 };
  Kind kind = Kind::rescale;
  double level = -1.0;  ///< append_cosine: the new phase's peak; append_constant: its level (< 0: where the old schedule ended)

  /// The new configuration from the fork step on: at step s the learning rate is the one a run
  /// configured this way from the start would use at s (for a longer cosine, a jump up to the
  /// longer curve, then its decay).
  static ScheduleExtension rescale() { return {}; }
  /// The old schedule unchanged until its end, then constant at `level` x base (default: the
  /// learning rate the old schedule ended with).
  static ScheduleExtension append_constant(double level = -1.0) { return {Kind::append_constant, level}; }
  /// The old schedule unchanged until its end, then a new cosine from `peak` x base down to the
  /// new schedule's floor at its end.
  static ScheduleExtension append_cosine(double peak = 1.0) { return {Kind::append_cosine, peak}; }

  /// "rescale", "append_constant", "append_constant(0.1)", "append_cosine(1)".
  std::string name() const {
    if (kind == Kind::rescale) return "rescale";
    std::string out = kind == Kind::append_cosine ? "append_cosine" : "append_constant";
    if (level >= 0.0) {
      char buffer[32];
      std::snprintf(buffer, sizeof buffer, "(%g)", level);
      out += buffer;
    }
    return out;
  }
  /// Parses name()'s forms (the example's --extend flag); throws ConfigError otherwise.
  static ScheduleExtension parse(const std::string& text) {
    const auto open = text.find('(');
    const std::string head = text.substr(0, open);
    double level = -1.0;
    if (open != std::string::npos) {
      if (text.back() != ')') throw ConfigError("keel: schedule extension '" + text + "' lacks its closing ')'");
      const std::string number = text.substr(open + 1, text.size() - open - 2);
      char* end = nullptr;
      level = std::strtod(number.c_str(), &end);
      if (number.empty() || *end != '\0' || !(level >= 0.0))
        throw ConfigError("keel: schedule extension '" + text + "': the level must be a number >= 0");
    }
    if (head == "rescale" && open == std::string::npos) return rescale();
    if (head == "append_constant" || head == "append-constant") return append_constant(level);
    if (head == "append_cosine" || head == "append-cosine") return append_cosine(open == std::string::npos ? 1.0 : level);
    throw ConfigError("keel: unknown schedule extension '" + text +
                      "'; use rescale, append_constant, append_constant(LEVEL), append_cosine or append_cosine(PEAK)");
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("kind", kind), cereal::make_nvp("level", level));
  }
};

/// Which state a warm start takes from its checkpoint (TrainerOptions::init_from).
enum class InitFrom : std::uint8_t {
  weights = 0,                ///< parameters and buffers; a fresh optimizer, scheduler, loop and data order
  weights_and_optimizer = 1,  ///< also the optimizer's per-parameter state (same optimizer type)
};

struct LineageEntry {
  enum class Kind : std::uint8_t { fork = 0, warm_start = 1 };
  Kind kind = Kind::fork;
  std::string source;             ///< the checkpoint file, as the run named it
  std::int64_t step = 0;          ///< its position
  std::int64_t epoch = 0;
  // A fork:
  std::vector<ConfigChange> changes;
  ScheduleExtension extension;
  std::vector<std::pair<std::string, std::string>> scheduler_before;  ///< the scheduler's configuration in the checkpoint
  std::vector<std::pair<std::string, std::string>> scheduler_after;   ///< and in the fork
  // A warm start:
  InitFrom init = InitFrom::weights;
  bool strict = true;
  std::vector<std::string> skipped;  ///< non-strict: each tensor not taken, and why

  /// For people (keel-ckpt info, the notice at a fork): one headline and one line per detail.
  std::vector<std::string> describe() const {
    std::vector<std::string> lines;
    const std::string where = "'" + source + "' at step " + std::to_string(step) + " (epoch " + std::to_string(epoch) + ")";
    if (kind == Kind::fork) {
      const std::string schedule =
          scheduler_before == scheduler_after ? "schedule unchanged" : "schedule extension " + extension.name();
      lines.push_back("forked from " + where + ", " + schedule + ", " +
                      std::to_string(changes.size()) + (changes.size() == 1 ? " change" : " changes"));
      for (const auto& c : changes) lines.push_back("  " + c.key + ": " + c.before + " -> " + c.after);
    } else {
      lines.push_back(std::string("warm start from ") + where + ": " +
                      (init == InitFrom::weights ? "weights only" : "weights and optimizer state") +
                      (strict ? ", strict" : ", non-strict, " + std::to_string(skipped.size()) + " skipped"));
      for (const auto& s : skipped) lines.push_back("  skipped " + s);
    }
    return lines;
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("kind", kind), cereal::make_nvp("source", source), cereal::make_nvp("step", step),
            cereal::make_nvp("epoch", epoch), cereal::make_nvp("changes", changes),
            cereal::make_nvp("extension", extension), cereal::make_nvp("scheduler_before", scheduler_before),
            cereal::make_nvp("scheduler_after", scheduler_after), cereal::make_nvp("init", init),
            cereal::make_nvp("strict", strict), cereal::make_nvp("skipped", skipped));
  }
};

struct Lineage {
  /// Layout version of the "lineage" section.
  static constexpr std::uint32_t keel_version = 1;
  std::vector<LineageEntry> entries;  ///< oldest first

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("entries", entries));
  }
};

/// Reads a component's configuration back from fingerprint entries (a fork's record of the
/// scheduler's configuration): `prefix` + key, as its describe() wrote them.
class SavedConfig {
 public:
  SavedConfig(const std::vector<std::pair<std::string, std::string>>& entries, std::string prefix)
      : entries_(entries), prefix_(std::move(prefix)) {}

  const std::string& text(const std::string& key) const {
    for (const auto& [k, v] : entries_)
      if (k == prefix_ + key) return v;
    throw ConfigError("keel: the recorded configuration has no '" + prefix_ + key + "'");
  }
  std::int64_t integer(const std::string& key) const {
    const std::string& value = text(key);
    char* end = nullptr;
    const long long out = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0')
      throw ConfigError("keel: the recorded configuration '" + prefix_ + key + "' is '" + value + "', not an integer");
    return out;
  }
  double real(const std::string& key) const {
    const std::string& value = text(key);
    char* end = nullptr;
    const double out = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0')
      throw ConfigError("keel: the recorded configuration '" + prefix_ + key + "' is '" + value + "', not a number");
    return out;
  }

 private:
  const std::vector<std::pair<std::string, std::string>>& entries_;
  std::string prefix_;
};

}  // namespace keel
