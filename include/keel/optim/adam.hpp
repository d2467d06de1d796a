#pragma once
// keel::optim::Adam and keel::optim::AdamW: LibTorch's Adam (with AMSGrad) and AdamW, with
// their step counts and moments saved by parameter name.

#include <keel/optim/torch_optimizer.hpp>

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

#include <tuple>

namespace keel::optim {

namespace detail {
/// Adam and AdamW share their options and per-parameter state layout in LibTorch.
template <class Torch, class TorchOptions, class TorchParamState>
struct AdamFamilyTraits {
  using TorchType = Torch;
  using Options = TorchOptions;
  using ParamState = TorchParamState;

  static std::vector<std::pair<std::string, double>> hyper_parameters(const Options& o) {
    return {{"lr", o.lr()},
            {"beta1", std::get<0>(o.betas())},
            {"beta2", std::get<1>(o.betas())},
            {"eps", o.eps()},
            {"weight_decay", o.weight_decay()},
            {"amsgrad", o.amsgrad() ? 1.0 : 0.0}};
  }
  static void set_hyper_parameters(Options& o, const std::vector<std::pair<std::string, double>>& v) {
    o.lr(hyper(v, "lr"));
    o.betas(std::make_tuple(hyper(v, "beta1"), hyper(v, "beta2")));
    o.eps(hyper(v, "eps"));
    o.weight_decay(hyper(v, "weight_decay"));
    o.amsgrad(hyper(v, "amsgrad") != 0.0);
  }
  static std::vector<std::string> tensor_names() { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  static void capture(const ParamState& s, optim::ParamState& out) {
    out.step = s.step();
    out.tensors = {{"exp_avg", s.exp_avg()},
                   {"exp_avg_sq", s.exp_avg_sq()},
                   {"max_exp_avg_sq", s.max_exp_avg_sq()}};
  }
  static std::unique_ptr<torch::optim::OptimizerParamState> restore(const optim::ParamState& in) {
    auto s = std::make_unique<ParamState>();
    s->step(in.step);
    s->exp_avg(in.tensors.at(0).second);
    s->exp_avg_sq(in.tensors.at(1).second);
    s->max_exp_avg_sq(in.tensors.at(2).second);
    return s;
  }
};
}  // namespace detail

struct AdamTraits : detail::AdamFamilyTraits<torch::optim::Adam, torch::optim::AdamOptions,
                                             torch::optim::AdamParamState> {
  static constexpr const char* keel_name = "keel::optim::Adam";
};
struct AdamWTraits : detail::AdamFamilyTraits<torch::optim::AdamW, torch::optim::AdamWOptions,
                                              torch::optim::AdamWParamState> {
  static constexpr const char* keel_name = "keel::optim::AdamW";
};

/// Adam policy: `keel::optimizer<keel::optim::Adam>`, options torch::optim::AdamOptions.
class Adam : public TorchOptimizer<AdamTraits> {
 public:
  static constexpr const char* keel_name = AdamTraits::keel_name;
  using TorchOptimizer<AdamTraits>::TorchOptimizer;
};

/// AdamW policy: `keel::optimizer<keel::optim::AdamW>`, options torch::optim::AdamWOptions.
class AdamW : public TorchOptimizer<AdamWTraits> {
 public:
  static constexpr const char* keel_name = AdamWTraits::keel_name;
  using TorchOptimizer<AdamWTraits>::TorchOptimizer;
};

}  // namespace keel::optim
