#pragma once
// Where a checkpoint's bytes are read from: a file, read piece by piece where they are needed
// (never the whole file at once), or bytes already in memory. SectionReader streams one byte
// range of a source to a parser.

#include <keel/checkpoint/file_io.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <streambuf>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace keel::ckpt {

/// The bytes of one checkpoint, read at any offset.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual std::uint64_t size() const = 0;
  /// Reads exactly `size` bytes at `offset` into `out`. Throws IoError when they cannot be
  /// read (a file that shrank or changed since it was opened reads as changed).
  virtual void read(std::uint64_t offset, void* out, std::size_t size) const = 0;
  /// Whether the bytes are still those that were opened (a file: same size, modification and
  /// status-change times; the last cannot be set back by a program). keel never rewrites a
  /// checkpoint in place; another program might.
  virtual bool unchanged() const = 0;
};

/// Bytes in memory (a checkpoint received over the network, a fuzzer's input).
class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::vector<char> bytes) : bytes_(std::move(bytes)) {}
  std::uint64_t size() const override { return bytes_.size(); }
  void read(std::uint64_t offset, void* out, std::size_t size) const override {
    if (offset > bytes_.size() || size > bytes_.size() - offset)
      throw std::out_of_range("keel: read past the end of a checkpoint in memory");
    if (size) std::memcpy(out, bytes_.data() + offset, size);
  }
  bool unchanged() const override { return true; }

 private:
  std::vector<char> bytes_;
};

/// A file, open for the source's lifetime: a checkpoint renamed over or deleted meanwhile is
/// still read whole (the open file keeps its bytes), so a load never mixes two files.
class FileSource final : public ByteSource {
 public:
  /// Opens `path`. Throws IoError (EISDIR for a directory, EINVAL for another non-file).
  explicit FileSource(const fs::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw IoError("open", path, errno);
    struct stat info {};
    if (::fstat(fd_, &info) != 0) {
      const int error = errno;
      ::close(fd_);
      throw IoError("stat", path, error);
    }
    if (!S_ISREG(info.st_mode)) {
      ::close(fd_);
      throw IoError("read", path, S_ISDIR(info.st_mode) ? EISDIR : EINVAL);
    }
    opened_ = info;
  }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  ~FileSource() override { ::close(fd_); }

  std::uint64_t size() const override { return static_cast<std::uint64_t>(opened_.st_size); }

  void read(std::uint64_t offset, void* out, std::size_t size) const override {
    char* to = static_cast<char*>(out);
    while (size > 0) {
      const ssize_t n = ::pread(fd_, to, size, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw IoError("read", path_, errno);
      }
      if (n == 0)
        throw IoError("read", path_, ESTALE);  // shorter than when it was opened: changed under us
      to += n;
      offset += static_cast<std::uint64_t>(n);
      size -= static_cast<std::size_t>(n);
    }
  }

  bool unchanged() const override {
    struct stat now {};
    return ::fstat(fd_, &now) == 0 && now.st_size == opened_.st_size && now.st_mtim.tv_sec == opened_.st_mtim.tv_sec &&
           now.st_mtim.tv_nsec == opened_.st_mtim.tv_nsec && now.st_ctim.tv_sec == opened_.st_ctim.tv_sec &&
           now.st_ctim.tv_nsec == opened_.st_ctim.tv_nsec;
  }

  const fs::path& path() const noexcept { return path_; }

 private:
  fs::path path_;
  int fd_ = -1;
  struct stat opened_ {};
};

/// Reads a whole regular file (throws IoError, as FileSource does).
inline std::vector<char> read_file(const fs::path& path) {
  const FileSource file(path);
  std::vector<char> bytes(static_cast<std::size_t>(file.size()));
  file.read(0, bytes.data(), bytes.size());
  return bytes;
}

/// An input stream buffer over bytes [begin, end) of a source, read in blocks; reads larger
/// than a block (tensor data) go straight to their destination. `remaining()` is exact, which
/// the bounded archive relies on, and `skip` passes over bytes without reading them. It hashes
/// every byte it reads from the source, so that a parse can prove it read the bytes that were
/// verified (`read_hash`, when nothing was skipped and everything read).
class SectionReader : public std::streambuf {
 public:
  static constexpr std::size_t block_size = 64 * 1024;

  SectionReader(const ByteSource& source, std::uint64_t begin, std::uint64_t end)
      : source_(source), next_(begin), end_(end) {}
  SectionReader(const SectionReader&) = delete;
  SectionReader& operator=(const SectionReader&) = delete;

  /// Bytes not read yet.
  std::uint64_t remaining() const { return static_cast<std::uint64_t>(egptr() - gptr()) + (end_ - next_); }
  /// The source offset of the next byte read.
  std::uint64_t position() const { return next_ - static_cast<std::uint64_t>(egptr() - gptr()); }
  /// Passes over `count` bytes (at most remaining()).
  void skip(std::uint64_t count) {
    const auto buffered = static_cast<std::uint64_t>(egptr() - gptr());
    if (count <= buffered) {
      gbump(static_cast<int>(count));
      return;
    }
    count -= buffered;
    setg(nullptr, nullptr, nullptr);
    next_ += std::min(count, end_ - next_);
    skipped_ = true;
  }
  /// The hash of the bytes read from the source, when they are the whole range, in order (no
  /// skip, nothing left): comparable with the section's checksum.
  std::optional<std::uint64_t> read_hash() const {
    if (skipped_ || next_ != end_) return std::nullopt;
    return hash_.digest();
  }
  const ByteSource& source() const noexcept { return source_; }

 protected:
  int_type underflow() override {
    if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
    if (next_ >= end_) return traits_type::eof();
    if (buffer_.empty()) buffer_.resize(block_size);
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(block_size, end_ - next_));
    source_.read(next_, buffer_.data(), n);
    hash_.update(buffer_.data(), n);
    next_ += n;
    setg(buffer_.data(), buffer_.data(), buffer_.data() + n);
    return traits_type::to_int_type(*gptr());
  }

  std::streamsize xsgetn(char* out, std::streamsize count) override {
    std::streamsize done = 0;
    const std::streamsize buffered = egptr() - gptr();
    if (buffered > 0) {
      const std::streamsize n = std::min(buffered, count);
      std::memcpy(out, gptr(), static_cast<std::size_t>(n));
      gbump(static_cast<int>(n));
      done = n;
    }
    const std::streamsize rest = count - done;
    if (rest <= 0) return done;
    if (static_cast<std::size_t>(rest) >= block_size) {  // large: straight into place
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(static_cast<std::uint64_t>(rest), end_ - next_));
      source_.read(next_, out + done, n);
      hash_.update(out + done, n);
      next_ += n;
      return done + static_cast<std::streamsize>(n);
    }
    while (done < count && underflow() != traits_type::eof()) {
      const std::streamsize n = std::min<std::streamsize>(egptr() - gptr(), count - done);
      std::memcpy(out + done, gptr(), static_cast<std::size_t>(n));
      gbump(static_cast<int>(n));
      done += n;
    }
    return done;
  }

  std::streamsize showmanyc() override {
    return next_ < end_ ? static_cast<std::streamsize>(end_ - next_) : -1;
  }

 private:
  const ByteSource& source_;
  std::uint64_t next_;  // source offset of the byte after the buffered ones
  std::uint64_t end_;
  std::vector<char> buffer_;
  Hasher64 hash_;
  bool skipped_ = false;
};

}  // namespace keel::ckpt
