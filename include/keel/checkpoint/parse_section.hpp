#pragma once
// Reading one section of a verified container into a value, shared by the Trainer (which
// stages a whole checkpoint before applying it) and keel-ckpt (which inspects files without
// the program that wrote them).

#include <keel/checkpoint/container.hpp>

#include <cereal/cereal.hpp>

#include <cstdint>
#include <istream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace keel::ckpt {

namespace detail {
/// Whether a format checks a section's bytes before its archive reads them
/// (`static void check_section(std::string_view)`, e.g. format::Json's nesting limit).
template <class Format, class = void>
struct checks_sections : std::false_type {};
template <class Format>
struct checks_sections<Format, std::void_t<decltype(Format::check_section(std::string_view{}))>> : std::true_type {};

/// Bytes left over after a text section's value (not an error of parsing, reported apart).
struct TrailingBytes {
  std::uint64_t count;
};
}  // namespace detail

/// Tensors of at least this many bytes are deferred when a parse defers (parse_section).
inline constexpr std::uint64_t deferred_tensor_min_bytes = 64 * 1024;

/// Parses section `info` of `container` into `value` with the input archive of `Format`,
/// reading the section from the container's source. With `defer_tensors` (binary formats),
/// tensors of deferred_tensor_min_bytes or more stay in the file as placeholders
/// (deferred_tensor.hpp) for the caller to read into place or materialize.
/// Throws std::runtime_error naming the section if the bytes do not parse or are not all used.
template <class Format, class T>
void parse_section(const Container& container, const SectionInfo& info, T& value, bool defer_tensors = false) {
  SectionReader reader(*container.source, info.offset, info.offset + info.size);
  std::istream stream(&reader);
  try {
    if constexpr (detail::checks_sections<Format>::value) {
      // A text format's own check wants the section's bytes, and its parser reads them whole.
      const std::string bytes = container.section(info);
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
      if (hash64(bytes.data(), bytes.size()) != info.checksum)
        throw std::runtime_error("it changed on disk after it was verified; load it again");
#endif
      Format::check_section(bytes);
      detail::MemoryBuffer buffer(bytes.data(), bytes.size());
      std::istream text(&buffer);
      typename Format::input_archive archive(text);
      archive(cereal::make_nvp(info.name, value));
      if (buffer.in_avail() != 0) throw detail::TrailingBytes{static_cast<std::uint64_t>(buffer.in_avail())};
      return;
    } else {
      typename Format::input_archive archive(stream);
      if constexpr (std::is_same_v<typename Format::input_archive, BoundedInputArchive>) {
        if (defer_tensors) archive.defer_tensors(container.source, deferred_tensor_min_bytes);
      }
      archive(cereal::make_nvp(info.name, value));
    }
  } catch (const detail::TrailingBytes& extra) {
    throw std::runtime_error("section '" + info.name + "' has " + std::to_string(extra.count) +
                             " bytes after its end (written by another version of " + info.type + "?)");
  } catch (const std::exception& e) {
    throw std::runtime_error("section '" + info.name + "' (" + info.type + ") cannot be read: " + e.what());
  }
  if (reader.remaining() != 0)
    throw std::runtime_error("section '" + info.name + "' has " + std::to_string(reader.remaining()) +
                             " bytes after its end (written by another version of " + info.type + "?)");
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // (fuzzing skips checksums: see verify_container)
  // The bytes parsed are those verified, unless the file changed in between (a section whose
  // tensors stayed in the file is read partly; its bytes are checked when read: unchanged()).
  if (const auto read = reader.read_hash(); read && *read != info.checksum)
    throw std::runtime_error("section '" + info.name + "' changed on disk after it was verified (checksum " +
                             hex64(*read) + ", manifest says " + hex64(info.checksum) + "); load it again");
#endif
}

}  // namespace keel::ckpt
