#pragma once
// keel::LearningRateMonitor: the learning rate of every param group, as the optimizer steps
// took it (Lightning's LearningRateMonitor), in <directory>/lr.csv:
//
//   step,epoch,lr_default,lr_no_decay
//   1,0,1e-05,1e-05
//
// One row every `every_n_steps` optimizer steps; `step` is the global step after the step, the
// rate the one that step applied (a schedule's warm-up shows from its first step). Columns are
// the param groups' names (keel::optim::ParamGroups; "default" for the rest). After a resume
// every step appears exactly once (keel/detail/row_log.hpp). MetricsLogger's `lr` column and
// TensorBoardLogger's train/lr are Context::lr() after the step, the rate of the step to come.

#include <keel/context.hpp>
#include <keel/detail/row_log.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>

#include <cereal/cereal.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace keel {

class LearningRateMonitor {
 public:
  static constexpr const char* keel_name = "keel::LearningRateMonitor";

  explicit LearningRateMonitor(std::string directory = "logs", std::int64_t every_n_steps = 1)
      : directory_(std::move(directory)), every_(every_n_steps) {
    if (every_ <= 0)
      throw ConfigError("keel::LearningRateMonitor: every_n_steps must be positive, got " + std::to_string(every_));
  }

  std::string csv_path() const { return (std::filesystem::path(directory_) / "lr.csv").string(); }
  std::int64_t rows() const noexcept { return rows_; }

  /// Configuration: another cadence would change which steps the file holds.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "every_n_steps", every_);
  }

  /// State: rows written so far. (The rates of the step under way are read from the optimizer
  /// again when a fit starts, which the checkpoint restores.)
  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("rows", rows_));
  }

  void on_fit_start(Context& ctx) {
    started_ = true;
    applied_ = ctx.lrs();
    if (!ctx.is_global_zero()) return;  // (rank 0 writes a data-parallel job's file; the others count its rows)
    std::error_code error;
    std::filesystem::create_directories(directory_, error);
    if (error) throw ConfigError(std::string(keel_name) + ": cannot create '" + directory_ + "': " + error.message());
    file_ = detail::open_after_rows(csv_path(), rows_, /*header_lines=*/1, keel_name);
    if (detail::log_is_empty(csv_path())) {
      std::string header = "step,epoch";
      for (const auto& group : ctx.lr_groups()) header += ",lr_" + group;
      std::fprintf(file_.get(), "%s\n", header.c_str());
    }
  }

  /// The rates the coming optimizer step applies (a validation or an epoch end may have changed
  /// them since the last step).
  void on_train_batch_start(Context& ctx) {
    if (ctx.loop().micro_batch == 0) applied_ = ctx.lrs();
  }

  void on_optimizer_step_end(Context& ctx) {
    if (ctx.global_step() % every_ != 0 || !started_) return;
    if (file_) {
      std::string row = std::to_string(ctx.global_step()) + "," + std::to_string(ctx.epoch());
      for (const double lr : applied_) row += "," + detail::csv_number(lr);
      std::fprintf(file_.get(), "%s\n", row.c_str());
    }
    ++rows_;
  }

  /// The rows counted in the checkpoint must be in the file before it exists.
  void on_save_checkpoint_start(Context&) { detail::sync_log(file_); }
  void on_fit_end(Context&) { detail::sync_log(file_); }

 private:
  std::string directory_;
  std::int64_t every_;
  std::int64_t rows_ = 0;
  bool started_ = false;  // (on_fit_start has run: the rows may be counted)
  std::vector<double> applied_;  // the rates of the step under way
  detail::LogFile file_;
};

}  // namespace keel
