// Trains a classifier on Fashion-MNIST with keel, writing checkpoints as it goes. Run it again
// with the same flags and it resumes from the newest valid checkpoint; interrupted or not, the
// final `state_digest` is the same.
//
//   fashion_mnist --model cnn --epochs 2 --ckpt-dir runs/fashion-mnist
//   fashion_mnist --epochs 4 --resume-changed auto     train a finished run for longer (a fork)
//   fashion_mnist --init-from FILE --ckpt-dir DIR      a new run from FILE's weights
//   fashion_mnist --optimizer sgd --momentum 0.9 --scheduler onecycle --precision bf16 --ema 0.999
//   keel-run --nproc-per-node 2 fashion_mnist --batch-size 32   two processes, data-parallel
//
// The optimizer and the scheduler are chosen at run time (keel::optim::OneOf, keel::sched::OneOf)
// and so are the optional callbacks (keel::Optional): one Trainer type per model and format
// serves every combination of flags. The strategy is keel::DataParallel: started by a launcher
// (keel-run, torchrun, srun, mpirun) the processes train together, each on its share of every
// epoch with --batch-size samples per step; started alone, the program trains in one process.

#include "fashion_mnist_data.hpp"
#include "models.hpp"

#include <keel/distributed.hpp>
#include <keel/keel.hpp>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <type_traits>

namespace {

struct Flags {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string ckpt_dir = "runs/fashion-mnist/checkpoints";
  std::int64_t epochs = 2;
  std::int64_t max_steps = 0;
  std::int64_t batch_size = 64;
  double lr = 1e-3;
  std::uint64_t seed = 42;
  int threads = 0;
  std::string model = "cnn";
  std::int64_t mlp_hidden = 256;
  double dropout = -1.0;  // < 0: the model's own (0.2 for the MLP, 0.3 for the CNN)
  std::int64_t accumulate = 1;
  std::int64_t save_every_steps = 200;
  std::string resume = "auto";
  std::string resume_changed;  // auto or a checkpoint file: resume, allowing configuration changes
  std::string extend = "rescale";
  std::string init_from;
  bool init_non_strict = false;
  std::int64_t validation_size = 5000;
  std::int64_t log_every = 50;
  std::string log_dir = "runs/fashion-mnist/logs";
  std::string progress = "auto";
  int workers = 2;
  bool augment = false;
  bool continue_on_save_error = false;
  bool async_save = false;
  std::string optimizer = "adamw";
  double momentum = 0.9;  // SGD's and RMSprop's
  double weight_decay = 1e-4;
  bool no_decay_bias_norm = false;
  std::string scheduler = "warmup-cosine";
  std::string precision = "fp32";
  double clip_norm = 0.0;
  double clip_value = 0.0;
  double ema = 0.0;
  std::int64_t validate_every_steps = 0;
  double max_time = 0.0;
  std::string format = "binary";
  std::string tensorboard;
  std::string strategy = "auto";
  double dist_timeout = 300.0;
  std::int64_t dist_bucket_kb = 1024;
  std::string dist_overlap = "on";
};

using Optimizer = keel::optim::OneOf<keel::optim::SGD, keel::optim::Adam, keel::optim::AdamW, keel::optim::RMSprop,
                                     keel::optim::Adagrad>;
using WarmupLinear = keel::sched::Sequential<keel::sched::LinearLR, keel::sched::LinearLR>;
using Scheduler = keel::sched::OneOf<keel::sched::Constant, keel::sched::StepLR, keel::sched::MultiStepLR,
                                     keel::sched::ExponentialLR, keel::sched::CosineAnnealingLR,
                                     keel::sched::CosineAnnealingWarmRestarts, keel::sched::CosineWarmup, WarmupLinear,
                                     keel::sched::OneCycleLR, keel::sched::ReduceLROnPlateau>;

Optimizer::Options optimizer_options(const Flags& flags) {
  namespace o = torch::optim;
  if (flags.optimizer == "sgd") return o::SGDOptions(flags.lr).momentum(flags.momentum).weight_decay(flags.weight_decay);
  if (flags.optimizer == "adam") return o::AdamOptions(flags.lr).weight_decay(flags.weight_decay);
  if (flags.optimizer == "rmsprop")
    return o::RMSpropOptions(flags.lr).momentum(flags.momentum).weight_decay(flags.weight_decay);
  if (flags.optimizer == "adagrad") return o::AdagradOptions(flags.lr).weight_decay(flags.weight_decay);
  return o::AdamWOptions(flags.lr).weight_decay(flags.weight_decay);
}

/// Each schedule with arguments derived from the run's length: `total` optimizer steps, the first
/// `warmup` of them warming up where the schedule has a warm-up.
Scheduler::Options scheduler_options(const std::string& name, std::int64_t total, std::int64_t warmup) {
  namespace s = keel::sched;
  const std::int64_t quarter = std::max<std::int64_t>(1, total / 4);
  if (name == "constant") return s::Constant::Options{};
  if (name == "step") return s::StepLROptions(std::max<std::int64_t>(1, total / 3), 0.1);  // two decays
  if (name == "multistep") return s::MultiStepLROptions({2 * quarter, 3 * quarter}, 0.1);
  if (name == "exponential") return s::ExponentialLROptions(std::pow(0.01, 1.0 / static_cast<double>(total)));  // to 1%
  if (name == "cosine") return s::CosineAnnealingLROptions(total);
  if (name == "cosine-restarts") return s::CosineAnnealingWarmRestartsOptions(quarter);  // four cycles
  if (name == "warmup-linear")
    return WarmupLinear::Options(s::LinearLROptions(1.0 / static_cast<double>(warmup), 1.0, warmup),
                                 s::LinearLROptions(1.0, 0.0, std::max<std::int64_t>(1, total - warmup)), warmup);
  if (name == "onecycle") return s::OneCycleLROptions(total);  // peaks at --lr
  if (name == "plateau") return s::ReduceLROnPlateauOptions("val_loss").factor(0.5).patience(1);
  return s::CosineWarmupOptions(warmup, total + 1);
}

keel::Precision precision_of(const std::string& name) {
  if (name == "bf16") return keel::Precision::bf16;
  if (name == "fp16") return keel::Precision::fp16;  // CUDA only: keel says so on the CPU
  return keel::Precision::fp32;
}

template <class Module, class Format>
int train(const Flags& flags) {
  using Trainer = keel::Trainer<
      keel::model<Module>, keel::optimizer<Optimizer>, keel::scheduler<Scheduler>,
      keel::callbacks<keel::ProgressBar, keel::MetricsLogger, keel::LearningRateMonitor, keel::EarlyStopping,
                      keel::Optional<keel::EMA>, keel::Optional<keel::WallTimeLimit>, keel::Optional<keel::TensorBoardLogger>>,
      keel::checkpoint<Format>, keel::strategy<keel::DataParallel>>;

  fashion_mnist::Dataset all_train(flags.data, "train");
  fashion_mnist::Dataset test(flags.data, "t10k");
  const auto train_size = static_cast<std::int64_t>(all_train.size()) - flags.validation_size;
  if (train_size <= 0 || flags.validation_size < 0)
    throw keel::ConfigError("--validation-size must be in [0, " + std::to_string(all_train.size()) + ")");
  auto train_set = all_train.slice(0, train_size);
  train_set.augment(flags.augment);
  auto validation_set = all_train.slice(train_size, static_cast<std::int64_t>(all_train.size()));

  // The schedule spans the whole run: every epoch, or --max-steps if that ends it sooner. Under
  // a launcher each of the processes takes its share of an epoch, in steps of --batch-size.
  const keel::dist::ProcessPlace place = keel::dist::place_from_environment();  // (one process: rank 0 of 1)
  const std::int64_t share = (train_size + place.world_size - 1) / place.world_size;
  const std::int64_t batches = (share + flags.batch_size - 1) / flags.batch_size;
  const std::int64_t steps_per_epoch = (batches + flags.accumulate - 1) / flags.accumulate;
  std::int64_t total_steps = flags.epochs * steps_per_epoch;
  if (flags.max_steps > 0) total_steps = std::min(total_steps, flags.max_steps);
  const std::int64_t warmup = std::max<std::int64_t>(1, std::min<std::int64_t>(200, total_steps / 10));

  // Before the model is built: its initialization draws numbers. Each process of a
  // data-parallel job draws its own Dropout masks (the parameters are rank 0's, sent to every
  // rank at the start; each rank's random streams are saved).
  keel::seed_everything(flags.seed + static_cast<std::uint64_t>(place.rank));
  std::shared_ptr<Module> module;
  const double dropout = flags.dropout >= 0.0 ? flags.dropout : Module::kDropout;
  if constexpr (std::is_same_v<Module, fashion_mnist::MlpImpl>) {
    module = std::make_shared<Module>(flags.mlp_hidden, dropout);
  } else {
    module = std::make_shared<Module>(dropout);
  }
  keel::TrainerOptions options;
  if (!flags.resume_changed.empty()) {
    // A fork: the whole state, then this run's configuration (every change is printed and
    // recorded in the lineage). A file is only the starting point: once this run has
    // checkpoints of its own, the same command resumes them.
    options.resume("auto").allow_changes({"*"}).schedule_extension(keel::ScheduleExtension::parse(flags.extend));
    if (flags.resume_changed != "auto") options.fork_from(flags.resume_changed);
  } else {
    options.resume(flags.resume);
  }
  if (!flags.init_from.empty()) options.init_from(flags.init_from).init_strict(!flags.init_non_strict);
  keel::optim::ParamGroups groups;  // none: every parameter in "default"
  if (flags.no_decay_bias_norm)  // biases and normalization weights without weight decay
    groups = keel::optim::ParamGroups({keel::optim::ParamGroup("no_decay", keel::optim::bias_or_norm).set("weight_decay", 0.0)});
  // (Recorded only when given, so that the runs from before the flag keep resuming.)
  if (flags.dropout >= 0.0) options.config("dropout", keel::shortest_decimal(flags.dropout));
  Trainer trainer(module,
                  options
                      .max_epochs(flags.epochs)
                      .max_steps(flags.max_steps)
                      .batch_size(flags.batch_size)
                      .accumulate(flags.accumulate)
                      .seed(flags.seed)
                      .threads(flags.threads)
                      .checkpoint_dir(flags.ckpt_dir)
                      .save_every_steps(flags.save_every_steps)
                      .validation_batch_size(1000)
                      .workers(flags.workers)
                      .continue_on_save_error(flags.continue_on_save_error)
                      .async_save(flags.async_save)
                      .config("model", flags.model)
                      .config("mlp_hidden", std::to_string(flags.mlp_hidden))
                      .config("augment", flags.augment ? "on" : "off")
                      .config("validation_size", std::to_string(flags.validation_size))
                      .precision(precision_of(flags.precision))
                      .clip_grad_norm(flags.clip_norm)
                      .clip_grad_value(flags.clip_value)
                      .validate_every_steps(flags.validate_every_steps),
                  optimizer_options(flags), groups, scheduler_options(flags.scheduler, total_steps, warmup),
                  keel::ProgressBar(keel::ProgressBar::parse_mode(flags.progress), flags.log_every),
                  keel::MetricsLogger(flags.log_dir, flags.log_every, {"val_loss", "val_accuracy"}),
                  keel::LearningRateMonitor(flags.log_dir, flags.log_every), keel::EarlyStopping("val_loss", 5),
                  flags.ema > 0 ? keel::Optional<keel::EMA>(keel::EMA(flags.ema)) : keel::Optional<keel::EMA>(),
                  flags.max_time > 0 ? keel::Optional<keel::WallTimeLimit>(keel::WallTimeLimit(flags.max_time))
                                     : keel::Optional<keel::WallTimeLimit>(),
                  flags.tensorboard.empty()
                      ? keel::Optional<keel::TensorBoardLogger>()
                      : keel::Optional<keel::TensorBoardLogger>(keel::TensorBoardLogger(flags.tensorboard, flags.log_every)));
  auto& strategy = trainer.strategy();
  if (flags.strategy == "single") strategy.alone();
  if (flags.strategy == "ddp" && strategy.place().launcher == "none")
    throw keel::ConfigError("--strategy ddp: this process was started by no launcher (no RANK, WORLD_SIZE...): start it "
                            "with keel-run --nproc-per-node N, torchrun, srun or mpirun, or drop --strategy ddp to "
                            "train in one process");
  strategy.timeout(std::chrono::milliseconds(static_cast<std::int64_t>(flags.dist_timeout * 1000.0)))
      .bucket_bytes(flags.dist_bucket_kb * 1024)
      .overlap(flags.dist_overlap == "on");

  const auto start = std::chrono::steady_clock::now();
  if (flags.validation_size > 0) {
    trainer.fit(train_set, validation_set);
  } else {
    trainer.fit(train_set);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const keel::Metrics test_metrics = trainer.evaluate(test);
  if (strategy.rank() != 0) return 0;  // (rank 0 reports for a data-parallel job, whose checkpoints it writes)
  std::printf("trained to epoch %lld, step %lld in %.1f s (this process)\n",
              static_cast<long long>(trainer.loop().epoch), static_cast<long long>(trainer.loop().global_step),
              seconds);
  std::printf("test_accuracy=%.4f\n", test_metrics.at("val_accuracy"));
  std::printf("state_digest=%s\n", trainer.state_digest().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"Train a Fashion-MNIST classifier with keel; rerun to resume."};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag overrides
  app.add_option("--data", flags.data, "directory with the gzip IDX files")->capture_default_str();
  app.add_option("--ckpt-dir", flags.ckpt_dir, "checkpoint directory")->capture_default_str();
  app.add_option("--epochs", flags.epochs, "epochs to train")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--max-steps", flags.max_steps, "stop after this many optimizer steps in total (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", flags.batch_size, "samples per micro-batch (of each process, under a launcher)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--lr", flags.lr, "peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", flags.seed, "seed of initialization, data order and dropout")->capture_default_str();
  app.add_option("--threads", flags.threads, "LibTorch intra-op threads (0: LibTorch's default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--model", flags.model, "mlp or cnn")->capture_default_str()->check(CLI::IsMember({"mlp", "cnn"}));
  app.add_option("--mlp-hidden", flags.mlp_hidden, "hidden units of --model mlp")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--dropout", flags.dropout, "probability of the models' Dropout (default: 0.2 for mlp, 0.3 for cnn)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--accumulate", flags.accumulate, "micro-batches per optimizer step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--save-every-steps", flags.save_every_steps,
                 "checkpoint every N optimizer steps (also at each epoch end and at the end)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--resume", flags.resume, "auto, never, or a checkpoint file")->capture_default_str();
  app.add_option("--resume-changed", flags.resume_changed,
                 "auto or a checkpoint file: resume even though flags changed the configuration (--epochs, --lr...): "
                 "a fork, printed and recorded in the checkpoints' lineage");
  app.add_option("--extend", flags.extend,
                 "with --resume-changed, the learning-rate schedule of the longer run: rescale (the schedule of the "
                 "new length from the current step), append_cosine[(PEAK)] or append_constant[(LEVEL)] (the old "
                 "schedule to its end, then a new phase)")
      ->capture_default_str();
  app.add_option("--init-from", flags.init_from,
                 "start a new run from this checkpoint's weights (only when --ckpt-dir has no checkpoint yet)");
  app.add_flag("--init-non-strict", flags.init_non_strict,
               "with --init-from, take the tensors that match and list the others (another --model, say)");
  app.add_option("--validation-size", flags.validation_size, "training samples held out for validation")
      ->capture_default_str();
  app.add_option("--workers", flags.workers, "threads loading batches ahead (results do not depend on it)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--continue-on-save-error", flags.continue_on_save_error,
               "when a checkpoint cannot be written (disk full...), warn and retry at the next save");
  app.add_flag("--async-save", flags.async_save,
               "write checkpoints on a thread of their own while training continues (same files)");
  app.add_flag("--augment", flags.augment, "random shifts by up to 2 pixels and left-right flips");
  app.add_option("--log-every", flags.log_every, "log a row (and, off a terminal, print a line) every N steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--log-dir", flags.log_dir, "where metrics.csv and metrics.jsonl go")->capture_default_str();
  app.add_option("--progress", flags.progress, "auto (a bar on a terminal, plain lines otherwise), bar, plain, off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "bar", "plain", "off"}));
  app.add_option("--optimizer", flags.optimizer, "sgd, adam, adamw, rmsprop or adagrad")
      ->capture_default_str()
      ->check(CLI::IsMember({"sgd", "adam", "adamw", "rmsprop", "adagrad"}));
  app.add_option("--momentum", flags.momentum, "momentum of --optimizer sgd and rmsprop")->capture_default_str();
  app.add_option("--weight-decay", flags.weight_decay, "weight decay (decoupled for adamw)")->capture_default_str();
  app.add_flag("--no-decay-bias-norm", flags.no_decay_bias_norm,
               "no weight decay for biases and normalization weights (a param group of their own)");
  app.add_option("--scheduler", flags.scheduler,
                 "learning-rate schedule over the run: constant, step, multistep, exponential, cosine, cosine-restarts, "
                 "warmup-cosine, warmup-linear, onecycle, plateau (on val_loss)")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "step", "multistep", "exponential", "cosine", "cosine-restarts",
                             "warmup-cosine", "warmup-linear", "onecycle", "plateau"}));
  app.add_option("--precision", flags.precision, "fp32, bf16 (autocast), or fp16 (CUDA only, with loss scaling)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--clip-norm", flags.clip_norm, "clip gradients to this global norm (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--clip-value", flags.clip_value, "clip each gradient element to [-X, X] (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--ema", flags.ema, "keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                                     "validation uses it; 0: off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--validate-every-steps", flags.validate_every_steps, "also validate every N optimizer steps (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-time", flags.max_time,
                 "stop with a checkpoint once training has run this many seconds, over all its resumes (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--format", flags.format, "checkpoint format: binary (.ckpt) or json (.jckpt)")
      ->capture_default_str()
      ->check(CLI::IsMember({"binary", "json"}));
  app.add_option("--tensorboard", flags.tensorboard, "write TensorBoard scalars into this directory");
  app.add_option("--strategy", flags.strategy,
                 "auto: data-parallel when a launcher (keel-run, torchrun, srun, mpirun) started this process, one "
                 "process otherwise; ddp: data-parallel, refused without a launcher; single: one process, whatever "
                 "the launcher's variables say (a batch script that runs it once)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "ddp", "single"}));
  app.add_option("--dist-timeout", flags.dist_timeout,
                 "seconds a data-parallel rank waits for the others (to join, at each step) before it fails naming "
                 "the ranks that did not answer")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--dist-bucket-kb", flags.dist_bucket_kb, "data-parallel gradients are all-reduced in buckets of about this many kB")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 30));
  app.add_option("--dist-overlap", flags.dist_overlap,
                 "on: a bucket's all-reduce starts during the backward pass, as soon as its gradients are there; "
                 "off: after it")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  CLI11_PARSE(app, argc, argv);

  try {
    using fashion_mnist::CnnImpl;
    using fashion_mnist::MlpImpl;
    using keel::format::Binary;
    using keel::format::Json;
    if (flags.format == "json")
      return flags.model == "mlp" ? train<MlpImpl, Json>(flags) : train<CnnImpl, Json>(flags);
    return flags.model == "mlp" ? train<MlpImpl, Binary>(flags) : train<CnnImpl, Binary>(flags);
  } catch (const std::exception& e) {
    // keel::exit_status: 2 bad configuration, 3 unusable checkpoint, 4 checkpoint not written,
    // 5 non-finite loss or gradient, 128 + signal after a preemption signal (saved), 1 other.
    std::fprintf(stderr, "%s\n", e.what());
    return keel::exit_status(e);
  }
}
