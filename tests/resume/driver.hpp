#pragma once
// What the resume driver's translation units share (tests/resume/resume_driver.cpp, the
// classic variants and main; tests/resume/matrix_variants.cpp, the exactness matrix): the
// flags, the test callbacks and run<Trainer>(), which trains, saves and prints the digest.

#include "../support/synthetic.hpp"

#include <keel/keel.hpp>

#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <vector>

namespace resume_driver {

struct Flags {
  std::string variant = "adamw_cosine";
  std::int64_t max_steps = 0;
  std::int64_t epochs = 3;
  std::string ckpt_dir;
  std::string resume = "never";
  std::string save_to;  // after fit, also write the state to this file
  std::string params_to;  // after fit, rank 0 writes the parameters here (torch::save)
  std::string trained_to;  // a directory: each process appends the samples it trained to a file there
  std::int64_t bucket_bytes = 0;  // keel::DataParallel's gradient buckets (0: its default)
  std::string overlap = "on";     // keel::DataParallel's all-reduces during backward (or "off")
  bool async_save = false;        // TrainerOptions::async_save (--async-save on)
  std::int64_t save_every_steps = 0;
  std::int64_t accumulate = 1;
  std::int64_t kill_at_batch = -1;
  std::int64_t pause_ms = 0;
  std::int64_t batch_size = 16;
  std::int64_t dataset_size = 200;
  std::int64_t total_steps = 60;  // the schedule's length, fixed whatever --max-steps says
  int threads = 1;
  bool drop_last = false;
  bool shuffle = true;
  std::uint64_t seed = 7;
  // Forks and warm starts (README "Train longer, fork, fine-tune"):
  std::string allow_changes;  // comma-separated patterns
  std::string fork_from;
  std::string extend = "rescale";
  std::string init_from;
  std::string init_mode = "weights";  // or "optimizer"
  bool init_non_strict = false;
  // Loop features (the exactness matrix):
  std::string precision = "fp32";  // or "bf16"
  double clip_norm = 0.0;
  double clip_value = 0.0;
  std::int64_t validate_every_steps = 0;
  double loss_scale = 0.0;        // > 0: dynamic loss scaling from this initial scale
  std::int64_t keep_best = 0;     // top-k retention by val_loss
};

inline std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    const auto comma = text.find(',', start);
    out.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

/// The training set, which can write down each sample it hands out for training ("<epoch>
/// <index>" lines, in a file of this process's own under `directory`). The driver loads with
/// workers(0): in the training thread, a batch only when it is trained.
class TrainingImages {
 public:
  TrainingImages(std::int64_t size, const std::string& directory) : images_(size, 1234) {
    if (directory.empty()) return;
    const std::string path = directory + "/trained." + std::to_string(::getpid());
    record_ = std::fopen(path.c_str(), "a");
    if (!record_) throw std::runtime_error("cannot write '" + path + "'");
  }
  TrainingImages(const TrainingImages&) = delete;
  TrainingImages& operator=(const TrainingImages&) = delete;
  ~TrainingImages() {
    if (record_) std::fclose(record_);
  }
  std::size_t size() const { return images_.size(); }
  keel::data::Example get(std::size_t i, const keel::data::SampleContext& ctx) const {
    if (record_ && ctx.training()) {
      std::fprintf(record_, "%lld %zu\n", static_cast<long long>(ctx.epoch()), i);
      std::fflush(record_);
    }
    return images_.get(i);
  }

 private:
  keel_test::SyntheticImages images_;
  std::FILE* record_ = nullptr;
};

/// The matrix's variants (matrix_variants.cpp): the exit status, or -1 for a variant it does not know.
int dispatch_matrix(const Flags& flags);

}  // namespace resume_driver

// The callbacks stay in an anonymous namespace: their type names ("(anonymous namespace)::
// RandomProbe") name their checkpoint sections and sit in the fingerprint of the fixtures
// under tests/fixtures/checkpoints, which must keep loading.
namespace {

/// Samples a validation_step has seen in this process (PlainNet counts them).
std::int64_t validated_samples = 0;

using resume_driver::Flags;
using resume_driver::split_commas;
using keel_test::SmallNetImpl;
using keel_test::SyntheticImages;

/// A callback with its own random engine and counters, declared through Hana reflection: keel
/// derives its serialization. It draws a number every step, so an unsaved engine would show.
struct RandomProbe {
  BOOST_HANA_DEFINE_STRUCT(RandomProbe,
                           (std::mt19937_64, engine),
                           (std::int64_t, steps),
                           (double, draw_sum));

  void on_optimizer_step_end(keel::Context&) {
    ++steps;
    draw_sum += std::uniform_real_distribution<double>(0.0, 1.0)(engine);
  }
};

/// Accumulates the training loss of the current epoch (a metric accumulator that must survive a
/// mid-epoch resume), with a serialization of its own.
struct EpochLossMean {
  double sum = 0.0;
  std::int64_t count = 0;
  std::vector<double> epoch_means;

  void on_train_batch_end(keel::Context& ctx) {
    sum += ctx.loss().item<double>();
    ++count;
  }
  void on_train_epoch_end(keel::Context&) {
    epoch_means.push_back(count ? sum / static_cast<double>(count) : 0.0);
    sum = 0.0;
    count = 0;
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(CEREAL_NVP(sum), CEREAL_NVP(count), CEREAL_NVP(epoch_means));
  }
};

/// Kills the process with SIGKILL when the run reaches a global micro-batch index: a crash at a
/// precise point, such as inside a gradient-accumulation window.
struct KillSwitch {
  std::int64_t at_batch = -1;  // configuration, not state
  std::int64_t pause_ms = 0;   // (configuration) sleeps after each micro-batch: a slower run to signal
  template <class Archive>
  void serialize(Archive&) {}

  void on_train_batch_end(keel::Context& ctx) {
    if (pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    const std::int64_t global_batch = ctx.epoch() * ctx.batches_per_epoch() + ctx.batch_in_epoch();
    if (at_batch >= 0 && global_batch == at_batch) {
      std::fflush(stdout);
      std::raise(SIGKILL);
    }
  }
};

template <class Strategy, class = void>
struct has_gradient_buckets : std::false_type {};
template <class Strategy>
struct has_gradient_buckets<Strategy, std::void_t<decltype(std::declval<Strategy&>().overlap(true))>> : std::true_type {};

template <class Trainer, class... Extra>
int run(const Flags& flags, Extra&&... extra) {
  resume_driver::TrainingImages train(flags.dataset_size, flags.trained_to);
  SyntheticImages validation(64, 99);
  keel::seed_everything(flags.seed);
  Trainer trainer(std::make_shared<typename Trainer::Module>(),
                  keel::TrainerOptions()
                      .max_epochs(flags.epochs)
                      .max_steps(flags.max_steps)
                      .batch_size(flags.batch_size)
                      .accumulate(flags.accumulate)
                      .shuffle(flags.shuffle)
                      .drop_last(flags.drop_last)
                      .seed(flags.seed)
                      .threads(flags.threads)
                      .checkpoint_dir(flags.ckpt_dir)
                      .async_save(flags.async_save)
                      .save_every_steps(flags.save_every_steps)
                      .keep_last(flags.keep_best > 0 ? 1 : 0)  // rotation (and so top-k) only with --keep-best
                      .resume(flags.resume)
                      .allow_changes(split_commas(flags.allow_changes))
                      .fork_from(flags.fork_from)
                      .schedule_extension(keel::ScheduleExtension::parse(flags.extend))
                      .init_from(flags.init_from)
                      .init_mode(flags.init_mode == "optimizer" ? keel::InitFrom::weights_and_optimizer
                                                                : keel::InitFrom::weights)
                      .init_strict(!flags.init_non_strict)
                      .precision(flags.precision == "bf16" ? keel::Precision::bf16 : keel::Precision::fp32)
                      .clip_grad_norm(flags.clip_norm)
                      .clip_grad_value(flags.clip_value)
                      .validate_every_steps(flags.validate_every_steps)
                      .loss_scaling(flags.loss_scale > 0.0 ? std::optional<keel::LossScaling>(
                                                                 keel::LossScaling().init_scale(flags.loss_scale).growth_interval(4))
                                                           : std::nullopt)
                      .keep_best(flags.keep_best)
                      .monitor(flags.keep_best > 0 ? "val_loss" : ""),
                  std::forward<Extra>(extra)..., KillSwitch{flags.kill_at_batch, flags.pause_ms});
  if constexpr (has_gradient_buckets<std::decay_t<decltype(trainer.strategy())>>::value) {  // (keel::DataParallel)
    if (flags.bucket_bytes > 0) trainer.strategy().bucket_bytes(flags.bucket_bytes);
    trainer.strategy().overlap(flags.overlap != "off");
  }
  trainer.fit(train, validation);
  if (!flags.save_to.empty()) {  // (every rank calls it; rank 0 writes, and the others return once it has)
    trainer.save_checkpoint(flags.save_to);
    std::printf("saved_to_exists=%d\n", std::filesystem::exists(flags.save_to) ? 1 : 0);
  }
  if (!flags.params_to.empty()) {  // (the data-parallel comparisons: every rank evaluates)
    const keel::Metrics evaluated = trainer.evaluate(validation);
    std::printf("evaluated_val_loss=%.17g\nvalidated_samples=%lld\n", evaluated.at("val_loss"),
                static_cast<long long>(validated_samples));
  }
  if (!flags.params_to.empty() && trainer.strategy().rank() == 0) {
    std::vector<torch::Tensor> params;
    for (const auto& p : trainer.model()->parameters()) params.push_back(p.detach().clone());
    torch::save(params, flags.params_to);
  }
  std::printf("epoch=%lld\nglobal_step=%lld\n", static_cast<long long>(trainer.loop().epoch),
              static_cast<long long>(trainer.loop().global_step));
  std::printf("lr=%.17g\n", trainer.optimizer().lr(0));
  std::printf("loss_scale=%.17g\nloss_scale_skips=%lld\n", trainer.loop().loss_scale.scale,
              static_cast<long long>(trainer.loop().loss_scale.skipped_steps));
  std::printf("state_digest=%s\n", trainer.state_digest().c_str());
  return 0;
}

}  // namespace
