#pragma once
// Log files of rows (CSV, JSON Lines) that stay exact across resumes, shared by the loggers
// that write them (keel::MetricsLogger, keel::LearningRateMonitor).
//
// A logger counts the rows it has written as part of its saved state and syncs its files before
// each checkpoint. When a fit starts, open_after_rows() cuts off what lies beyond that count
// (rows written after the checkpoint by a run that was then killed, possibly half a line), so
// after any number of resumes every step appears exactly once.

#include <keel/error.hpp>
#include <keel/log.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include <unistd.h>

namespace keel::detail {

/// Shared: a staged copy of a logger (a checkpoint load parses into a copy) must not close it.
using LogFile = std::shared_ptr<std::FILE>;

/// Opens `path` for appending after its `header_lines` header lines and first `rows` rows,
/// cutting off the rest. `owner` names the logger in errors. A file with fewer rows than that
/// is kept as it is, with a warning.
inline LogFile open_after_rows(const std::string& path, std::int64_t rows, std::int64_t header_lines,
                               const std::string& owner) {
  const std::int64_t keep_lines = rows + header_lines;
  std::int64_t lines = 0;
  long cut = 0;
  if (std::FILE* in = std::fopen(path.c_str(), "rb")) {
    int ch = 0;
    long offset = 0;
    while (lines < keep_lines && (ch = std::fgetc(in)) != EOF) {
      ++offset;
      if (ch == '\n') {
        ++lines;
        cut = offset;
      }
    }
    std::fclose(in);
  }
  if (lines < keep_lines && rows > 0)
    warn(path + " holds " + std::to_string(std::max<std::int64_t>(0, lines - header_lines)) +
         " rows but the checkpoint counted " + std::to_string(rows) + "; earlier rows are missing");
  std::error_code error;
  if (std::filesystem::exists(path, error)) std::filesystem::resize_file(path, static_cast<std::uintmax_t>(cut), error);
  if (error) throw ConfigError(owner + ": cannot truncate '" + path + "': " + error.message());
  std::FILE* out = std::fopen(path.c_str(), "ab");
  if (!out) throw ConfigError(owner + ": cannot open '" + path + "' for writing");
  return LogFile(out, [](std::FILE* f) { std::fclose(f); });
}

/// Whether `path` is missing or empty (its header is still to be written).
inline bool log_is_empty(const std::string& path) {
  std::error_code error;
  return !std::filesystem::exists(path, error) || std::filesystem::file_size(path, error) == 0;
}

/// Flushes `file` to the kernel: the rows a checkpoint counts must be in the file before it exists.
inline void sync_log(const LogFile& file) {
  if (!file) return;
  std::fflush(file.get());
  ::fsync(::fileno(file.get()));
}

/// A CSV field: nine significant digits, empty for NaN.
inline std::string csv_number(double value) {
  if (std::isnan(value)) return "";
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.9g", value);
  return buffer;
}

/// A JSON number, null where JSON has none (NaN, infinities).
inline std::string json_number(double value) { return std::isfinite(value) ? csv_number(value) : std::string("null"); }

}  // namespace keel::detail
