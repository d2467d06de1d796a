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
//   absent_is_empty         (optional, static) a file without the section reads as stage():
//                           state that older keel versions did not write
//   reads_deferred_tensors  (optional, static) the section's large tensors stay in the file
//                           while staging (checkpoint/deferred_tensor.hpp): check() sees their
//                           dtype and shape, and commit() reads them into place
//   present()               (optional) false: this configuration has no such section (written
//                           and read by none)
//   ignored_when_absent     (optional, static) a file's section that this configuration has
//                           not (present() false) is left unread, not refused: a data-parallel
//                           job's per-rank streams, resumed by one process
//
// SectionList holds the entries behind one interface (SectionSlot), so that writing, staging
// and committing are plain code compiled once, whatever the Trainer type; it holds no
// knowledge of any particular section.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/deferred_tensor.hpp>
#include <keel/checkpoint/parse_section.hpp>
#include <keel/checkpoint/tensor_capture.hpp>

#include <cereal/cereal.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace keel::state {

/// What staging a checkpoint found: every problem (all are reported together), the warnings,
/// and the sections that parsed and checked out.
struct LoadPlan {
  std::vector<std::string> problems;
  std::vector<std::string> warnings;
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
};

/// One entry's staged value: parsed from the file and checked, not applied yet.
template <class Saved>
struct Staged {
  std::optional<Saved> value;
  const ckpt::SectionInfo* info = nullptr;
};

namespace detail {
template <class T, class = void>
struct declares_keel_version : std::false_type {};
template <class T>
struct declares_keel_version<T, std::void_t<decltype(T::keel_version)>> : std::true_type {};

/// An entry whose section exists only in some configurations (`bool present() const`): a
/// keel::Optional callback switched off writes and reads none.
template <class Entry, class = void>
struct has_presence : std::false_type {};
template <class Entry>
struct has_presence<Entry, std::void_t<decltype(bool(std::declval<const Entry&>().present()))>> : std::true_type {};
template <class Entry>
bool is_present(const Entry& entry) {
  if constexpr (has_presence<Entry>::value) {
    return entry.present();
  } else {
    return true;
  }
}

template <class Entry, class = void>
struct absent_is_empty : std::false_type {};
template <class Entry>
struct absent_is_empty<Entry, std::void_t<decltype(Entry::absent_is_empty)>>
    : std::bool_constant<Entry::absent_is_empty> {};

template <class Entry, class = void>
struct ignored_when_absent : std::false_type {};
template <class Entry>
struct ignored_when_absent<Entry, std::void_t<decltype(Entry::ignored_when_absent)>>
    : std::bool_constant<Entry::ignored_when_absent> {};

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

namespace detail {
template <class T, class = void>
struct versions_itself : std::false_type {};
template <class T>
struct versions_itself<T, std::void_t<decltype(std::uint32_t(std::declval<const T&>().keel_layout_version()))>>
    : std::true_type {};
}  // namespace detail

/// The layout version of a live component: that of the component a run-time choice
/// (keel::sched::OneOf) runs, else layout_version<T>().
template <class T>
std::uint32_t layout_version_of(const T& component) {
  if constexpr (detail::versions_itself<T>::value) {
    return component.keel_layout_version();
  } else {
    return layout_version<T>();
  }
}

/// Finds the entry's section in the manifest, by its name or else by its legacy name.
template <class Entry>
const ckpt::SectionInfo* find_section(const ckpt::Manifest& manifest, const Entry& entry) {
  if (const auto* info = manifest.find(entry.name())) return info;
  const std::string legacy = entry.legacy_name();
  return legacy.empty() ? nullptr : manifest.find(legacy);
}

/// The checks of a section's manifest entry that need no type: present, of a type the entry
/// reads (`accepted`, asked of the entry), of a layout version it reads. Returns the section,
/// or null after adding the problem (offline: a section of a foreign type stays opaque).
struct ExpectedSection {
  std::string name;
  std::string type;
  std::uint32_t version;
  std::uint32_t oldest_version;
};
inline const ckpt::SectionInfo* checked_header(const ckpt::SectionInfo* info, bool accepted,
                                               const ExpectedSection& expected, LoadPlan& plan, bool offline) {
  const std::string& name = expected.name;
  if (!info) {
    plan.problem("section '" + name + "' (" + expected.type + ") is missing");
    return nullptr;
  }
  if (!accepted) {
    if (!offline) plan.problem("section '" + name + "' holds " + info->type + " but this run uses " + expected.type);
    return nullptr;
  }
  if (info->version > expected.version) {
    plan.problem("section '" + name + "' (" + info->type + ") has layout version " + std::to_string(info->version) +
                 ", written by a newer keel; this keel reads versions up to " + std::to_string(expected.version) +
                 ": upgrade keel to read it");
    return nullptr;
  }
  if (info->version < expected.oldest_version) {
    plan.problem("section '" + name + "' (" + info->type + ") has layout version " + std::to_string(info->version) +
                 ", older than any this keel reads (" + std::to_string(expected.oldest_version) +
                 " and later): load it with the keel release that wrote it and save it again there, or start afresh");
    return nullptr;
  }
  return info;
}

namespace detail {
template <class Entry, class = void>
struct stages_by_version : std::false_type {};
template <class Entry>
struct stages_by_version<Entry, std::void_t<decltype(std::declval<const Entry&>().stage(std::uint32_t{}))>>
    : std::true_type {};
}  // namespace detail

/// The staging object for a section of layout `version`: entries whose saved value reads older
/// layouts by a field of its own (optim::OptimizerState::layout) have `stage(version)`.
template <class Entry>
auto stage_for(const Entry& entry, std::uint32_t version) {
  if constexpr (detail::stages_by_version<Entry>::value) {
    return entry.stage(version);
  } else {
    return entry.stage();
  }
}

/// Parses one entry's section into a staging object and checks it. Problems go to `plan`;
/// nothing live changes here. `offline` (keel-ckpt): a section of a type the entry cannot read
/// stays opaque instead of a problem.
///
/// The large tensors of entries that read them into place (reads_deferred_tensors) stay in the
/// file, and with `defer_all` (keel-ckpt) those of every entry: placeholders that know their
/// dtype, shape and place in the file (checkpoint/deferred_tensor.hpp).
template <class Format, class Entry>
auto stage_section(const ckpt::Container& container, const Entry& entry, LoadPlan& plan, bool offline,
                   bool defer_all = false) {
  using Saved = std::decay_t<decltype(entry.stage())>;
  Staged<Saved> staged;
  if (!detail::is_present(entry)) return staged;  // nothing to read, nothing to apply
  const ckpt::SectionInfo* found = find_section(container.manifest, entry);
  if constexpr (detail::absent_is_empty<Entry>::value) {
    if (!found) {
      staged.value.emplace(entry.stage());  // written by a keel without this section
      plan.staged.push_back(entry.name());
      return staged;
    }
  }
  const ckpt::SectionInfo* info =
      checked_header(found, found && entry.accepts(found->type),
                     ExpectedSection{entry.name(), entry.type(), entry.version(), entry.oldest_version()}, plan, offline);
  if (!info) return staged;
  staged.value.emplace(stage_for(entry, info->version));
  try {
    // (older layouts: the versioned serialize reads them)
    ckpt::parse_section<Format>(container, *info, *staged.value, defer_all || ckpt::reads_deferred_tensors<Entry>);
  } catch (const std::exception& e) {
    plan.problem(e.what());
    staged.value.reset();
    return staged;
  }
  const std::size_t problems_before = plan.problems.size();
  entry.check(static_cast<const Saved&>(*staged.value), plan);
  if (plan.problems.size() == problems_before) plan.staged.push_back(entry.name());
  staged.info = info;
  return staged;
}

/// One entry of a section list behind an interface: what writing, staging and committing need,
/// without the entry's type.
class SectionSlot {
 public:
  virtual ~SectionSlot() = default;
  /// Whether this configuration has the section (a keel::Optional callback switched off: no).
  virtual bool present() const = 0;
  /// Whether a manifest section of this name is this entry's (its name, or its legacy name).
  virtual bool claims(const std::string& section_name) const = 0;
  /// Appends the section to `writer` (when present).
  virtual void write(ckpt::SectionWriter& writer) = 0;
  /// Parses and checks the section into a staging value (stage_section); nothing live changes.
  virtual void stage(const ckpt::Container& container, LoadPlan& plan, bool offline, bool defer_all) = 0;
  /// Applies the staged value, if any, and lets go of it.
  virtual void commit(const ckpt::Container& container) = 0;
  /// The staged value (null when none) and its type.
  virtual const void* staged_value() const = 0;
  virtual const std::type_info& saved_type() const = 0;
};

/// The slot of one entry in a given checkpoint format.
template <class Format, class Entry>
class EntrySlot final : public SectionSlot {
 public:
  using Saved = std::decay_t<decltype(std::declval<const Entry&>().stage())>;

  explicit EntrySlot(Entry entry) : entry_(std::move(entry)) {}

  bool present() const override { return detail::is_present(entry_); }
  bool claims(const std::string& section_name) const override {
    if (!present() && !detail::ignored_when_absent<Entry>::value) return false;
    const std::string legacy = entry_.legacy_name();
    return section_name == entry_.name() || (!legacy.empty() && section_name == legacy);
  }
  void write(ckpt::SectionWriter& writer) override {
    if (!present()) return;
    const std::string name = entry_.name();
    writer.section(name, entry_.type(), entry_.version(), [&](std::ostream& stream) {
      const auto& value = entry_.capture();  // a reference, or a view of the live tensors
      typename Format::output_archive archive(stream);
      ckpt::adopt_archive(stream, archive);  // a snapshot's tensors are copied, not serialized here
      archive(cereal::make_nvp(name, value));
    });
  }
  void stage(const ckpt::Container& container, LoadPlan& plan, bool offline, bool defer_all) override {
    staged_.reset();
    staged_.emplace(stage_section<Format>(container, entry_, plan, offline, defer_all));
  }
  void commit(const ckpt::Container& container) override {
    if (!staged_ || !staged_->value) return;
    if constexpr (std::is_move_assignable_v<Saved>) {
      entry_.commit(std::move(*staged_->value));
    } else {
      // Not assignable (a callback holding a reference, say): parse the bytes, which parsed
      // once already, straight into the live object.
      ckpt::parse_section<Format>(container, *staged_->info, entry_.live);
    }
    staged_.reset();
  }
  const void* staged_value() const override { return staged_ && staged_->value ? &*staged_->value : nullptr; }
  const std::type_info& saved_type() const override { return typeid(Saved); }

 private:
  Entry entry_;
  std::optional<Staged<Saved>> staged_;  // (emplaced: a callback's value need not be assignable)
};

/// The entries of a checkpoint (keel/state/sections.hpp), in file order, each behind a slot.
class SectionList {
 public:
  /// The list of `entries` (a tuple, as checkpoint_sections() returns it) in `Format`.
  template <class Format, class Entries>
  static SectionList of(Entries entries) {
    SectionList list;
    std::apply([&](auto&... entry) { (list.add<Format>(std::move(entry)), ...); }, entries);
    return list;
  }

  /// Appends every present entry's section to `writer` (a ckpt::ContainerWriter, or a
  /// DigestWriter).
  void write(ckpt::SectionWriter& writer) {
    for (auto& slot : slots_) slot->write(writer);
  }

  /// Stages every entry. A manifest section that no entry claims is a problem (a checkpoint of
  /// another Trainer composition), except `offline`, where it stays opaque (a user's callback).
  /// `defer_all` (offline tools that look at dtypes and shapes, or read tensors one at a time):
  /// every large tensor stays in the file as a placeholder (checkpoint/deferred_tensor.hpp).
  void stage(const ckpt::Container& container, LoadPlan& plan, bool offline = false, bool defer_all = false) {
    for (auto& slot : slots_) slot->stage(container, plan, offline, defer_all);
    if (offline) return;
    for (const auto& s : container.manifest.sections) {
      bool claimed = false;
      for (const auto& slot : slots_) claimed = claimed || slot->claims(s.name);
      if (!claimed) plan.problem("unexpected section '" + s.name + "' (" + s.type + ") that this Trainer does not have");
    }
  }

  /// Applies every staged value, in list order (random streams last). Call only when staging
  /// found no problem (offline: every section that parsed is applied).
  void commit(const ckpt::Container& container) {
    for (auto& slot : slots_) slot->commit(container);
  }

  /// The staged value of entry `index`, of type Saved; null when that entry staged nothing.
  template <class Saved>
  const Saved* staged(std::size_t index) const {
    const SectionSlot& slot = *slots_.at(index);
    if (slot.saved_type() != typeid(Saved)) throw std::logic_error("keel: section list entry of another type");
    return static_cast<const Saved*>(slot.staged_value());
  }

 private:
  template <class Format, class Entry>
  void add(Entry entry) {
    slots_.push_back(std::make_unique<EntrySlot<Format, Entry>>(std::move(entry)));
  }

  std::vector<std::unique_ptr<SectionSlot>> slots_;
};

}  // namespace keel::state
