#pragma once
// keel::optim::SGD: LibTorch's SGD (momentum, dampening, Nesterov, weight decay) with its
// momentum buffers saved by parameter name.

#include <keel/optim/torch_optimizer.hpp>

#include <torch/optim/sgd.h>

namespace keel::optim {

struct SGDTraits {
  static constexpr const char* keel_name = "keel::optim::SGD";
  using TorchType = torch::optim::SGD;
  using Options = torch::optim::SGDOptions;
  using ParamState = torch::optim::SGDParamState;

  static std::vector<std::pair<std::string, double>> hyper_parameters(const Options& o) {
    return {{"lr", o.lr()},
            {"momentum", o.momentum()},
            {"dampening", o.dampening()},
            {"weight_decay", o.weight_decay()},
            {"nesterov", o.nesterov() ? 1.0 : 0.0}};
  }
  static void set_hyper_parameters(Options& o, const std::vector<std::pair<std::string, double>>& v) {
    o.lr(detail::hyper(v, "lr"));
    o.momentum(detail::hyper(v, "momentum"));
    o.dampening(detail::hyper(v, "dampening"));
    o.weight_decay(detail::hyper(v, "weight_decay"));
    o.nesterov(detail::hyper(v, "nesterov") != 0.0);
  }
  static std::vector<std::string> tensor_names() { return {"momentum_buffer"}; }
  static void capture(const ParamState& s, optim::ParamState& out) {
    out.tensors = {{"momentum_buffer", s.momentum_buffer()}};
  }
  static std::unique_ptr<torch::optim::OptimizerParamState> restore(const optim::ParamState& in) {
    auto s = std::make_unique<ParamState>();
    s->momentum_buffer(in.tensors.at(0).second);
    return s;
  }
};

/// SGD policy: `keel::optimizer<keel::optim::SGD>`, options torch::optim::SGDOptions(lr).
class SGD : public TorchOptimizer<SGDTraits> {
 public:
  static constexpr const char* keel_name = SGDTraits::keel_name;
  using TorchOptimizer<SGDTraits>::TorchOptimizer;
};

}  // namespace keel::optim
