#pragma once
// keel::format::Binary, the default checkpoint format: the container of container.hpp with
// every section in cereal's portable binary archive (little-endian, whatever the host), read
// back by keel's bounded reader of that layout.

#include <keel/checkpoint/bounded_archive.hpp>

#include <cereal/archives/portable_binary.hpp>

#include <cstdint>

namespace keel::format {

struct Binary {
  static constexpr const char* keel_name = "keel::format::Binary";
  static constexpr std::uint32_t format_id = 1;
  static constexpr const char* extension = ".ckpt";
  using output_archive = cereal::PortableBinaryOutputArchive;
  using input_archive = ckpt::BoundedInputArchive;  // cereal's layout, lengths checked
};

}  // namespace keel::format
