#pragma once
// xxHash (XXH3), used header-only: checksums of checkpoint sections and files, and the state
// digest. XXH3 hashes several GB/s per core, so every byte written can be hashed.

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace keel {

/// Incremental 64-bit XXH3.
class Hasher64 {
 public:
  Hasher64() { XXH3_64bits_reset(&state_); }
  void update(const void* data, std::size_t size) { XXH3_64bits_update(&state_, data, size); }
  std::uint64_t digest() const { return XXH3_64bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

/// Incremental 128-bit XXH3, for the state digest.
class Hasher128 {
 public:
  Hasher128() { XXH3_128bits_reset(&state_); }
  void update(const void* data, std::size_t size) { XXH3_128bits_update(&state_, data, size); }
  void update_u64(std::uint64_t value) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
    update(bytes, 8);
  }
  void update_string(const std::string& text) {
    update_u64(text.size());
    update(text.data(), text.size());
  }
  std::string hex() const {
    const XXH128_hash_t h = XXH3_128bits_digest(&state_);
    char buffer[33];
    std::snprintf(buffer, sizeof buffer, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                  static_cast<unsigned long long>(h.low64));
    return buffer;
  }

 private:
  XXH3_state_t state_;
};

inline std::uint64_t hash64(const void* data, std::size_t size) { return XXH3_64bits(data, size); }

inline std::string hex64(std::uint64_t value) {
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(value));
  return buffer;
}

}  // namespace keel
