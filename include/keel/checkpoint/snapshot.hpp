#pragma once
// A checkpoint's sections serialized into memory at a step boundary (SectionSnapshot), so that
// another thread can write the file while training goes on (TrainerOptions::async_save). The
// bytes are those the file will hold; its buffer is kept from one save to the next, so after
// the first save taking a snapshot is a copy of the state into memory already in use.

#include <keel/checkpoint/container.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/fingerprint.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ios>
#include <ostream>
#include <stdexcept>
#include <streambuf>
#include <string>
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

/// The sections of one checkpoint, serialized into memory, with what the manifest needs.
class SectionSnapshot final : public SectionWriter {
 public:
  /// Forgets the previous snapshot (keeping its memory) and starts a new one.
  void clear() {
    sections_.clear();
    buffer_.clear();
  }

  void section(std::string name, std::string type, std::uint32_t version, const WriteBytes& write) override {
    const std::size_t offset = buffer_.size();
    std::ostream stream(&buffer_);
    stream.exceptions(std::ios::badbit);  // a failed allocation must not leave a short section
    write(stream);
    stream.flush();
    if (!stream) throw std::runtime_error("keel: the snapshot of section '" + name + "' is incomplete");
    sections_.push_back({std::move(name), std::move(type), version, offset, buffer_.size() - offset});
  }

  /// The manifest's configuration fingerprint and facts, taken with the sections.
  void finish(Fingerprint fingerprint, std::vector<std::pair<std::string, std::string>> facts) {
    fingerprint_ = std::move(fingerprint);
    facts_ = std::move(facts);
  }

  /// Writes the snapshot as a complete container into `sink`: the same bytes a ContainerWriter
  /// fed the same sections would write.
  void write_container(HashingFileSink& sink, const std::string& format_name, std::uint32_t format_id) const {
    ContainerWriter writer(sink, format_name, format_id);
    for (const auto& s : sections_)
      writer.section(s.name, s.type, s.version,
                     [&](std::ostream& out) { out.write(buffer_.data() + s.offset, static_cast<std::streamsize>(s.size)); });
    writer.finish(fingerprint_, facts_);
  }

  /// Bytes of section data held (for the benchmark and the tests).
  std::size_t bytes() const { return buffer_.size(); }

 private:
  struct Section {
    std::string name;
    std::string type;
    std::uint32_t version;
    std::size_t offset;
    std::size_t size;
  };
  std::vector<Section> sections_;
  detail::GrowingBuffer buffer_;
  Fingerprint fingerprint_;
  std::vector<std::pair<std::string, std::string>> facts_;
};

}  // namespace keel::ckpt
