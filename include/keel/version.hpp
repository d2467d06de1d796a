#pragma once
// keel's own version. It is written into every checkpoint so that `keel-ckpt info` can say
// which release wrote a file; the container version (checkpoint/container.hpp) is what
// decides whether a file can be read.

#define KEEL_VERSION_MAJOR 0
#define KEEL_VERSION_MINOR 2
#define KEEL_VERSION_PATCH 0
#define KEEL_VERSION_STRING "0.2.0"

namespace keel {
inline constexpr const char* version_string = KEEL_VERSION_STRING;
}  // namespace keel
