#pragma once
// The checkpoint container: one file holding every component's state as a section.
//
//   header   32 bytes   "KEELCKPT", container version, header size, keel version, format id
//   sections            each component's state, back to back, as written by cereal
//   manifest            name, type, version, offset, size and XXH3 checksum of each section,
//                       the configuration fingerprint and a few facts for people (step, epoch)
//   trailer  40 bytes   manifest offset, size and checksum, whole-file checksum, "KEELEND\0"
//
// All integers are little-endian. The manifest comes last so that sections stream straight
// to disk (tensor bytes are never staged in memory); the trailer's fixed size lets a reader
// find the manifest from the end. Reading checks magic, versions and every checksum before
// a single section is parsed, and reports every problem it finds.

#include <keel/checkpoint/bounded_archive.hpp>
#include <keel/checkpoint/file_io.hpp>
#include <keel/checkpoint/source.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/hash.hpp>
#include <keel/version.hpp>

#include <cereal/archives/portable_binary.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <istream>
#include <memory>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace keel::ckpt {

inline constexpr char file_magic[8] = {'K', 'E', 'E', 'L', 'C', 'K', 'P', 'T'};
inline constexpr char end_magic[8] = {'K', 'E', 'E', 'L', 'E', 'N', 'D', '\0'};
/// Version of this container layout; a reader refuses newer ones with a message to upgrade.
inline constexpr std::uint32_t container_version = 1;
inline constexpr std::size_t header_size = 32;
inline constexpr std::size_t trailer_size = 40;

struct SectionInfo {
  std::string name;
  std::string type;
  std::uint32_t version = 0;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint64_t checksum = 0;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("name", name), cereal::make_nvp("type", type),
            cereal::make_nvp("version", version), cereal::make_nvp("offset", offset),
            cereal::make_nvp("size", size), cereal::make_nvp("checksum", checksum));
  }
};

struct Manifest {
  std::string format;                                      ///< the format policy's name
  std::vector<SectionInfo> sections;
  Fingerprint fingerprint;
  std::vector<std::pair<std::string, std::string>> facts;  ///< global_step, epoch, threads...

  const SectionInfo* find(std::string_view name) const {
    for (const auto& s : sections)
      if (s.name == name) return &s;
    return nullptr;
  }
  std::string fact(std::string_view key) const {
    for (const auto& [k, v] : facts)
      if (k == key) return v;
    return {};
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("format", format), cereal::make_nvp("sections", sections),
            cereal::make_nvp("fingerprint", fingerprint), cereal::make_nvp("facts", facts));
  }
};

namespace detail {
inline void put_u16(char* out, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
inline void put_u32(char* out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
inline void put_u64(char* out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
inline std::uint64_t get_u(const char* in, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= std::uint64_t(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

/// An input stream buffer over bytes already in memory (no copy).
class MemoryBuffer : public std::streambuf {
 public:
  MemoryBuffer(const char* data, std::size_t size) {
    char* begin = const_cast<char*>(data);
    setg(begin, begin, begin + size);
  }
};
}  // namespace detail

/// Where a checkpoint's sections go, one at a time: a file (ContainerWriter) or the state
/// digest (DigestWriter). An interface rather than a template parameter, so that a Trainer's
/// list of sections is compiled once for both.
class SectionWriter {
 public:
  /// Produces a section's bytes.
  using WriteBytes = std::function<void(std::ostream&)>;
  virtual void section(std::string name, std::string type, std::uint32_t version, const WriteBytes& write) = 0;

 protected:
  SectionWriter() = default;
  SectionWriter(const SectionWriter&) = default;
  SectionWriter& operator=(const SectionWriter&) = default;
  ~SectionWriter() = default;
};

/// Writes a container into a HashingFileSink, section by section.
class ContainerWriter final : public SectionWriter {
 public:
  ContainerWriter(HashingFileSink& sink, std::string format_name, std::uint32_t format_id)
      : sink_(sink), stream_(&sink) {
    manifest_.format = std::move(format_name);
    char header[header_size] = {};
    std::memcpy(header, file_magic, 8);
    detail::put_u32(header + 8, container_version);
    detail::put_u32(header + 12, header_size);
    detail::put_u16(header + 16, KEEL_VERSION_MAJOR);
    detail::put_u16(header + 18, KEEL_VERSION_MINOR);
    detail::put_u16(header + 20, KEEL_VERSION_PATCH);
    detail::put_u32(header + 24, format_id);
    sink_.write(header, sizeof header);
  }

  /// Appends one section; `write(std::ostream&)` produces its bytes.
  void section(std::string name, std::string type, std::uint32_t version, const WriteBytes& write) override {
    SectionInfo info{std::move(name), std::move(type), version, sink_.offset(), 0, 0};
    sink_.begin_section();
    write(stream_);
    stream_.flush();
    if (!stream_ || sink_.error()) throw IoError("write", sink_.path(), sink_.error() ? sink_.error() : EIO);
    info.size = sink_.offset() - info.offset;
    info.checksum = sink_.section_hash();
    manifest_.sections.push_back(std::move(info));
  }

  /// Writes the manifest and trailer. The file is complete only after this returns.
  void finish(Fingerprint fingerprint, std::vector<std::pair<std::string, std::string>> facts) {
    manifest_.fingerprint = std::move(fingerprint);
    manifest_.facts = std::move(facts);
    const std::uint64_t manifest_offset = sink_.offset();
    sink_.begin_section();
    {
      cereal::PortableBinaryOutputArchive archive(stream_);
      archive(manifest_);
    }
    stream_.flush();
    const std::uint64_t manifest_size = sink_.offset() - manifest_offset;
    const std::uint64_t manifest_hash = sink_.section_hash();
    char trailer[trailer_size] = {};
    detail::put_u64(trailer, manifest_offset);
    detail::put_u64(trailer + 8, manifest_size);
    detail::put_u64(trailer + 16, manifest_hash);
    sink_.write(trailer, 24);
    detail::put_u64(trailer + 24, sink_.file_hash());  // covers every byte before it
    std::memcpy(trailer + 32, end_magic, 8);
    sink_.write(trailer + 24, 16);
  }

  const Manifest& manifest() const noexcept { return manifest_; }

 private:
  HashingFileSink& sink_;
  std::ostream stream_;
  Manifest manifest_;
};

/// A verified container: every checksum matched and every section lies inside the file. Only
/// the manifest is held in memory; sections are read from `source` when components parse them.
struct Container {
  std::shared_ptr<const ByteSource> source;
  std::uint32_t version = 0;
  std::string library_version;
  std::uint32_t format_id = 0;
  Manifest manifest;

  /// The bytes of one section (for tools and tests; components parse from a SectionReader).
  std::string section(const SectionInfo& info) const {
    std::string bytes(static_cast<std::size_t>(info.size), '\0');
    source->read(info.offset, bytes.data(), bytes.size());
    return bytes;
  }
};

/// Reads only the manifest of a container (the trailer and the manifest bytes, checksum
/// verified), without reading the sections: cheap enough to call on every file of a directory.
/// Returns nullopt for a file that is not a complete keel checkpoint.
inline std::optional<Manifest> read_manifest(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) return std::nullopt;
  const auto size = static_cast<std::uint64_t>(info.st_size);
  if (size < header_size + trailer_size) return std::nullopt;
  char trailer[trailer_size];
  if (::pread(fd, trailer, trailer_size, static_cast<off_t>(size - trailer_size)) != static_cast<ssize_t>(trailer_size) ||
      std::memcmp(trailer + 32, end_magic, 8) != 0)
    return std::nullopt;
  const std::uint64_t offset = detail::get_u(trailer, 8);
  const std::uint64_t length = detail::get_u(trailer + 8, 8);
  if (offset < header_size || offset > size - trailer_size || length > size - trailer_size - offset) return std::nullopt;
  std::vector<char> bytes(static_cast<std::size_t>(length));
  if (::pread(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(bytes.size()) ||
      hash64(bytes.data(), bytes.size()) != detail::get_u(trailer + 16, 8))
    return std::nullopt;
  try {
    detail::MemoryBuffer buffer(bytes.data(), bytes.size());
    std::istream stream(&buffer);
    BoundedInputArchive archive(stream);
    Manifest manifest;
    archive(manifest);
    return manifest;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

namespace detail {
/// The checksums of a file, in one sequential pass through a block buffer: the whole-file hash
/// (every byte before the trailer's last 16) and, when `sections` is given, each section's.
struct FileHashes {
  std::uint64_t file = 0;
  std::vector<std::uint64_t> sections;
};
inline FileHashes hash_source(const ByteSource& source, const std::vector<SectionInfo>* sections) {
  constexpr std::size_t block = 4 << 20;
  const std::uint64_t hashed_end = source.size() - 16;
  std::vector<char> buffer(static_cast<std::size_t>(std::min<std::uint64_t>(block, hashed_end)));
  Hasher64 file;
  std::vector<Hasher64> per_section(sections ? sections->size() : 0);
  std::size_t next_section = 0;  // sections are in file order, not overlapping (checked by the caller)
  for (std::uint64_t at = 0; at < hashed_end;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(block, hashed_end - at));
    source.read(at, buffer.data(), n);
    file.update(buffer.data(), n);
    for (std::size_t i = next_section; sections && i < sections->size(); ++i) {
      const SectionInfo& s = (*sections)[i];
      if (s.offset >= at + n) break;
      const std::uint64_t from = std::max(s.offset, at), to = std::min(s.offset + s.size, at + n);
      if (from < to) per_section[i].update(buffer.data() + (from - at), static_cast<std::size_t>(to - from));
      if (s.offset + s.size <= at + n) next_section = i + 1;
    }
    at += n;
  }
  FileHashes out;
  out.file = file.digest();
  for (const auto& h : per_section) out.sections.push_back(h.digest());
  return out;
}
}  // namespace detail

/// Verifies the container in `source` (`where` names it in messages) and returns it, holding
/// the source for the sections to be read from. Reads the file once, sequentially, through a
/// small buffer: memory does not grow with the file. Throws CheckpointError listing every
/// problem found.
///
/// Fuzzing builds (FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, the libFuzzer convention) skip the
/// checksum comparisons, so that mutated bytes reach the parsers behind them.
inline Container verify_container(std::shared_ptr<const ByteSource> source, const std::string& where) {
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  constexpr bool check_checksums = false;
#else
  constexpr bool check_checksums = true;
#endif
  Container c;
  c.source = std::move(source);
  const ByteSource& b = *c.source;
  const std::uint64_t size = b.size();
  if (size == 0) throw CheckpointError(where, {"is empty (0 bytes): the write that made it never completed"});
  char header[header_size] = {};
  b.read(0, header, static_cast<std::size_t>(std::min<std::uint64_t>(size, header_size)));
  if (size < 8 || std::memcmp(header, file_magic, 8) != 0)
    throw CheckpointError(where, {"is not a keel checkpoint (the first bytes are not \"KEELCKPT\")"});
  if (size < header_size + trailer_size)
    throw CheckpointError(where, {"is truncated: " + std::to_string(size) +
                                  " bytes is shorter than any complete checkpoint"});
  c.version = static_cast<std::uint32_t>(detail::get_u(header + 8, 4));
  if (c.version > container_version)
    throw CheckpointError(where, {"was written by a newer keel (container version " +
                                  std::to_string(c.version) + "; this keel " + KEEL_VERSION_STRING +
                                  " reads up to version " + std::to_string(container_version) +
                                  "): upgrade keel to read it"});
  if (c.version == 0 || detail::get_u(header + 12, 4) != header_size)
    throw CheckpointError(where, {"has a damaged header (container version " +
                                  std::to_string(c.version) + ", header size " +
                                  std::to_string(detail::get_u(header + 12, 4)) + ")"});
  c.library_version = std::to_string(detail::get_u(header + 16, 2)) + "." +
                      std::to_string(detail::get_u(header + 18, 2)) + "." +
                      std::to_string(detail::get_u(header + 20, 2));
  c.format_id = static_cast<std::uint32_t>(detail::get_u(header + 24, 4));

  char trailer[trailer_size];
  b.read(size - trailer_size, trailer, trailer_size);
  if (std::memcmp(trailer + 32, end_magic, 8) != 0)
    throw CheckpointError(where, {"is truncated or was not completely written (no end marker "
                                  "\"KEELEND\" in its last bytes)"});
  const std::uint64_t stored_file_hash = detail::get_u(trailer + 24, 8);
  const std::uint64_t body_end = size - trailer_size;
  const std::uint64_t manifest_offset = detail::get_u(trailer, 8);
  const std::uint64_t manifest_size = detail::get_u(trailer + 8, 8);
  const bool manifest_inside =
      manifest_offset >= header_size && manifest_offset <= body_end && manifest_size <= body_end - manifest_offset;
  // The manifest is the one part read into memory: a few kilobytes (a line per section, the
  // fingerprint); a damaged trailer must not make it the file's size.
  constexpr std::uint64_t largest_manifest = 64 << 20;
  if (manifest_inside && manifest_size > largest_manifest)
    throw CheckpointError(where, {"has a manifest of " + std::to_string(manifest_size) + " bytes (at most " +
                                  std::to_string(largest_manifest) + "): its trailer is damaged"});

  // The manifest first (it says where the sections are), then one pass for every checksum.
  std::vector<char> manifest_bytes;
  std::string manifest_problem;
  if (manifest_inside) {
    manifest_bytes.resize(static_cast<std::size_t>(manifest_size));
    b.read(manifest_offset, manifest_bytes.data(), manifest_bytes.size());
    if (check_checksums && hash64(manifest_bytes.data(), manifest_bytes.size()) != detail::get_u(trailer + 16, 8)) {
      manifest_problem = "has a damaged manifest (checksum mismatch)";
    } else {
      try {
        detail::MemoryBuffer buffer(manifest_bytes.data(), manifest_bytes.size());
        std::istream stream(&buffer);
        BoundedInputArchive archive(stream);
        archive(c.manifest);
      } catch (const std::exception& e) {
        manifest_problem = std::string("has a manifest that cannot be parsed: ") + e.what();
      }
    }
  }
  std::vector<std::string> problems;
  // Sections inside the section area, in file order; the others are problems, not hashed.
  std::vector<SectionInfo> inside;
  std::vector<std::string> placement;
  if (manifest_inside && manifest_problem.empty()) {
    std::uint64_t previous_end = header_size;
    for (const auto& s : c.manifest.sections) {
      if (s.offset < previous_end || s.offset > manifest_offset || s.size > manifest_offset - s.offset) {
        placement.push_back("section '" + s.name + "' lies outside the file's section area (offset " +
                            std::to_string(s.offset) + ", size " + std::to_string(s.size) + ")");
        continue;
      }
      previous_end = s.offset + s.size;
      inside.push_back(s);
    }
  }
  const bool sections_known = manifest_inside && manifest_problem.empty();
  const detail::FileHashes hashes = detail::hash_source(b, sections_known ? &inside : nullptr);
  if (check_checksums && stored_file_hash != hashes.file)
    problems.push_back("is damaged: the whole-file checksum does not match (stored " +
                       hex64(stored_file_hash) + ", computed " + hex64(hashes.file) + ")");
  if (!manifest_inside) {
    problems.push_back("has a manifest position outside the file (offset " + std::to_string(manifest_offset) +
                       ", size " + std::to_string(manifest_size) + ", file body ends at " + std::to_string(body_end) + ")");
    throw CheckpointError(where, problems);
  }
  if (!manifest_problem.empty()) {
    problems.push_back(manifest_problem);
    throw CheckpointError(where, problems);
  }
  // In manifest order, as before: out-of-place sections and checksum mismatches interleaved.
  std::size_t next_inside = 0, next_placement = 0;
  std::uint64_t previous_end = header_size;
  for (const auto& s : c.manifest.sections) {
    if (s.offset < previous_end || s.offset > manifest_offset || s.size > manifest_offset - s.offset) {
      problems.push_back(placement.at(next_placement++));
      continue;
    }
    previous_end = s.offset + s.size;
    const std::uint64_t actual = hashes.sections.at(next_inside++);
    if (check_checksums && actual != s.checksum)
      problems.push_back("section '" + s.name + "' is damaged (checksum " + hex64(actual) +
                         ", manifest says " + hex64(s.checksum) + ")");
  }
  if (!problems.empty()) throw CheckpointError(where, problems);
  return c;
}

/// Verifies a container held in memory (`where` names it in messages) and returns it. Throws
/// CheckpointError listing every problem found.
inline Container parse_container(std::vector<char> bytes, const std::string& where) {
  return verify_container(std::make_shared<MemorySource>(std::move(bytes)), where);
}

/// Opens and verifies a container file, which stays open for its sections to be read. Throws
/// CheckpointError listing every problem found.
inline Container read_container(const fs::path& path) {
  const std::string where = path.string();
  std::shared_ptr<const ByteSource> source;
  try {
    source = std::make_shared<FileSource>(path);
    return verify_container(std::move(source), where);
  } catch (const IoError& e) {
    if (e.error_code() == EISDIR) throw CheckpointError(where, {"is a directory, not a checkpoint file"});
    if (e.error_code() == ESTALE)
      throw CheckpointError(where, {"changed while it was being read (it is shorter than when it was opened): "
                                    "another program is writing it; read it again"});
    throw CheckpointError(where, {std::string("cannot be read: ") + std::strerror(e.error_code())});
  }
}

}  // namespace keel::ckpt
