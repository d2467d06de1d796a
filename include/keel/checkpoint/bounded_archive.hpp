#pragma once
// keel::ckpt::BoundedInputArchive: reads what cereal's PortableBinaryOutputArchive writes, from
// a checkpoint section or bytes in memory, and refuses any length that the remaining bytes
// cannot hold. It can also leave large tensors in the file (deferred_tensor.hpp).
//
// Why not cereal's PortableBinaryInputArchive: it reads a container's length, then allocates
// (std::string::resize, std::vector::resize) and only then finds the bytes missing. A damaged
// or hostile checkpoint could ask for terabytes before failing. Here every length is checked
// against the bytes left before anything is allocated, so reading a file of N bytes allocates
// O(N) at most, and fails with a message that says which length did not fit.

#include <keel/checkpoint/source.hpp>

#include <cereal/archives/portable_binary.hpp>
#include <cereal/cereal.hpp>

#include <cstdint>
#include <cstring>
#include <istream>
#include <memory>
#include <streambuf>
#include <string>
#include <type_traits>
#include <utility>

namespace keel::ckpt {

class BoundedInputArchive : public cereal::InputArchive<BoundedInputArchive, cereal::AllowEmptyClassElision> {
 public:
  /// `stream` reads a checkpoint section (a SectionReader, which knows the bytes left), or
  /// bytes in memory (a buffer whose in_avail() is the exact count of bytes left).
  explicit BoundedInputArchive(std::istream& stream)
      : cereal::InputArchive<BoundedInputArchive, cereal::AllowEmptyClassElision>(this),
        buffer_(*stream.rdbuf()),
        reader_(dynamic_cast<SectionReader*>(stream.rdbuf())) {
    std::uint8_t stream_little_endian = 0;
    (*this)(stream_little_endian);
    if (stream_little_endian > 1)
      throw cereal::Exception("the byte-order mark is " + std::to_string(stream_little_endian) + " (expected 0 or 1)");
    swap_bytes_ = stream_little_endian != cereal::portable_binary_detail::is_little_endian();
  }

  /// Bytes not read yet.
  std::uint64_t remaining() const {
    if (reader_) return reader_->remaining();
    const std::streamsize left = buffer_.in_avail();
    return left > 0 ? static_cast<std::uint64_t>(left) : 0;
  }

  // ---- deferred tensors (keel/checkpoint/deferred_tensor.hpp) ----------------------------

  /// Tensors of at least `min_bytes` read from now on stay in `source` (the source the
  /// SectionReader reads): their parse records where their bytes are and passes over them.
  void defer_tensors(std::shared_ptr<const ByteSource> source, std::uint64_t min_bytes) {
    if (reader_) {
      deferral_source_ = std::move(source);
      defer_min_bytes_ = min_bytes;
    }
  }
  /// Whether a tensor of `bytes` bytes, the next thing in the stream, is to be deferred.
  bool defers(std::uint64_t bytes) const { return deferral_source_ && bytes >= defer_min_bytes_; }
  const std::shared_ptr<const ByteSource>& deferral_source() const noexcept { return deferral_source_; }
  /// The source offset of the next byte, and passing over bytes (deferred tensors only).
  std::uint64_t position() const { return reader_->position(); }
  void skip(std::uint64_t bytes) {
    if (bytes > remaining())
      throw cereal::Exception("needs " + std::to_string(bytes) + " bytes but only " + std::to_string(remaining()) +
                              " are left (truncated or damaged)");
    reader_->skip(bytes);
  }
  /// Whether the bytes were written on a host of the other byte order.
  bool swaps_bytes() const noexcept { return swap_bytes_; }

  /// Refuses a length of `count` elements when the bytes left cannot hold them (every element
  /// of a string, vector or map takes at least one byte).
  void check_length(std::uint64_t count) const {
    if (count > remaining())
      throw cereal::Exception("a stored length of " + std::to_string(count) + " elements exceeds the " +
                              std::to_string(remaining()) + " bytes left (damaged or not written by keel)");
  }

  template <std::streamsize DataSize>
  void loadBinary(void* data, std::streamsize size) {
    if (size < 0 || static_cast<std::uint64_t>(size) > remaining())
      throw cereal::Exception("needs " + std::to_string(size) + " bytes but only " + std::to_string(remaining()) +
                              " are left (truncated or damaged)");
    if (size == 0) return;  // (an empty container's data may be null)
    if (buffer_.sgetn(static_cast<char*>(data), size) != size) throw cereal::Exception("short read");
    if (swap_bytes_ && DataSize > 1) {
      auto* bytes = static_cast<std::uint8_t*>(data);
      for (std::streamsize i = 0; i < size; i += DataSize)
        cereal::portable_binary_detail::swap_bytes<static_cast<std::size_t>(DataSize)>(bytes + i);
    }
  }

 private:
  std::streambuf& buffer_;
  SectionReader* reader_;
  bool swap_bytes_ = false;
  std::shared_ptr<const ByteSource> deferral_source_;
  std::uint64_t defer_min_bytes_ = 0;
};

// The overloads cereal looks for (found by argument-dependent lookup on the archive's type).

template <class T>
std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>> CEREAL_LOAD_FUNCTION_NAME(
    BoundedInputArchive& archive, T& value) {
  archive.template loadBinary<sizeof(T)>(std::addressof(value), sizeof(T));
}

/// A bool is one byte, 0 or 1; any other byte would be undefined behaviour as a bool.
inline void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& archive, bool& value) {
  std::uint8_t byte = 0;
  archive.template loadBinary<1>(&byte, 1);
  if (byte > 1) throw cereal::Exception("a stored bool holds " + std::to_string(byte) + " (expected 0 or 1)");
  value = byte == 1;
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(BoundedInputArchive& archive, cereal::NameValuePair<T>& pair) {
  archive(pair.value);
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(BoundedInputArchive& archive, cereal::SizeTag<T>& tag) {
  archive(tag.size);
  archive.check_length(static_cast<std::uint64_t>(tag.size));  // before the caller allocates
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& archive, cereal::BinaryData<T>& data) {
  using Element = std::remove_pointer_t<T>;
  constexpr std::streamsize element_size = sizeof(std::conditional_t<std::is_void_v<Element>, char, Element>);
  archive.template loadBinary<element_size>(data.data, static_cast<std::streamsize>(data.size));
}

/// True for archives that know how many bytes remain (checked before allocating tensors).
template <class Archive, class = void>
struct knows_remaining : std::false_type {};
template <class Archive>
struct knows_remaining<Archive, std::void_t<decltype(std::declval<const Archive&>().remaining())>> : std::true_type {};

}  // namespace keel::ckpt

CEREAL_REGISTER_ARCHIVE(keel::ckpt::BoundedInputArchive)
// Only this half of CEREAL_SETUP_ARCHIVE_TRAITS: PortableBinaryOutputArchive's input half
// already names PortableBinaryInputArchive.
namespace cereal::traits::detail {
template <>
struct get_output_from_input<keel::ckpt::BoundedInputArchive> {
  using type = cereal::PortableBinaryOutputArchive;
};
}  // namespace cereal::traits::detail
