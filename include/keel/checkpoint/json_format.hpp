#pragma once
// keel::format::Json: keel's container (container.hpp: header, per-section checksums, the
// manifest, the atomic write, the all-or-nothing load) with every section written by cereal's
// JSON archive, for small models and debugging: open a checkpoint in a text viewer and each
// section reads as JSON (tensors as dtype, shape and base64 of their little-endian bytes;
// doubles in a form that reads back exactly, NaN and infinities included). Files are
// step-<N>.jckpt, the newest linked as last.jckpt: the container around the sections is binary,
// so the file as a whole is not a JSON document.
//
// Several times larger and slower than keel::format::Binary; keel-ckpt reads both.

#include <keel/error.hpp>

#include <cereal/archives/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace keel::format {

struct Json {
  static constexpr const char* keel_name = "keel::format::Json";
  static constexpr std::uint32_t format_id = 2;
  static constexpr const char* extension = ".jckpt";
  using output_archive = cereal::JSONOutputArchive;
  using input_archive = cereal::JSONInputArchive;

  /// keel's sections nest a few levels deep; the JSON reader descends recursively, so a hostile
  /// section nested thousands deep would exhaust the stack. Refused before parsing.
  static constexpr int max_nesting = 64;

  /// Called by ckpt::parse_section before the archive reads `bytes`.
  static void check_section(std::string_view bytes) {
    int depth = 0;
    bool in_string = false, escaped = false;
    for (const char c : bytes) {
      if (in_string) {
        if (escaped) escaped = false;
        else if (c == '\\') escaped = true;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        if (++depth > max_nesting)
          throw std::runtime_error("JSON nested deeper than " + std::to_string(max_nesting) + " levels");
      } else if (c == '}' || c == ']') {
        --depth;
      }
    }
  }
};

}  // namespace keel::format
