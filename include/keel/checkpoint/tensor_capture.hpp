#pragma once
// While a snapshot for a background write is taken (SectionSnapshot, async_save), the large
// tensors of a binary section are not serialized on the training thread: cereal's save hands
// each one to the active TensorCapture, which copies it into memory kept from one save to the
// next (a tensor copy runs on LibTorch's intra-op threads where cereal's byte writes run on
// one; pinned memory for a CUDA tensor), and the thread that writes the file puts the copy's
// bytes where the archive would have. The file's bytes are the same either way.

#include <cereal/archives/binary.hpp>
#include <cereal/archives/portable_binary.hpp>
#include <torch/types.h>

#include <cstddef>
#include <ostream>
#include <type_traits>

namespace keel::ckpt {

/// Receives the bytes of large tensors in place of the archive (see above).
class TensorCapture {
 public:
  /// Tensors of at least this many bytes are captured; smaller ones cost less inline than a
  /// tensor copy's dispatch.
  static constexpr std::size_t min_bytes = std::size_t(64) << 10;

  /// Takes a copy of `tensor`, whose dtype and shape the archive has just written; its bytes
  /// belong at the archive's current position.
  virtual void capture(const at::Tensor& tensor) = 0;

 protected:
  ~TensorCapture() = default;
};

namespace detail {
/// What this thread's snapshot captures: the tensors saved by the one archive keel made on the
/// section's stream. A user's archive on a stream of its own is never captured.
struct CaptureBinding {
  TensorCapture* capture = nullptr;
  const std::ostream* stream = nullptr;
  const void* archive = nullptr;
};
inline CaptureBinding& capture_binding() {
  thread_local CaptureBinding binding;
  return binding;
}
}  // namespace detail

/// While it lives, `capture` takes the large tensors written to `stream` (SectionSnapshot).
class CaptureScope {
 public:
  CaptureScope(TensorCapture& capture, const std::ostream& stream) : previous_(detail::capture_binding()) {
    detail::capture_binding() = {&capture, &stream, nullptr};
  }
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;
  ~CaptureScope() { detail::capture_binding() = previous_; }

 private:
  detail::CaptureBinding previous_;
};

/// Declares `archive` the one writing a section's bytes to `stream` (the section writer calls
/// it right after making the archive): while a snapshot captures `stream`, its large tensors
/// are captured.
template <class Archive>
void adopt_archive(const std::ostream& stream, const Archive& archive) {
  auto& binding = detail::capture_binding();
  if (binding.capture && binding.stream == &stream) binding.archive = &archive;
}

/// The capture that takes a tensor of `bytes` bytes saved through `archive`, or null (then the
/// archive writes it). Only cereal's binary archives are captured, whose bytes are the tensor's
/// as they lie in memory; the portable one only on little-endian hosts, where that holds for
/// any of its byte-order options (keel's files are little-endian: a big-endian host is left to
/// the archive).
template <class Archive>
TensorCapture* capture_for(const Archive& archive, std::size_t bytes) {
  constexpr bool raw = std::is_same_v<Archive, cereal::BinaryOutputArchive> ||
                       std::is_same_v<Archive, cereal::PortableBinaryOutputArchive>;
  if constexpr (!raw) {
    return nullptr;
  } else {
    const auto& binding = detail::capture_binding();
    if (bytes < TensorCapture::min_bytes || !binding.capture || binding.archive != &archive) return nullptr;
    if constexpr (std::is_same_v<Archive, cereal::PortableBinaryOutputArchive>)
      if (!cereal::portable_binary_detail::is_little_endian()) return nullptr;
    return binding.capture;
  }
}

}  // namespace keel::ckpt
