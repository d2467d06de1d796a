#pragma once
// keel::TensorBoardLogger: scalars for TensorBoard, in one event file of a fixed name,
// <directory>/events.out.tfevents.keel (TensorBoard reads any file with "tfevents" in its name).
// Every `every_n_steps` optimizer steps: train/loss, train/lr (with keel::optim::ParamGroups also
// train/lr/<group> for each group), and train/grad_norm (the norm before clipping) when
// gradients are clipped; after every validation: val/<name> for each of its metrics. The step of every scalar is the global step. Written without TensorFlow
// (keel/detail/tfevents.hpp).
//
// After a resume every step appears exactly once. The number of bytes written is part of the
// logger's saved state, and the file is flushed to the kernel before each checkpoint; when a fit
// starts, bytes beyond that count (records written after the checkpoint by a run that was then
// killed, possibly half a record) are cut off before new records are appended. The file's name
// is fixed so that two runs of one configuration have the same state; only the wall times in
// the records differ.
//
// In a data-parallel job rank 0 writes the file; the other ranks count the same bytes without
// writing, so that their state is rank 0's.

#include <keel/context.hpp>
#include <keel/detail/tfevents.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/log.hpp>

#include <cereal/cereal.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <unistd.h>

namespace keel {

class TensorBoardLogger {
 public:
  static constexpr const char* keel_name = "keel::TensorBoardLogger";

  /// Logs every `every_n_steps` optimizer steps (and every validation) into `directory`.
  explicit TensorBoardLogger(std::string directory = "tensorboard", std::int64_t every_n_steps = 50)
      : directory_(std::move(directory)), every_(every_n_steps) {
    if (every_ <= 0)
      throw ConfigError("keel::TensorBoardLogger: every_n_steps must be positive, got " + std::to_string(every_));
  }

  std::string path() const { return (std::filesystem::path(directory_) / "events.out.tfevents.keel").string(); }
  /// Bytes of the event file that belong to this run so far.
  std::int64_t bytes() const noexcept { return bytes_; }

  /// Configuration: another cadence would change which steps the file holds.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "every_n_steps", every_);
  }

  /// State: the bytes of the event file written so far.
  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("bytes", bytes_));
  }

  void on_fit_start(Context& ctx) {
    // A fit after one that threw: its buffered records reach the file before it is measured.
    sync();
    file_.reset();
    counts_only_ = !ctx.is_global_zero();
    if (counts_only_) {
      if (bytes_ == 0) write(tfevents::file_version_event(now()));
      return;
    }
    std::error_code error;
    std::filesystem::create_directories(directory_, error);
    if (error) throw ConfigError("keel::TensorBoardLogger: cannot create '" + directory_ + "': " + error.message());
    file_ = open_at_byte(path());
    if (bytes_ == 0) write(tfevents::file_version_event(now()));
  }

  void on_optimizer_step_end(Context& ctx) {
    if (ctx.global_step() % every_ != 0 || !(file_ || counts_only_)) return;
    std::vector<std::pair<std::string, float>> values;
    values.emplace_back("train/loss", scalar(ctx.loss().defined() ? ctx.loss().item<double>() : NAN));
    values.emplace_back("train/lr", scalar(ctx.lr()));
    if (ctx.lrs().size() > 1)  // each param group's rate as well
      for (std::size_t g = 0; g < ctx.lrs().size() && g < ctx.lr_groups().size(); ++g)
        values.emplace_back("train/lr/" + ctx.lr_groups()[g], scalar(ctx.lrs()[g]));
    if (!std::isnan(ctx.grad_norm())) values.emplace_back("train/grad_norm", scalar(ctx.grad_norm()));
    write(tfevents::scalar_event(now(), ctx.global_step(), values));
  }

  void on_validation_end(Context& ctx) {
    if (!(file_ || counts_only_) || ctx.metrics().empty()) return;
    std::vector<std::pair<std::string, float>> values;
    for (const auto& [name, value] : ctx.metrics()) values.emplace_back("val/" + name, scalar(value));
    write(tfevents::scalar_event(now(), ctx.global_step(), values));
  }

  /// The bytes counted in the checkpoint must be in the file before it exists.
  void on_save_checkpoint_start(Context&) { sync(); }
  void on_fit_end(Context&) { sync(); }

 private:
  using File = std::shared_ptr<std::FILE>;  // shared: a staged copy of the logger must not close it

  /// A value as TensorBoard's float32 scalar; a finite double beyond float's range becomes an
  /// infinity (a plain conversion of it is undefined behaviour).
  static float scalar(double value) {
    if (std::isfinite(value) && std::fabs(value) > static_cast<double>(std::numeric_limits<float>::max()))
      return value > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    return static_cast<float>(value);
  }

  static double now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }

  /// Appends one record. A short write (disk full) ends logging for this fit rather than training,
  /// and is not counted: a resume cuts off the part that got through.
  void write(const std::string& event) {
    const std::string framed = tfevents::record(event);
    if (counts_only_) {  // (another rank's; rank 0 writes the same record)
      bytes_ += static_cast<std::int64_t>(framed.size());
      return;
    }
    if (std::fwrite(framed.data(), 1, framed.size(), file_.get()) != framed.size()) {
      warn("keel::TensorBoardLogger: cannot write to " + path() + "; no more scalars are logged in this fit");
      file_.reset();
      return;
    }
    bytes_ += static_cast<std::int64_t>(framed.size());
  }

  void sync() {
    if (!file_) return;
    std::fflush(file_.get());
    ::fsync(::fileno(file_.get()));
  }

  /// Opens `path` for appending after its first `bytes_` bytes, cutting off the rest. A file
  /// shorter than that (or gone) is taken as it is, from its end (from a new file version record
  /// when it is empty).
  File open_at_byte(const std::string& path) {
    std::error_code error;
    const bool exists = std::filesystem::exists(path, error);
    const std::uintmax_t size = exists ? std::filesystem::file_size(path, error) : 0;
    if (error) throw ConfigError("keel::TensorBoardLogger: cannot read the size of '" + path + "': " + error.message());
    if (size < static_cast<std::uintmax_t>(bytes_)) {
      warn(path + " holds " + std::to_string(size) + " bytes but the checkpoint counted " + std::to_string(bytes_) +
           "; earlier records are missing");
      bytes_ = static_cast<std::int64_t>(size);  // the count follows the file, so a later resume cuts at the right byte
    }
    if (exists) std::filesystem::resize_file(path, static_cast<std::uintmax_t>(bytes_), error);
    if (error) throw ConfigError("keel::TensorBoardLogger: cannot truncate '" + path + "': " + error.message());
    std::FILE* out = std::fopen(path.c_str(), "ab");
    if (!out) throw ConfigError("keel::TensorBoardLogger: cannot open '" + path + "' for writing");
    return File(out, [](std::FILE* f) { std::fclose(f); });
  }

  std::string directory_;
  std::int64_t every_;
  std::int64_t bytes_ = 0;
  bool counts_only_ = false;  // a rank other than 0: the bytes are counted, not written
  File file_;
};

}  // namespace keel
