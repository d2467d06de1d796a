#pragma once
// keel::MetricsLogger: plottable logs, metrics.csv and metrics.jsonl, one row per logged
// optimizer step (step, epoch, loss, lr, samples/s; in metrics.jsonl also grad_norm, the norm
// before clipping, when gradients are clipped) and one per validation (its metrics).
//
// After a resume every step appears exactly once: the rows written are counted in the logger's
// saved state, and rows beyond the count are cut off when a fit starts (keel/detail/row_log.hpp).
// In a data-parallel job rank 0 writes the files (samples/s counts the whole job's samples); the
// other ranks count the same rows without writing.

#include <keel/context.hpp>
#include <keel/detail/row_log.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>

#include <cereal/cereal.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace keel {

class MetricsLogger {
 public:
  static constexpr const char* keel_name = "keel::MetricsLogger";

  /// Logs every `every_n_steps` optimizer steps into `directory`. `validation_columns` are the
  /// validation metrics that get a CSV column (the JSON Lines file holds every metric).
  explicit MetricsLogger(std::string directory = "logs", std::int64_t every_n_steps = 50,
                         std::vector<std::string> validation_columns = {})
      : directory_(std::move(directory)), every_(every_n_steps), columns_(std::move(validation_columns)) {
    if (every_ <= 0) throw ConfigError("keel::MetricsLogger: every_n_steps must be positive, got " + std::to_string(every_));
  }

  std::string csv_path() const { return (std::filesystem::path(directory_) / "metrics.csv").string(); }
  std::string jsonl_path() const { return (std::filesystem::path(directory_) / "metrics.jsonl").string(); }
  std::int64_t rows() const noexcept { return rows_; }

  /// Configuration: another cadence or other columns would change what the rows mean.
  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "every_n_steps", every_);
    std::string columns;
    for (const auto& c : columns_) columns += (columns.empty() ? "" : ",") + c;
    fingerprint.add(prefix + "validation_columns", columns);
  }

  /// State: rows written so far (the same in every file).
  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("rows", rows_));
  }

  void on_fit_start(Context& ctx) {
    started_ = true;
    last_ = Clock::now();
    samples_ = 0;
    if (!ctx.is_global_zero()) return;
    std::error_code error;
    std::filesystem::create_directories(directory_, error);
    if (error) throw ConfigError("keel::MetricsLogger: cannot create '" + directory_ + "': " + error.message());
    csv_ = detail::open_after_rows(csv_path(), rows_, /*header_lines=*/1, keel_name);
    jsonl_ = detail::open_after_rows(jsonl_path(), rows_, /*header_lines=*/0, keel_name);
    if (detail::log_is_empty(csv_path())) {
      std::string header = "step,epoch,phase,loss,lr,samples_per_sec";
      for (const auto& c : columns_) header += "," + c;
      std::fprintf(csv_.get(), "%s\n", header.c_str());
    }
  }

  void on_train_batch_end(Context& ctx) { samples_ += ctx.batch_size() * ctx.world_size(); }  // (the job's)

  void on_optimizer_step_end(Context& ctx) {
    if (ctx.global_step() % every_ != 0 || !started_) return;
    const auto now = Clock::now();
    const double seconds = std::chrono::duration<double>(now - last_).count();
    const double throughput = seconds > 0 ? static_cast<double>(samples_) / seconds : 0.0;
    last_ = now;
    samples_ = 0;
    const double loss = ctx.loss().defined() ? ctx.loss().item<double>() : NAN;
    std::string csv = std::to_string(ctx.global_step()) + "," + std::to_string(ctx.epoch()) + ",train," +
                      number(loss) + "," + number(ctx.lr()) + "," + number(throughput);
    for (std::size_t i = 0; i < columns_.size(); ++i) csv += ",";
    write_row(csv, "{\"step\": " + std::to_string(ctx.global_step()) + ", \"epoch\": " + std::to_string(ctx.epoch()) +
                       ", \"phase\": \"train\", \"loss\": " + json_number(loss) + ", \"lr\": " + json_number(ctx.lr()) +
                       ", \"samples_per_sec\": " + json_number(throughput) +
                       (std::isnan(ctx.grad_norm()) ? std::string() : ", \"grad_norm\": " + json_number(ctx.grad_norm())) +
                       "}");
  }

  void on_validation_end(Context& ctx) {
    if (!started_) return;
    std::string csv = std::to_string(ctx.global_step()) + "," + std::to_string(ctx.epoch()) + ",validation,,,";
    for (const auto& c : columns_) {
      auto found = ctx.metrics().find(c);
      csv += "," + (found == ctx.metrics().end() ? std::string() : number(found->second));
    }
    std::string json = "{\"step\": " + std::to_string(ctx.global_step()) + ", \"epoch\": " + std::to_string(ctx.epoch()) +
                       ", \"phase\": \"validation\"";
    for (const auto& [name, value] : ctx.metrics()) json += ", \"" + name + "\": " + json_number(value);
    write_row(csv, json + "}");
  }

  /// The rows counted in the checkpoint must be in the files before it exists.
  void on_save_checkpoint_start(Context&) { sync(); }
  void on_fit_end(Context&) { sync(); }

 private:
  using Clock = std::chrono::steady_clock;
  using File = detail::LogFile;
  static std::string number(double value) { return detail::csv_number(value); }
  static std::string json_number(double value) { return detail::json_number(value); }

  void write_row(const std::string& csv, const std::string& json) {
    if (csv_) {  // (rank 0's files; another rank counts the row only)
      std::fprintf(csv_.get(), "%s\n", csv.c_str());
      std::fprintf(jsonl_.get(), "%s\n", json.c_str());
    }
    ++rows_;
  }

  void sync() {
    detail::sync_log(csv_);
    detail::sync_log(jsonl_);
  }

  std::string directory_;
  std::int64_t every_;
  std::vector<std::string> columns_;
  std::int64_t rows_ = 0;
  bool started_ = false;  // (on_fit_start has run: the rows may be counted)
  File csv_;
  File jsonl_;
  Clock::time_point last_{};
  std::int64_t samples_ = 0;
};

}  // namespace keel
