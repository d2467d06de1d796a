// A small training program for the process-boundary exactness tests: it trains one of several
// Trainer compositions on a synthetic dataset, checkpoints, resumes, can kill itself at a chosen
// micro-batch, and prints `state_digest=<hex>` at the end.
//
//   resume_driver --variant adamw_cosine --max-steps 40 --ckpt-dir DIR [--resume auto] ...
//   resume_driver ... --resume auto --fork-from FILE --allow-changes 'scheduler.*' --extend append_cosine

#include "../support/synthetic.hpp"

#include <keel/keel.hpp>

#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

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
  template <class Archive>
  void serialize(Archive&) {}

  void on_train_batch_end(keel::Context& ctx) {
    const std::int64_t global_batch = ctx.epoch() * ctx.batches_per_epoch() + ctx.batch_in_epoch();
    if (at_batch >= 0 && global_batch == at_batch) {
      std::fflush(stdout);
      std::raise(SIGKILL);
    }
  }
};

struct Flags {
  std::string variant = "adamw_cosine";
  std::int64_t max_steps = 0;
  std::int64_t epochs = 3;
  std::string ckpt_dir;
  std::string resume = "never";
  std::string save_to;  // after fit, also write the state to this file
  std::int64_t save_every_steps = 0;
  std::int64_t accumulate = 1;
  std::int64_t kill_at_batch = -1;
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
};

std::vector<std::string> split_commas(const std::string& text) {
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

template <class Trainer, class... Extra>
int run(const Flags& flags, Extra&&... extra) {
  SyntheticImages train(flags.dataset_size, 1234);
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
                      .save_every_steps(flags.save_every_steps)
                      .keep_last(0)
                      .resume(flags.resume)
                      .allow_changes(split_commas(flags.allow_changes))
                      .fork_from(flags.fork_from)
                      .schedule_extension(keel::ScheduleExtension::parse(flags.extend))
                      .init_from(flags.init_from)
                      .init_mode(flags.init_mode == "optimizer" ? keel::InitFrom::weights_and_optimizer
                                                                : keel::InitFrom::weights)
                      .init_strict(!flags.init_non_strict),
                  std::forward<Extra>(extra)..., KillSwitch{flags.kill_at_batch});
  trainer.fit(train, validation);
  if (!flags.save_to.empty()) trainer.save_checkpoint(flags.save_to);
  std::printf("epoch=%lld\nglobal_step=%lld\n", static_cast<long long>(trainer.loop().epoch),
              static_cast<long long>(trainer.loop().global_step));
  std::printf("state_digest=%s\n", trainer.state_digest().c_str());
  return 0;
}

int dispatch(const Flags& flags) {
  using Model = keel::model<SmallNetImpl>;
  if (flags.variant == "sgd_step") {
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::SGD>, keel::scheduler<keel::sched::StepDecay>,
                            keel::callbacks<KillSwitch>>;
    return run<T>(flags, torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(1e-4),
                  keel::sched::StepDecayOptions(7, 0.5));
  }
  if (flags.variant == "adam_cosine") {
    using T = keel::Trainer<keel::callbacks<KillSwitch, EpochLossMean>, Model,
                            keel::scheduler<keel::sched::CosineWarmup>, keel::optimizer<keel::optim::Adam>>;
    return run<T>(flags, torch::optim::AdamOptions(3e-3).amsgrad(true),
                  keel::sched::CosineWarmupOptions(5, flags.total_steps));
  }
  if (flags.variant == "adamw_cosine") {
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::AdamW>, keel::scheduler<keel::sched::CosineWarmup>,
                            keel::callbacks<RandomProbe, EpochLossMean, keel::EarlyStopping, KillSwitch>,
                            keel::checkpoint<keel::format::Binary>>;
    RandomProbe probe{std::mt19937_64(flags.seed), 0, 0.0};
    return run<T>(flags, torch::optim::AdamWOptions(3e-3).weight_decay(0.05),
                  keel::sched::CosineWarmupOptions(5, flags.total_steps).min_lr_ratio(0.1), probe,
                  keel::EarlyStopping("val_loss", 50));
  }
  if (flags.variant == "declared_model") {  // a model with state beyond parameters and buffers
    using T = keel::Trainer<keel::model<keel_test::StatefulNetImpl>, keel::optimizer<keel::optim::SGD>,
                            keel::scheduler<keel::sched::StepDecay>, keel::callbacks<KillSwitch>>;
    return run<T>(flags, torch::optim::SGDOptions(0.05).momentum(0.9), keel::sched::StepDecayOptions(7, 0.5));
  }
  std::fprintf(stderr, "unknown --variant %s (sgd_step, adam_cosine, adamw_cosine, declared_model)\n",
               flags.variant.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  std::map<std::string, std::string> given;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "--drop-last") { flags.drop_last = true; continue; }
    if (key == "--no-shuffle") { flags.shuffle = false; continue; }
    if (key == "--init-non-strict") { flags.init_non_strict = true; continue; }
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
      std::fprintf(stderr, "bad argument '%s'\n", key.c_str());
      return 2;
    }
    given[key] = argv[++i];
  }
  auto number = [&](const char* key, auto& out) {
    if (auto it = given.find(key); it != given.end()) {
      out = static_cast<std::decay_t<decltype(out)>>(std::stoll(it->second));
      given.erase(it);
    }
  };
  auto text = [&](const char* key, std::string& out) {
    if (auto it = given.find(key); it != given.end()) {
      out = it->second;
      given.erase(it);
    }
  };
  text("--variant", flags.variant);
  text("--ckpt-dir", flags.ckpt_dir);
  text("--resume", flags.resume);
  text("--save-to", flags.save_to);
  text("--allow-changes", flags.allow_changes);
  text("--fork-from", flags.fork_from);
  text("--extend", flags.extend);
  text("--init-from", flags.init_from);
  text("--init-mode", flags.init_mode);
  number("--max-steps", flags.max_steps);
  number("--epochs", flags.epochs);
  number("--save-every-steps", flags.save_every_steps);
  number("--accumulate", flags.accumulate);
  number("--kill-at-batch", flags.kill_at_batch);
  number("--batch-size", flags.batch_size);
  number("--dataset-size", flags.dataset_size);
  number("--total-steps", flags.total_steps);
  number("--threads", flags.threads);
  number("--seed", flags.seed);
  if (!given.empty()) {
    std::fprintf(stderr, "unknown option '%s'\n", given.begin()->first.c_str());
    return 2;
  }
  try {
    return dispatch(flags);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return keel::exit_status(e);
  }
}
