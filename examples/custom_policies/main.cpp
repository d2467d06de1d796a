// Your own policies: an optimizer with per-parameter state (Lion), a scheduler (inverse square
// root with warm-up), a callback with state (a running loss and its best) and a checkpoint format
// (cereal's XML archive), composed into one keel::Trainer. Each is saved in the checkpoint and
// resumes exactly: stop the program at any moment and run it again, and it ends with the
// state digest of a run that was never stopped (CI checks this: tests/examples/run_custom_policies.cmake).
//
//   custom_policies [--steps N] [--stop-at K] [--dir DIR]
//
// README.md "Writing your own policies" walks through each piece.

#include <keel/keel.hpp>
#include <torch/torch.h>

#include <cereal/archives/xml.hpp>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>

namespace example {

// ---- An optimizer: Lion (Chen et al., 2023), with one state tensor per parameter. ----------
// The update rule is a LibTorch optimizer (torch::optim::Optimizer); keel adds its saving by
// parameter name through a Traits type and keel::optim::TorchOptimizer.

struct LionOptions : torch::optim::OptimizerCloneableOptions<LionOptions> {
  LionOptions(double lr = 1e-4) : lr_(lr) {}  // NOLINT: implicit, like LibTorch's options
  TORCH_ARG(double, lr);
  TORCH_ARG(double, beta1) = 0.9;
  TORCH_ARG(double, beta2) = 0.99;
  TORCH_ARG(double, weight_decay) = 0.0;

 public:
  double get_lr() const override { return lr(); }  // the scheduler reads and sets the rate
  void set_lr(const double rate) override { lr(rate); }
};

struct LionParamState : torch::optim::OptimizerCloneableParamState<LionParamState> {
  TORCH_ARG(torch::Tensor, exp_avg);
};

class LionOptimizer : public torch::optim::Optimizer {
 public:
  LionOptimizer(std::vector<torch::Tensor> params, LionOptions defaults)
      : Optimizer({torch::optim::OptimizerParamGroup(std::move(params))}, std::make_unique<LionOptions>(defaults)) {}

  torch::Tensor step(LossClosure = nullptr) override {
    torch::NoGradGuard no_grad;
    for (auto& group : param_groups()) {
      const auto& o = static_cast<const LionOptions&>(group.options());
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto& slot = state()[keel::optim::state_key(p)];
        if (!slot) {
          auto fresh = std::make_unique<LionParamState>();
          fresh->exp_avg(torch::zeros_like(p));
          slot = std::move(fresh);
        }
        auto& m = static_cast<LionParamState&>(*slot).exp_avg();
        // w -= lr * (sign(beta1 m + (1 - beta1) g) + wd w);  m = beta2 m + (1 - beta2) g
        const auto update = (m * o.beta1() + p.grad() * (1 - o.beta1())).sign_();
        p.mul_(1 - o.lr() * o.weight_decay()).add_(update, -o.lr());
        m.mul_(o.beta2()).add_(p.grad(), 1 - o.beta2());
      }
    }
    return {};
  }
};

// What keel needs to know to save it: the hyper-parameters of a param group as named numbers,
// and a parameter's state as named tensors.
struct LionTraits {
  static constexpr const char* keel_name = "example::Lion";
  using TorchType = LionOptimizer;
  using Options = LionOptions;
  using ParamState = LionParamState;

  static std::vector<std::pair<std::string, double>> hyper_parameters(const Options& o) {
    return {{"lr", o.lr()}, {"beta1", o.beta1()}, {"beta2", o.beta2()}, {"weight_decay", o.weight_decay()}};
  }
  static void set_hyper_parameters(Options& o, const std::vector<std::pair<std::string, double>>& v) {
    o.lr(v.at(0).second).beta1(v.at(1).second).beta2(v.at(2).second).weight_decay(v.at(3).second);
  }
  static std::vector<std::string> tensor_names() { return {"exp_avg"}; }
  static void capture(const ParamState& s, keel::optim::ParamState& out) { out.tensors = {{"exp_avg", s.exp_avg()}}; }
  static std::unique_ptr<torch::optim::OptimizerParamState> restore(const keel::optim::ParamState& in) {
    auto s = std::make_unique<ParamState>();
    s->exp_avg(in.tensors.at(0).second);
    return s;
  }
};

// The policy: `keel::optimizer<example::Lion>`, constructed from example::LionOptions.
class Lion : public keel::optim::TorchOptimizer<LionTraits> {
 public:
  static constexpr const char* keel_name = LionTraits::keel_name;
  using TorchOptimizer::TorchOptimizer;
};

// ---- A scheduler: linear warm-up, then the inverse square root of the step (Noam). ---------
// keel::sched::SchedulerBase keeps the step count and the base learning rates (its saved
// state) and sets each param group's rate to base * factor(step).

struct InverseSqrtOptions {
  explicit InverseSqrtOptions(std::int64_t warmup) : warmup_(warmup) {}
  TORCH_ARG(std::int64_t, warmup);
};

class InverseSqrt : public keel::sched::SchedulerBase<InverseSqrt> {
 public:
  static constexpr const char* keel_name = "example::InverseSqrt";
  using Options = InverseSqrtOptions;

  InverseSqrt(torch::optim::Optimizer& optimizer, Options options) : SchedulerBase(optimizer), options_(options) {
    if (options_.warmup() <= 0)
      throw keel::ConfigError("example::InverseSqrt: warmup must be positive, got " + std::to_string(options_.warmup()));
    apply();  // the rate of step 0
  }

  double factor(std::int64_t step) const {
    const double s = static_cast<double>(step + 1), w = static_cast<double>(options_.warmup());
    return std::min(s / w, std::sqrt(w / s));
  }

  // Configuration a resume must match (the fingerprint).
  void describe(keel::Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "type", keel_name);
    fingerprint.add(prefix + "warmup", options_.warmup());
  }

  // State: the base's (step, base rates). Declared here: keel refuses an inherited serialize,
  // which would silently leave out anything this class added.
  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
  }

 private:
  Options options_;
};

// ---- A callback: the loss's running mean, its best, and the steps since it improved. -------
// A plain struct with hooks; every data member declared, so keel derives its serialization (and
// refuses to compile if a member is left out of the declaration).

struct LossWatch {
  BOOST_HANA_DEFINE_STRUCT(LossWatch,
                           (double, running_mean),
                           (double, best),
                           (std::int64_t, since_best),
                           (std::int64_t, seen));

  void on_optimizer_step_end(keel::Context& ctx) {
    const double loss = ctx.loss().item<double>();
    running_mean = seen == 0 ? loss : 0.9 * running_mean + 0.1 * loss;
    ++seen;
    if (seen == 1 || running_mean < best) {
      best = running_mean;
      since_best = 0;
    } else {
      ++since_best;
    }
  }
};

// ---- A checkpoint format: every section in cereal's XML archive. ---------------------------
// A format is names and archive types; keel's container adds the header, the checksums and
// the all-or-nothing load around the sections, whatever archive writes them. (Tensors go into
// text archives as base64.)

struct Xml {
  static constexpr const char* keel_name = "example::Xml";
  static constexpr std::uint32_t format_id = 1000;  // keel's own formats use small numbers
  static constexpr const char* extension = ".xckpt";
  using output_archive = cereal::XMLOutputArchive;
  using input_archive = cereal::XMLInputArchive;
};

// ---- The model and the data. ----------------------------------------------------------------

struct NetImpl : torch::nn::Module {
  NetImpl() : fc1(register_module("fc1", torch::nn::Linear(8, 32))), fc2(register_module("fc2", torch::nn::Linear(32, 3))) {}
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::nn::functional::cross_entropy(fc2(torch::relu(fc1(batch.data))), batch.target);
  }
  BOOST_HANA_DEFINE_STRUCT(NetImpl, (torch::nn::Linear, fc1), (torch::nn::Linear, fc2));
};

/// Three Gaussian blobs in 8 dimensions.
struct Blobs {
  torch::Tensor points, labels;
  explicit Blobs(std::int64_t n) {
    labels = torch::randint(0, 3, {n}, torch::kLong);
    points = torch::randn({n, 8}) + 2.0 * torch::nn::functional::one_hot(labels, 8).to(torch::kFloat);
  }
  std::size_t size() const { return static_cast<std::size_t>(labels.size(0)); }
  keel::data::Example get_batch(const std::vector<std::int64_t>& indices) const {
    const auto index = torch::tensor(indices);
    return {points.index_select(0, index), labels.index_select(0, index)};
  }
};

}  // namespace example

int main(int argc, char** argv) {
  std::int64_t steps = 60, stop_at = 0;
  std::string dir = "custom-policies-checkpoints";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--steps") steps = std::atoll(argv[i + 1]);
    else if (flag == "--stop-at") stop_at = std::atoll(argv[i + 1]);
    else if (flag == "--dir") dir = argv[i + 1];
    else {
      std::cerr << "usage: custom_policies [--steps N] [--stop-at K] [--dir DIR]\n";
      return 2;
    }
  }
  using Trainer = keel::Trainer<keel::model<example::NetImpl>, keel::optimizer<example::Lion>,
                                keel::scheduler<example::InverseSqrt>, keel::callbacks<example::LossWatch>,
                                keel::checkpoint<example::Xml>>;
  keel::seed_everything(3);
  example::Blobs train(512);
  Trainer trainer(std::make_shared<example::NetImpl>(),
                  keel::TrainerOptions().max_epochs(100).max_steps(stop_at > 0 ? stop_at : steps).batch_size(32).seed(3)
                      .threads(1).checkpoint_dir(dir).save_every_steps(10).resume("auto"),
                  example::LionOptions(3e-3).weight_decay(0.01), example::InverseSqrtOptions(10));
  try {
    trainer.fit(train);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return keel::exit_status(e);
  }
  const auto& watch = trainer.callback<example::LossWatch>();
  std::cout << "step=" << trainer.loop().global_step << " running_loss=" << watch.running_mean << " best=" << watch.best
            << " lr=" << trainer.optimizer().lr(0) << "\n"
            << "state_digest=" << trainer.state_digest() << "\n";
}
