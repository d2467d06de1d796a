#pragma once
// Durable file writing. A checkpoint is written to a temporary file in the target directory,
// flushed with fsync, renamed over the final name and the directory fsync'ed: after a crash
// at any instant the final name holds either the old complete file or the new complete file.

#include <keel/error.hpp>
#include <keel/hash.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <streambuf>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace keel::ckpt {

namespace fs = std::filesystem;

/// An I/O failure, with the path and the operating system's reason. Exit status 4: a
/// checkpoint could not be written (the previous one is untouched).
class IoError : public Error {
 public:
  IoError(const std::string& what, const fs::path& path, int error)
      : Error("keel: cannot " + what + " '" + path.string() + "': " + std::strerror(error)), error_(error) {}
  int error_code() const noexcept { return error_; }
  int exit_status() const noexcept override { return 4; }

 private:
  int error_;
};

/// A buffered output stream buffer on a file descriptor that hashes every byte it passes and
/// counts them, so offsets and checksums come for free while cereal writes.
class HashingFileSink : public std::streambuf {
 public:
  HashingFileSink(int fd, fs::path path) : fd_(fd), path_(std::move(path)), buffer_(1 << 20) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    hashed_ = pbase();
  }
  HashingFileSink(const HashingFileSink&) = delete;
  HashingFileSink& operator=(const HashingFileSink&) = delete;

  /// Bytes written so far (the offset of the next byte).
  std::uint64_t offset() const noexcept { return flushed_ + static_cast<std::uint64_t>(pptr() - pbase()); }

  /// Starts a fresh per-section hash; section_hash() reads it.
  void begin_section() {
    hash_pending();
    section_ = Hasher64();
  }
  std::uint64_t section_hash() {
    hash_pending();
    return section_.digest();
  }
  std::uint64_t file_hash() {
    hash_pending();
    return file_.digest();
  }

  /// Writes `size` bytes (throws IoError on failure).
  void write(const void* data, std::size_t size) {
    if (sputn(static_cast<const char*>(data), static_cast<std::streamsize>(size)) !=
        static_cast<std::streamsize>(size))
      throw IoError("write", path_, error_ ? error_ : EIO);
  }

  /// Pushes buffered bytes to the kernel (throws IoError on failure).
  void flush() {
    if (!drain()) throw IoError("write", path_, error_);
  }

  /// First OS error met inside the stream buffer (0 if none).
  int error() const noexcept { return error_; }
  const fs::path& path() const noexcept { return path_; }

 protected:
  int_type overflow(int_type ch) override {
    if (!drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }

  std::streamsize xsputn(const char* data, std::streamsize size) override {
    if (size <= 0) return 0;  // (an empty vector's data may be null; memcpy must not see it)
    const std::streamsize room = epptr() - pptr();
    if (size <= room) {
      std::memcpy(pptr(), data, static_cast<std::size_t>(size));
      pbump(static_cast<int>(size));
      return size;
    }
    // Large writes (tensor data) go straight to the file, not through the buffer.
    if (!drain()) return 0;
    hash(data, static_cast<std::size_t>(size));
    if (!write_all(data, static_cast<std::size_t>(size))) return 0;
    flushed_ += static_cast<std::uint64_t>(size);
    hashed_ = pbase();
    return size;
  }

  int sync() override { return drain() ? 0 : -1; }

 private:
  void hash(const char* data, std::size_t size) {
    file_.update(data, size);
    section_.update(data, size);
  }
  // Hashes buffered bytes not hashed yet (hashing lags the buffer so small writes stay cheap).
  void hash_pending() {
    if (pptr() > hashed_) hash(hashed_, static_cast<std::size_t>(pptr() - hashed_));
    hashed_ = pptr();
  }
  bool drain() {
    hash_pending();
    const std::size_t pending = static_cast<std::size_t>(pptr() - pbase());
    if (pending && !write_all(pbase(), pending)) return false;
    flushed_ += pending;
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    hashed_ = pbase();
    return true;
  }
  bool write_all(const char* data, std::size_t size) {
    while (size > 0) {
      const ssize_t n = ::write(fd_, data, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      data += n;
      size -= static_cast<std::size_t>(n);
    }
    return true;
  }

  int fd_;
  fs::path path_;
  std::vector<char> buffer_;
  char* hashed_ = nullptr;
  std::uint64_t flushed_ = 0;
  Hasher64 file_;
  Hasher64 section_;
  int error_ = 0;
};

/// fsync of a directory, so that a rename inside it is durable.
inline void sync_directory(const fs::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IoError("open directory", directory, errno);
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0 && error != EINVAL) throw IoError("fsync directory", directory, error);
}

/// Writes `target` atomically: `write` fills a temporary file beside it, which is fsync'ed and
/// renamed over `target`. On any failure the temporary file is removed, `target` is untouched,
/// and the error names the path and the OS reason.
inline void write_atomically(const fs::path& target, const std::function<void(HashingFileSink&)>& write) {
  const fs::path directory = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const fs::path temp = directory / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()));
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("create", temp, errno);
  try {
    {
      HashingFileSink sink(fd, temp);
      write(sink);
      sink.flush();
    }
    if (::fsync(fd) != 0) throw IoError("fsync", temp, errno);
    if (::close(fd) != 0) {
      const int error = errno;
      ::unlink(temp.c_str());
      throw IoError("close", temp, error);
    }
  } catch (...) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  if (::rename(temp.c_str(), target.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    throw IoError("rename into place", target, error);
  }
  sync_directory(directory);
}

/// Points the symbolic link `link` at `target_name` (a name in the same directory), atomically.
inline void point_link_atomically(const fs::path& link, const std::string& target_name) {
  const fs::path directory = link.has_parent_path() ? link.parent_path() : fs::path(".");
  const fs::path temp = directory / ("." + link.filename().string() + ".tmp." + std::to_string(::getpid()));
  ::unlink(temp.c_str());
  if (::symlink(target_name.c_str(), temp.c_str()) != 0) throw IoError("create link", temp, errno);
  if (::rename(temp.c_str(), link.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    throw IoError("rename link into place", link, error);
  }
  sync_directory(directory);
}

}  // namespace keel::ckpt
