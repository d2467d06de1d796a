#pragma once
// Reading one section of a verified container into a value, shared by the Trainer (which
// stages a whole checkpoint before applying it) and keel-ckpt (which inspects files without
// the program that wrote them).

#include <keel/checkpoint/container.hpp>

#include <cereal/cereal.hpp>

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
}  // namespace detail

/// Parses section `info` of `container` into `value` with the input archive of `Format`.
/// Throws std::runtime_error naming the section if the bytes do not parse or are not all used.
template <class Format, class T>
void parse_section(const Container& container, const SectionInfo& info, T& value) {
  const std::string_view bytes = container.section(info);
  detail::MemoryBuffer buffer(bytes.data(), bytes.size());
  std::istream stream(&buffer);
  try {
    if constexpr (detail::checks_sections<Format>::value) Format::check_section(bytes);
    typename Format::input_archive archive(stream);
    archive(cereal::make_nvp(info.name, value));
  } catch (const std::exception& e) {
    throw std::runtime_error("section '" + info.name + "' (" + info.type + ") cannot be read: " + e.what());
  }
  if (buffer.in_avail() != 0)
    throw std::runtime_error("section '" + info.name + "' has " + std::to_string(buffer.in_avail()) +
                             " bytes after its end (written by another version of " + info.type + "?)");
}

}  // namespace keel::ckpt
