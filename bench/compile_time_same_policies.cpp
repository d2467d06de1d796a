// Compile-time subject: bench/compile_time_trainer.cpp's Trainer and a second Trainer type with
// the same optimizer, scheduler and checkpoint format but another model and other callbacks
// (the common case: several models trained alike in one program). Its time less the
// one-Trainer TU's is what such a type costs (see bench/compile_time.sh).
#include "compile_time_subject.hpp"

struct CountSteps {
  BOOST_HANA_DEFINE_STRUCT(CountSteps, (std::int64_t, steps));
  void on_optimizer_step_end(keel::Context&) { ++steps; }
};

struct DeeperNetImpl : torch::nn::Module {
  DeeperNetImpl() : hidden(register_module("hidden", torch::nn::Linear(8, 4))), out(register_module("out", torch::nn::Linear(4, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return torch::nn::functional::cross_entropy(out(torch::relu(hidden(b.data))), b.target);
  }
  keel::Metrics validation_step(const keel::data::Example& b) { return {{"val_loss", training_step(b).item<double>()}}; }
  BOOST_HANA_DEFINE_STRUCT(DeeperNetImpl, (torch::nn::Linear, hidden), (torch::nn::Linear, out));
};

int main() {
  using Second = keel::Trainer<keel::model<DeeperNetImpl>, keel::optimizer<keel::optim::AdamW>,
                               keel::scheduler<keel::sched::CosineWarmup>,
                               keel::callbacks<CountSteps, keel::EarlyStopping>, keel::checkpoint<keel::format::Binary>>;
  Data data;
  Second trainer(keel::TrainerOptions().max_epochs(1).batch_size(4), keel::sched::CosineWarmupOptions(1, 10));
  trainer.fit(data, data);
  return train_and_digest() + (trainer.state_digest().empty() ? 1 : 0);
}
