#pragma once
// How one section of a checkpoint is written and loaded. A section entry (keel/state/sections.hpp
// lists them all) describes one piece of state:
//
//   name(), legacy_name()   its name in the file (and the name older keel versions gave it)
//   type(), accepts(type)   the type it holds; whether a file's type may be read into it
//   version(), oldest_version()  the layout written, and the oldest layout still read
//   capture()               the value to write
//   stage()                 a fresh object to parse the file's bytes into
//   check(staged, plan)     every reason the staged value cannot be applied
//   commit(staged)          apply it (only once every section checked out)
//
// write_sections() and stage_sections() iterate a tuple of entries; they hold no knowledge of
// any particular section.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/parse_section.hpp>

#include <cereal/cereal.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::state {

/// The result of staging a checkpoint: every problem found (all are reported together), the
/// warnings, and the commits that apply the staged state once there is no problem.
struct LoadPlan {
  std::vector<std::string> problems;
  std::vector<std::string> warnings;
  std::vector<std::function<void()>> commits;
  std::vector<std::string> staged;  ///< sections parsed and checked without a problem

  void problem(std::string line) { problems.push_back(std::move(line)); }
  void problems_from(std::vector<std::string> lines) {
    for (auto& line : lines) problems.push_back(std::move(line));
  }
  bool was_staged(const std::string& name) const {
    for (const auto& s : staged)
      if (s == name) return true;
    return false;
  }
  /// Applies everything, in section order. Call only when `problems` is empty.
  void commit() {
    for (auto& c : commits) c();
  }
};

namespace detail {
template <class T, class = void>
struct declares_keel_version : std::false_type {};
template <class T>
struct declares_keel_version<T, std::void_t<decltype(T::keel_version)>> : std::true_type {};
}  // namespace detail

/// The layout version of a component's section: its `static constexpr std::uint32_t
/// keel_version` (keel's own components) or else its CEREAL_CLASS_VERSION (0 when none).
template <class T>
std::uint32_t layout_version() {
  if constexpr (detail::declares_keel_version<T>::value) {
    return T::keel_version;
  } else {
    return cereal::detail::Version<T>::version;
  }
}

/// Appends every entry's section to `writer` (a ckpt::ContainerWriter, or a DigestWriter).
template <class Format, class Writer, class Entries>
void write_sections(Writer& writer, Entries& entries) {
  std::apply(
      [&](auto&... entry) {
        auto one = [&](auto& e) {
          const std::string name = e.name();
          writer.section(name, e.type(), e.version(), [&](std::ostream& stream) {
            const auto& value = e.capture();  // a reference, or a view of the live tensors
            typename Format::output_archive archive(stream);
            archive(cereal::make_nvp(name, value));
          });
        };
        (one(entry), ...);
      },
      entries);
}

/// Finds the entry's section in the manifest, by its name or else by its legacy name.
template <class Entry>
const ckpt::SectionInfo* find_section(const ckpt::Manifest& manifest, const Entry& entry) {
  if (const auto* info = manifest.find(entry.name())) return info;
  const std::string legacy = entry.legacy_name();
  return legacy.empty() ? nullptr : manifest.find(legacy);
}

/// Parses one entry's section into a staging object and checks it; on success, adds the
/// commit that applies it. Problems go to `plan`; nothing live changes here. `offline`
/// (keel-ckpt): a section of a type the entry cannot read stays opaque instead of a problem.
template <class Format, class Entry>
void stage_section(const ckpt::Container& container, Entry& entry, LoadPlan& plan, bool offline = false) {
  using Saved = std::decay_t<decltype(entry.stage())>;
  const std::string name = entry.name();
  const ckpt::SectionInfo* info = find_section(container.manifest, entry);
  if (!info) {
    plan.problem("section '" + name + "' (" + entry.type() + ") is missing");
    return;
  }
  if (!entry.accepts(info->type)) {
    if (offline) return;
    plan.problem("section '" + name + "' holds " + info->type + " but this run uses " + entry.type());
    return;
  }
  if (info->version > entry.version()) {
    plan.problem("section '" + name + "' (" + info->type + ") has layout version " + std::to_string(info->version) +
                 ", written by a newer keel; this keel reads versions up to " + std::to_string(entry.version()) +
                 ": upgrade keel to read it");
    return;
  }
  if (info->version < entry.oldest_version()) {
    plan.problem("section '" + name + "' (" + info->type + ") has layout version " + std::to_string(info->version) +
                 ", older than any this keel reads (" + std::to_string(entry.oldest_version()) +
                 " and later): load it with the keel release that wrote it and save it again there, or start afresh");
    return;
  }
  auto staged = std::make_shared<Saved>(entry.stage());
  try {
    ckpt::parse_section<Format>(container, *info, *staged);  // older layouts: the versioned serialize reads them
  } catch (const std::exception& e) {
    plan.problem(e.what());
    return;
  }
  const std::size_t problems_before = plan.problems.size();
  entry.check(static_cast<const Saved&>(*staged), plan);
  if (plan.problems.size() == problems_before) plan.staged.push_back(name);
  if constexpr (std::is_move_assignable_v<Saved>) {
    plan.commits.push_back([&entry, staged] { entry.commit(std::move(*staged)); });
  } else {
    // Not assignable (a callback holding a reference, say): parse the bytes, which parsed once
    // already, straight into the live object.
    plan.commits.push_back([&entry, &container, info] { ckpt::parse_section<Format>(container, *info, entry.live); });
  }
}

/// Stages every entry. A manifest section that no entry claims is a problem (a checkpoint of
/// another Trainer composition), except `offline`, where it stays opaque (a user's callback).
template <class Format, class Entries>
void stage_sections(const ckpt::Container& container, Entries& entries, LoadPlan& plan, bool offline = false) {
  std::apply([&](auto&... entry) { (stage_section<Format>(container, entry, plan, offline), ...); }, entries);
  if (offline) return;
  for (const auto& s : container.manifest.sections) {
    const bool claimed = std::apply(
        [&](const auto&... entry) {
          return ((s.name == entry.name() || (!entry.legacy_name().empty() && s.name == entry.legacy_name())) || ... ||
                  false);
        },
        entries);
    if (!claimed) plan.problem("unexpected section '" + s.name + "' (" + s.type + ") that this Trainer does not have");
  }
}

}  // namespace keel::state
