#pragma once
// The state digest: one hash over everything a checkpoint holds (each section's name, type,
// version, size and checksum), computed either from a live trainer (DigestWriter, fed the same
// section writers as a checkpoint file, writing nothing) or from a file (checkpoint_digest).
// Both give the same hex for the same state; no time, path or host name enters it.
//
// One section stays outside it: "rng.ranks", the random streams of every rank of a
// data-parallel job. A rank knows the others' streams only when they are gathered for a save,
// so a live digest could not include them; the digest is the state of the process that wrote
// the file (its own streams are in "rng"), and the other ranks' streams show in it through the
// steps they shape. The file's checksums cover the section like any other.

#include <keel/checkpoint/container.hpp>
#include <keel/hash.hpp>

#include <cstdint>
#include <ostream>
#include <streambuf>
#include <string>
#include <utility>
#include <vector>

namespace keel::ckpt {

/// Whether a section is left out of the state digest (see above).
inline bool outside_state_digest(const std::string& name) { return name == "rng.ranks"; }

/// One section's contribution to the digest.
inline void digest_section(Hasher128& hasher, const std::string& name, const std::string& type,
                           std::uint32_t version, std::uint64_t size, std::uint64_t checksum) {
  hasher.update_string(name);
  hasher.update_string(type);
  hasher.update_u64(version);
  hasher.update_u64(size);
  hasher.update_u64(checksum);
}

/// Hashes what a checkpoint would hold, section by section, without writing anything; the
/// sections named in `leave_out` are left out.
class DigestWriter final : public SectionWriter {
 public:
  explicit DigestWriter(std::vector<std::string> leave_out = {}) : leave_out_(std::move(leave_out)) {}

  void section(std::string name, std::string type, std::uint32_t version, const WriteBytes& write) override {
    if (outside_state_digest(name)) return;
    for (const auto& left_out : leave_out_)
      if (name == left_out) return;
    SectionHasher buffer;
    std::ostream stream(&buffer);
    write(stream);
    stream.flush();
    digest_section(hasher_, name, type, version, buffer.size, buffer.hash.digest());
  }
  std::string hex() const { return hasher_.hex(); }

 private:
  struct SectionHasher : std::streambuf {
    Hasher64 hash;
    std::uint64_t size = 0;
    std::streamsize xsputn(const char* data, std::streamsize n) override {
      hash.update(data, static_cast<std::size_t>(n));
      size += static_cast<std::uint64_t>(n);
      return n;
    }
    int_type overflow(int_type ch) override {
      if (!traits_type::eq_int_type(ch, traits_type::eof())) {
        const char c = traits_type::to_char_type(ch);
        xsputn(&c, 1);
      }
      return traits_type::not_eof(ch);
    }
  };
  std::vector<std::string> leave_out_;
  Hasher128 hasher_;
};

/// The state digest of a verified checkpoint: the hex Trainer::state_digest() printed for it.
inline std::string checkpoint_digest(const Container& container) {
  Hasher128 hasher;
  for (const auto& s : container.manifest.sections)
    if (!outside_state_digest(s.name)) digest_section(hasher, s.name, s.type, s.version, s.size, s.checksum);
  return hasher.hex();
}

}  // namespace keel::ckpt

namespace keel {
using ckpt::checkpoint_digest;
}  // namespace keel
