// The model the compile-fail files share: declared, so that it passes every rule itself.
#pragma once
#include <keel/keel.hpp>
#include <torch/torch.h>

struct Net : torch::nn::Module {
  Net() : fc(register_module("fc", torch::nn::Linear(2, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data).sum(); }
  BOOST_HANA_DEFINE_STRUCT(Net, (torch::nn::Linear, fc));
};
