#pragma once
// TensorBoard's event files without TensorFlow: the TFRecord framing and a hand-written encoder
// for the few protobuf messages a scalar log needs (keel::TensorBoardLogger). No dependencies
// beyond the standard library.
//
// A TFRecord file is a sequence of records, each
//   uint64 length (little-endian), uint32 masked CRC-32C of those 8 bytes,
//   `length` bytes of data, uint32 masked CRC-32C of the data,
// and each record of an event file holds one serialized tensorflow.Event
// (tensorflow/core/util/event.proto, summary.proto), of which these fields are written:
//   Event   { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; Summary summary = 5; } }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; oneof value { float simple_value = 2; } }
// Every number is written in a fixed byte order, so the bytes do not depend on the host.

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace keel::tfevents {

namespace detail {

/// The table of the reflected CRC-32C (Castagnoli) polynomial 0x1EDC6F41 (reversed: 0x82F63B78).
constexpr std::array<std::uint32_t, 256> crc32c_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1u) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    table[i] = crc;
  }
  return table;
}
inline constexpr std::array<std::uint32_t, 256> kCrc32cTable = crc32c_table();

inline void put_fixed32(std::string& out, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFFu));
}
inline void put_fixed64(std::string& out, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFFu));
}
/// Base-128 varint; a negative int64 is written as its 64-bit two's complement (10 bytes), as
/// protobuf does.
inline void put_varint(std::string& out, std::uint64_t value) {
  while (value >= 0x80u) {
    out.push_back(static_cast<char>((value & 0x7Fu) | 0x80u));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

// Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
inline void put_key(std::string& out, std::uint32_t field, std::uint32_t wire_type) {
  put_varint(out, (static_cast<std::uint64_t>(field) << 3) | wire_type);
}
inline void put_bytes(std::string& out, std::uint32_t field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
inline void put_double(std::string& out, std::uint32_t field, double value) {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, 1);
  put_fixed64(out, bits);
}
inline void put_float(std::string& out, std::uint32_t field, float value) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, 5);
  put_fixed32(out, bits);
}

}  // namespace detail

/// CRC-32C (Castagnoli) of `size` bytes; crc32c("123456789") is 0xE3069283.
inline std::uint32_t crc32c(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) crc = detail::kCrc32cTable[(crc ^ bytes[i]) & 0xFFu] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}
inline std::uint32_t crc32c(const std::string& data) { return crc32c(data.data(), data.size()); }

/// TensorFlow's masked CRC: a CRC of data that holds CRCs is itself a poor check, so the stored
/// value is rotated and offset.
inline std::uint32_t masked_crc32c(const void* data, std::size_t size) {
  const std::uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/// One TFRecord: length, masked CRC of the length, the data, masked CRC of the data.
inline std::string record(const std::string& data) {
  std::string out;
  out.reserve(data.size() + 16);
  detail::put_fixed64(out, data.size());
  const std::uint32_t length_crc = masked_crc32c(out.data(), 8);
  detail::put_fixed32(out, length_crc);
  out += data;
  detail::put_fixed32(out, masked_crc32c(data.data(), data.size()));
  return out;
}

/// The Event every event file starts with: file_version "brain.Event:2" (no step, as TensorFlow
/// writes it).
inline std::string file_version_event(double wall_time) {
  std::string out;
  detail::put_double(out, 1, wall_time);
  detail::put_bytes(out, 3, "brain.Event:2");
  return out;
}

/// An Event with a Summary of scalars (Value.simple_value), one per (tag, value). The step is
/// written even when 0, and every value even when 0.0 (simple_value is in a oneof: its presence
/// says what kind of summary the Value is).
inline std::string scalar_event(double wall_time, std::int64_t step,
                                const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, value] : values) {
    std::string encoded;
    detail::put_bytes(encoded, 1, tag);
    detail::put_float(encoded, 2, value);
    detail::put_bytes(summary, 1, encoded);
  }
  std::string out;
  detail::put_double(out, 1, wall_time);
  detail::put_key(out, 2, 0);
  detail::put_varint(out, static_cast<std::uint64_t>(step));
  detail::put_bytes(out, 5, summary);
  return out;
}

}  // namespace keel::tfevents
