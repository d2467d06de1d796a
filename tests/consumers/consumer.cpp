// A program of a project that uses keel: the same source for every way keel can be added to a
// project (tests/consumers/run.sh). It trains a small classifier for 12 steps with checkpoints
// in DIR; given a STEP, it is preempted there (SIGTERM, as a cluster scheduler sends) and exits
// with 143 after its checkpoint; run again, it resumes and must end with the state digest of a
// run never stopped, which it prints.
//   consumer DIR [STEP]
#include <keel/keel.hpp>
#include <torch/torch.h>

#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

struct NetImpl : torch::nn::Module {
  NetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(4, 16))),
        norm(register_module("norm", torch::nn::BatchNorm1d(16))),
        fc2(register_module("fc2", torch::nn::Linear(16, 3))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(norm(fc1(x)))); }
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::nn::functional::cross_entropy(forward(batch.data), batch.target);
  }
  keel::Metrics validation_step(const keel::data::Example& batch) {
    return {{"val_loss", torch::nn::functional::cross_entropy(forward(batch.data), batch.target).item<double>()}};
  }
  BOOST_HANA_DEFINE_STRUCT(NetImpl, (torch::nn::Linear, fc1), (torch::nn::BatchNorm1d, norm),
                           (torch::nn::Linear, fc2));
};

struct Blobs {  // three Gaussian blobs in four dimensions
  torch::Tensor points, labels;
  explicit Blobs(std::int64_t n) {
    labels = torch::randint(0, 3, {n}, torch::kLong);
    points = torch::randn({n, 4}) + 2.0 * torch::nn::functional::one_hot(labels, 4).to(torch::kFloat);
  }
  std::size_t size() const { return static_cast<std::size_t>(labels.size(0)); }
  keel::data::Example get_batch(const std::vector<std::int64_t>& indices) const {
    auto index = torch::tensor(indices);
    return {points.index_select(0, index), labels.index_select(0, index)};
  }
};

// The preemption: at the given step, the process receives SIGTERM. It holds no state of its
// own (the step is the process's argument, not training state).
struct PreemptAt {
  static inline std::int64_t step = -1;
  void on_optimizer_step_end(keel::Context& ctx) {
    if (ctx.loop().global_step == step) std::raise(SIGTERM);
  }
};

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: consumer DIR [STEP]\n";
    return 2;
  }
  const std::string dir = argv[1];
  if (argc == 3) PreemptAt::step = std::stoll(argv[2]);

  using Trainer = keel::Trainer<
      keel::model<NetImpl>, keel::optimizer<keel::optim::AdamW>, keel::scheduler<keel::sched::CosineWarmup>,
      keel::callbacks<keel::EarlyStopping, keel::EMA, keel::MetricsLogger, keel::LearningRateMonitor, PreemptAt>>;
  keel::seed_everything(7);
  Blobs train(256), validation(64);
  Trainer trainer(std::make_shared<NetImpl>(),
                  keel::TrainerOptions().max_epochs(3).max_steps(12).batch_size(32).seed(7).threads(1)
                      .validate_every_steps(4).checkpoint_dir(dir + "/checkpoints").save_every_steps(4)
                      .resume("auto"),
                  torch::optim::AdamWOptions(1e-2), keel::sched::CosineWarmupOptions(2, 12),
                  keel::EarlyStopping("val_loss", 5), keel::EMA(0.9),
                  keel::MetricsLogger(dir + "/logs", 1), keel::LearningRateMonitor(dir + "/logs"));
  try {
    trainer.fit(train, validation);
  } catch (const keel::Error& e) {
    std::cerr << e.what() << "\n";
    return e.exit_status();
  }
  std::cout << "keel " << keel::version_string << " step=" << trainer.loop().global_step
            << " state_digest=" << trainer.state_digest() << "\n";
}
