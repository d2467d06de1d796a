#pragma once
// The configuration fingerprint: everything about a run that must be equal for a resume to
// continue the same training (component types and versions, hyper-parameters, data order
// settings). Kept as readable key/value pairs so a refused resume says exactly what differs.

#include <cereal/cereal.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel {

/// One configuration entry that differs between a checkpoint and a run ("(absent)" where one
/// of them lacks it); a fork records each in the run's lineage.
struct ConfigChange {
  std::string key, before, after;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("key", key), cereal::make_nvp("before", before), cereal::make_nvp("after", after));
  }
};

/// The shortest decimal form that reads back as exactly `value` (0.005, not 0.0050000000000000001):
/// how the fingerprint, and TrainerOptions::config of a number, write one.
inline std::string shortest_decimal(double value) {
  char buffer[40];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

class Fingerprint {
 public:
  using Entry = std::pair<std::string, std::string>;

  void add(std::string key, std::string value) {
    entries_.emplace_back(std::move(key), std::move(value));
  }
  void add(std::string key, const char* value) { add(std::move(key), std::string(value)); }
  void add(std::string key, bool value) { add(std::move(key), std::string(value ? "true" : "false")); }
  /// A number as shortest_decimal writes it.
  void add(std::string key, double value) { add(std::move(key), shortest_decimal(value)); }
  template <class Int, std::enable_if_t<std::is_integral_v<Int> && !std::is_same_v<Int, bool>, int> = 0>
  void add(std::string key, Int value) {
    add(std::move(key), std::to_string(value));
  }

  const std::vector<Entry>& entries() const noexcept { return entries_; }
  /// The value of `key`, if the fingerprint has it.
  std::optional<std::string> value(const std::string& key) const {
    const Entry* entry = find(key);
    return entry ? std::optional<std::string>(entry->second) : std::nullopt;
  }

  static constexpr const char* absent = "(absent)";

  /// Every entry that differs between `saved` (from a checkpoint, "before") and this run.
  std::vector<ConfigChange> changes_from(const Fingerprint& saved) const {
    std::vector<ConfigChange> out;
    for (const auto& [key, value] : saved.entries_) {
      const Entry* mine = find(key);
      if (!mine || mine->second != value) out.push_back({key, value, mine ? mine->second : absent});
    }
    for (const auto& [key, value] : entries_)
      if (!saved.find(key)) out.push_back({key, absent, value});
    return out;
  }

  /// One line per difference between `saved` (from a checkpoint) and this run.
  std::vector<std::string> differences_from(const Fingerprint& saved) const {
    std::vector<std::string> out;
    for (const auto& change : changes_from(saved)) out.push_back(describe(change));
    return out;
  }
  static std::string describe(const ConfigChange& c) {
    if (c.after == absent) return "configuration '" + c.key + "' is '" + c.before + "' in the checkpoint but absent in this run";
    if (c.before == absent) return "configuration '" + c.key + "' is '" + c.after + "' in this run but absent in the checkpoint";
    return "configuration '" + c.key + "' is '" + c.before + "' in the checkpoint but '" + c.after + "' in this run";
  }

  const Entry* find(const std::string& key) const {
    for (const auto& entry : entries_)
      if (entry.first == key) return &entry;
    return nullptr;
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("entries", entries_));
  }

 private:
  std::vector<Entry> entries_;
};

namespace detail {
/// A component that adds its configuration to the fingerprint:
/// `void describe(keel::Fingerprint&, const std::string& prefix) const`. How it was configured,
/// never what it has done: fit describes every component once, when it starts, for all of its
/// checkpoints (loop::CheckpointSaver::fit_starts).
template <class T, class = void>
struct has_describe : std::false_type {};
template <class T>
struct has_describe<T, std::void_t<decltype(std::declval<const T&>().describe(std::declval<Fingerprint&>(),
                                                                                std::declval<const std::string&>()))>>
    : std::true_type {};
}  // namespace detail

}  // namespace keel
