#pragma once
// A checkpoint's sections taken at a step boundary (SectionSnapshot), so that another thread
// can write the file while training goes on (TrainerOptions::async_save). The file holds the
// bytes a synchronous save would write; the snapshot's memory is kept from one save to the
// next, so after the first save taking one is a copy of the state into memory already in use.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/checkpoint/tensor_capture.hpp>
#include <keel/fingerprint.hpp>

#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <ios>
#include <ostream>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace keel::ckpt {

namespace detail {
/// An output stream buffer appending to memory that it keeps when cleared. Not std::vector:
/// growing one value-initializes every new byte, a second pass over the state.
class GrowingBuffer : public std::streambuf {
 public:
  /// Forgets the bytes, keeps the memory.
  void clear() { setp(data_.get(), data_.get() + capacity_); }
  std::size_t size() const { return static_cast<std::size_t>(pptr() - pbase()); }
  const char* data() const { return data_.get(); }
  std::size_t capacity() const { return capacity_; }

 protected:
  std::streamsize xsputn(const char* bytes, std::streamsize count) override {
    if (count <= 0) return 0;
    reserve(size() + static_cast<std::size_t>(count));
    std::memcpy(pptr(), bytes, static_cast<std::size_t>(count));
    pbump_by(static_cast<std::size_t>(count));
    return count;
  }
  int_type overflow(int_type ch) override {
    if (traits_type::eq_int_type(ch, traits_type::eof())) return traits_type::not_eof(ch);
    const char c = traits_type::to_char_type(ch);
    xsputn(&c, 1);
    return ch;
  }

 private:
  void reserve(std::size_t needed) {
    if (needed <= capacity_) return;
    const std::size_t used = size();
    const std::size_t capacity = std::max(needed, capacity_ + capacity_ / 2);
    std::unique_ptr<char[]> grown(new char[capacity]);  // (not value-initialized)
    if (used) std::memcpy(grown.get(), data_.get(), used);
    data_ = std::move(grown);
    capacity_ = capacity;
    setp(data_.get(), data_.get() + capacity_);
    pbump_by(used);
  }
  // pbump takes an int; sections can be larger.
  void pbump_by(std::size_t count) {
    while (count > 0) {
      const int step = static_cast<int>(std::min<std::size_t>(count, 1u << 30));
      pbump(step);
      count -= static_cast<std::size_t>(step);
    }
  }

  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
};
}  // namespace detail

/// The sections of one checkpoint, taken at a step boundary: their bytes in memory, except the
/// large tensors of binary sections, which are copies (tensor_capture.hpp) spliced in when the
/// file is written. The memory is kept for the next snapshot: its n-th copied tensor reuses
/// the n-th copy's memory when dtype, element count and device kind match (they do, save after
/// save).
class SectionSnapshot final : public SectionWriter, private TensorCapture {
 public:
  /// Forgets the previous snapshot (keeping its memory) and starts a new one.
  void clear() {
    complete_ = false;
    sections_.clear();
    buffer_.clear();
    captured_.clear();
    by_source_.clear();
    cuda_devices_.clear();
    check_ = nullptr;
  }

  void section(std::string name, std::string type, std::uint32_t version, const WriteBytes& write) override {
    if (complete_) throw std::logic_error("keel: a finished snapshot was given another section; clear() it first");
    Section entry{std::move(name), std::move(type), version, buffer_.size(), 0, captured_.size(), 0};
    {
      std::ostream stream(&buffer_);
      stream.exceptions(std::ios::badbit);  // a failed allocation must not leave a short section
      const CaptureScope capturing(*this, stream);
      write(stream);
      stream.flush();
      if (!stream) throw std::runtime_error("keel: the snapshot of section '" + entry.name + "' is incomplete");
    }
    entry.size = buffer_.size() - entry.offset;
    entry.captured_end = captured_.size();
    sections_.push_back(std::move(entry));
  }

  /// The manifest's configuration fingerprint and facts, taken with the sections; waits for
  /// the copies from CUDA devices.
  void finish(const Fingerprint& fingerprint, std::vector<std::pair<std::string, std::string>> facts) {
    for (const std::int64_t device : cuda_devices_) torch::cuda::synchronize(device);
    fingerprint_ = fingerprint;  // (assigned into the previous snapshot's strings: the same, save after save)
    facts_ = std::move(facts);
    complete_ = true;
  }

  /// This snapshot's copy of `live` (a tensor it captured, shaped like it), or an undefined
  /// tensor when `live` was serialized inline or not at all.
  at::Tensor copy_of(const at::Tensor& live) const {
    const auto found = by_source_.find(live.unsafeGetTensorImpl());
    if (found == by_source_.end()) return {};
    const at::Tensor& copy = copies_[found->second].tensor;  // (shaped and typed as its source was)
    if (copy.scalar_type() != live.scalar_type() || copy.sizes() != live.sizes()) return {};
    return copy;
  }

  /// Something to check on the thread that writes, before the file is created (its exception
  /// refuses the write): the finiteness of the parameters' copies (state::snapshot_checkpoint).
  void check_before_write(std::function<void()> check) { check_ = std::move(check); }

  /// Runs the check, then writes the snapshot atomically to `path` as a complete container: the
  /// bytes a ContainerWriter fed the same sections would write.
  void write_file(const fs::path& path, const std::string& format_name, std::uint32_t format_id) const {
    // A snapshot whose taking threw (or that was never finished) is never written.
    if (!complete_) throw std::logic_error("keel: an incomplete snapshot cannot be written to " + path.string());
    if (check_) check_();
    write_atomically(path, [&](HashingFileSink& sink) { write_container(sink, format_name, format_id); });
  }

  /// Tensors copied instead of serialized (for the tests).
  std::size_t captured() const { return captured_.size(); }

 private:
  void capture(const at::Tensor& tensor) override {
    const std::size_t index = captured_.size();
    if (index == copies_.size()) copies_.emplace_back();
    Copy& copy = copies_[index];
    const bool from_cuda = tensor.is_cuda();
    // Shaped like the live tensor, so that the copy needs no view of it. Pinned memory for a
    // CUDA tensor: its copy then runs asynchronously, at full speed.
    if (!copy.tensor.defined() || copy.tensor.scalar_type() != tensor.scalar_type() ||
        copy.tensor.sizes() != tensor.sizes() || copy.pinned != from_cuda) {
      copy.tensor = at::empty(tensor.sizes(), at::TensorOptions().dtype(tensor.scalar_type()).pinned_memory(from_cuda));
      copy.pinned = from_cuda;
      copy.bytes = static_cast<std::size_t>(tensor.numel()) * tensor.element_size();
    }
    {
      // Outside autograd: no detached alias of the live tensor to make, and the copy's dispatch
      // skips the autograd layer (a per-tensor cost that adds up over a model's many tensors).
      const c10::InferenceMode no_autograd;
      copy.tensor.copy_(tensor, /*non_blocking=*/from_cuda);
    }
    const std::int64_t device = tensor.get_device();
    if (from_cuda && std::find(cuda_devices_.begin(), cuda_devices_.end(), device) == cuda_devices_.end())
      cuda_devices_.push_back(device);
    captured_.push_back(buffer_.size());
    by_source_.emplace(tensor.unsafeGetTensorImpl(), index);
  }

  void write_container(HashingFileSink& sink, const std::string& format_name, std::uint32_t format_id) const {
    ContainerWriter writer(sink, format_name, format_id);
    for (const auto& s : sections_)
      writer.section(s.name, s.type, s.version, [&](std::ostream& out) {
        auto put = [&](const void* bytes, std::size_t count) {
          out.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(count));
        };
        std::size_t written = s.offset;  // the section's bytes of buffer_ written so far
        for (std::size_t i = s.captured_begin; i < s.captured_end; ++i) {
          put(buffer_.data() + written, captured_[i] - written);
          written = captured_[i];
          put(copies_[i].tensor.data_ptr(), copies_[i].bytes);
        }
        put(buffer_.data() + written, s.offset + s.size - written);
      });
    writer.finish(fingerprint_, facts_);
  }

  struct Section {
    std::string name;
    std::string type;
    std::uint32_t version;
    std::size_t offset;  // of its bytes in buffer_
    std::size_t size;
    std::size_t captured_begin;  // its tensors in captured_
    std::size_t captured_end;
  };
  struct Copy {  // kept from one snapshot to the next
    at::Tensor tensor;
    bool pinned = false;
    std::size_t bytes = 0;
  };
  std::vector<Section> sections_;
  detail::GrowingBuffer buffer_;
  std::vector<std::size_t> captured_;  // where in buffer_ the bytes of copies_[i] belong
  std::vector<Copy> copies_;
  std::unordered_map<const void*, std::size_t> by_source_;  // live tensor -> index (identity only)
  std::vector<std::int64_t> cuda_devices_;                  // copies in flight from these
  std::function<void()> check_;
  bool complete_ = false;  // finish() was reached
  Fingerprint fingerprint_;
  std::vector<std::pair<std::string, std::string>> facts_;
};

}  // namespace keel::ckpt
