#pragma once
// keel::optim::RMSprop: LibTorch's RMSprop (smoothing alpha, momentum, centered, weight decay)
// with its step count, running averages and momentum buffer saved by parameter name.

#include <keel/optim/torch_optimizer.hpp>

#include <torch/optim/rmsprop.h>

namespace keel::optim {

struct RMSpropTraits {
  static constexpr const char* keel_name = "keel::optim::RMSprop";
  using TorchType = torch::optim::RMSprop;
  using Options = torch::optim::RMSpropOptions;
  using ParamState = torch::optim::RMSpropParamState;

  static std::vector<std::pair<std::string, double>> hyper_parameters(const Options& o) {
    return {{"lr", o.lr()},
            {"alpha", o.alpha()},
            {"eps", o.eps()},
            {"weight_decay", o.weight_decay()},
            {"momentum", o.momentum()},
            {"centered", o.centered() ? 1.0 : 0.0}};
  }
  static void set_hyper_parameters(Options& o, const std::vector<std::pair<std::string, double>>& v) {
    o.lr(detail::hyper(v, "lr"));
    o.alpha(detail::hyper(v, "alpha"));
    o.eps(detail::hyper(v, "eps"));
    o.weight_decay(detail::hyper(v, "weight_decay"));
    o.momentum(detail::hyper(v, "momentum"));
    o.centered(detail::hyper(v, "centered") != 0.0);
  }
  // momentum_buffer and grad_avg stay undefined without momentum or centering: kept as such.
  static std::vector<std::string> tensor_names() { return {"square_avg", "momentum_buffer", "grad_avg"}; }
  static void capture(const ParamState& s, optim::ParamState& out) {
    out.step = s.step();
    out.tensors = {{"square_avg", s.square_avg()}, {"momentum_buffer", s.momentum_buffer()}, {"grad_avg", s.grad_avg()}};
  }
  static std::unique_ptr<torch::optim::OptimizerParamState> restore(const optim::ParamState& in) {
    auto s = std::make_unique<ParamState>();
    s->step(in.step);
    s->square_avg(in.tensors.at(0).second);
    s->momentum_buffer(in.tensors.at(1).second);
    s->grad_avg(in.tensors.at(2).second);
    return s;
  }
};

/// RMSprop policy: `keel::optimizer<keel::optim::RMSprop>`, options torch::optim::RMSpropOptions(lr).
class RMSprop : public TorchOptimizer<RMSpropTraits> {
 public:
  static constexpr const char* keel_name = RMSpropTraits::keel_name;
  using TorchOptimizer<RMSpropTraits>::TorchOptimizer;
};

}  // namespace keel::optim
