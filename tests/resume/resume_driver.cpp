// A small training program for the process-boundary exactness tests: it trains one of several
// Trainer compositions on a synthetic dataset, checkpoints, resumes, can kill itself at a chosen
// micro-batch, and prints `state_digest=<hex>` at the end.
//
//   resume_driver --variant adamw_cosine --max-steps 40 --ckpt-dir DIR [--resume auto] ...
//   resume_driver ... --resume auto --fork-from FILE --allow-changes 'scheduler.*' --extend append_cosine
//   resume_driver --variant rmsprop_plateau ... --precision bf16 --clip-norm 1 --validate-every-steps 5
//   resume_driver --variant sgd_ema ... --loss-scale 1024 --keep-best 2
//   keel-run --nproc-per-node 2 resume_driver --variant ddp_plain --batch-size 16 --params-to FILE
//   keel-run --nproc-per-node 2 resume_driver --variant ddp_sgd --trained-to DIR (each sample trained, per process)

#include "driver.hpp"

#include <keel/distributed.hpp>

#include <cstdio>
#include <map>
#include <string>

namespace {

/// SmallNet without BatchNorm and Dropout: what one sample contributes to a step does not
/// depend on the other samples of its batch nor on a random stream, so two ranks of batch B
/// train as one process of batch 2B.
struct PlainNetImpl : torch::nn::Module {
  PlainNetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 3).padding(1)))),
        fc(register_module("fc", torch::nn::Linear(6 * 4 * 4, 4))) {}
  torch::Tensor training_step(const keel::data::Example& batch) {
    const auto x = torch::max_pool2d(torch::relu(conv(batch.data)), 2);
    return torch::nn::functional::cross_entropy(fc(x.flatten(1)), batch.target);
  }
  keel::Metrics validation_step(const keel::data::Example& batch) {
    validated_samples += batch.target.size(0);  // (a data-parallel rank validates its share)
    const auto x = torch::max_pool2d(torch::relu(conv(batch.data)), 2);
    return {{"val_loss", torch::nn::functional::cross_entropy(fc(x.flatten(1)), batch.target).item<double>()}};
  }
  BOOST_HANA_DEFINE_STRUCT(PlainNetImpl, (torch::nn::Conv2d, conv), (torch::nn::Linear, fc));
};

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
  // Data-parallel under a launcher (alone: one process). SmallNet's BatchNorm and Dropout make
  // the ranks' buffers and random streams part of the test; PlainNet has neither.
  if (flags.variant == "ddp_sgd") {
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::SGD>, keel::strategy<keel::DataParallel>,
                            keel::callbacks<KillSwitch>>;
    return run<T>(flags, torch::optim::SGDOptions(0.05).momentum(0.9));
  }
  if (flags.variant == "ddp_plain") {
    using T = keel::Trainer<keel::model<PlainNetImpl>, keel::optimizer<keel::optim::SGD>,
                            keel::strategy<keel::DataParallel>, keel::callbacks<KillSwitch>>;
    return run<T>(flags, torch::optim::SGDOptions(0.05).momentum(0.9));
  }
  if (const int status = dispatch_matrix(flags); status >= 0) return status;
  std::fprintf(stderr, "unknown --variant %s (sgd_step, adam_cosine, adamw_cosine, declared_model, ddp_sgd, ddp_plain, or one of "
               "tests/resume/matrix_variants.cpp)\n", flags.variant.c_str());
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
  text("--params-to", flags.params_to);
  text("--trained-to", flags.trained_to);
  text("--overlap", flags.overlap);
  std::string async_save = "off";
  text("--async-save", async_save);
  flags.async_save = async_save == "on";
  number("--bucket-bytes", flags.bucket_bytes);
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
  number("--pause-ms", flags.pause_ms);
  number("--batch-size", flags.batch_size);
  number("--dataset-size", flags.dataset_size);
  number("--total-steps", flags.total_steps);
  number("--threads", flags.threads);
  number("--seed", flags.seed);
  number("--validate-every-steps", flags.validate_every_steps);
  number("--keep-best", flags.keep_best);
  text("--precision", flags.precision);
  if (auto it = given.find("--clip-norm"); it != given.end()) {
    flags.clip_norm = std::stod(it->second);
    given.erase(it);
  }
  if (auto it = given.find("--clip-value"); it != given.end()) {
    flags.clip_value = std::stod(it->second);
    given.erase(it);
  }
  if (auto it = given.find("--loss-scale"); it != given.end()) {
    flags.loss_scale = std::stod(it->second);
    given.erase(it);
  }
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
