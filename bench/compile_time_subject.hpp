#pragma once
// The subject of bench/compile_time.sh: a model, a stateful reflected callback, a dataset and a
// full Trainer type over them (AdamW, CosineWarmup, the callback and EarlyStopping, the binary
// format).
#include <keel/keel.hpp>

#include <torch/torch.h>

#include <random>

struct NetImpl : torch::nn::Module {
  NetImpl() : fc(register_module("fc", torch::nn::Linear(8, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return torch::nn::functional::cross_entropy(fc(b.data), b.target);
  }
  keel::Metrics validation_step(const keel::data::Example& b) { return {{"val_loss", training_step(b).item<double>()}}; }
  BOOST_HANA_DEFINE_STRUCT(NetImpl, (torch::nn::Linear, fc));
};

struct Tracker {
  BOOST_HANA_DEFINE_STRUCT(Tracker, (std::mt19937_64, engine), (double, sum));
  void on_optimizer_step_end(keel::Context&) { sum += static_cast<double>(engine() % 7); }
};

struct Data {
  std::size_t size() const { return 16; }
  keel::data::Example get(std::size_t i) const { return {torch::ones(8) * static_cast<double>(i), torch::tensor(static_cast<std::int64_t>(i % 2))}; }
};

using BenchTrainer = keel::Trainer<keel::model<NetImpl>, keel::optimizer<keel::optim::AdamW>,
                                   keel::scheduler<keel::sched::CosineWarmup>,
                                   keel::callbacks<Tracker, keel::EarlyStopping>, keel::checkpoint<keel::format::Binary>>;

// What a program does with it: train with validation, print the digest.
inline int train_and_digest() {
  Data data;
  BenchTrainer trainer(keel::TrainerOptions().max_epochs(1).batch_size(4), keel::sched::CosineWarmupOptions(1, 10));
  trainer.fit(data, data);
  return trainer.state_digest().empty() ? 1 : 0;
}
