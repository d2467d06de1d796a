#pragma once
// keel::optim::Adagrad: LibTorch's Adagrad (lr decay, weight decay, initial accumulator) with
// its step counts and squared-gradient sums saved by parameter name. LibTorch creates every
// parameter's state when the optimizer is built, so a checkpoint holds all of them from step 0.

#include <keel/optim/torch_optimizer.hpp>

#include <torch/optim/adagrad.h>

namespace keel::optim {

struct AdagradTraits {
  static constexpr const char* keel_name = "keel::optim::Adagrad";
  using TorchType = torch::optim::Adagrad;
  using Options = torch::optim::AdagradOptions;
  using ParamState = torch::optim::AdagradParamState;

  static std::vector<std::pair<std::string, double>> hyper_parameters(const Options& o) {
    return {{"lr", o.lr()},
            {"lr_decay", o.lr_decay()},
            {"weight_decay", o.weight_decay()},
            {"initial_accumulator_value", o.initial_accumulator_value()},
            {"eps", o.eps()}};
  }
  static void set_hyper_parameters(Options& o, const std::vector<std::pair<std::string, double>>& v) {
    o.lr(detail::hyper(v, "lr"));
    o.lr_decay(detail::hyper(v, "lr_decay"));
    o.weight_decay(detail::hyper(v, "weight_decay"));
    o.initial_accumulator_value(detail::hyper(v, "initial_accumulator_value"));
    o.eps(detail::hyper(v, "eps"));
  }
  static std::vector<std::string> tensor_names() { return {"sum"}; }
  static void capture(const ParamState& s, optim::ParamState& out) {
    out.step = s.step();
    out.tensors = {{"sum", s.sum()}};
  }
  static std::unique_ptr<torch::optim::OptimizerParamState> restore(const optim::ParamState& in) {
    auto s = std::make_unique<ParamState>();
    s->step(in.step);
    s->sum(in.tensors.at(0).second);
    return s;
  }
};

/// Adagrad policy: `keel::optimizer<keel::optim::Adagrad>`, options torch::optim::AdagradOptions(lr).
class Adagrad : public TorchOptimizer<AdagradTraits> {
 public:
  static constexpr const char* keel_name = AdagradTraits::keel_name;
  using TorchOptimizer<AdagradTraits>::TorchOptimizer;
};

}  // namespace keel::optim
