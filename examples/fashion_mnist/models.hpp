#pragma once
// The example's two models. Each is a plain LibTorch module plus keel's two model hooks:
// training_step (the loss of a batch) and validation_step (per-batch mean metrics).

#include <keel/context.hpp>
#include <keel/reflect.hpp>  // BOOST_HANA_DEFINE_STRUCT
#include <keel/data/dataset.hpp>

#include <torch/torch.h>

namespace fashion_mnist {

/// Shared by both models: cross-entropy loss and accuracy.
template <class Derived>
struct Classifier {
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::nn::functional::cross_entropy(static_cast<Derived&>(*this).forward(batch.data), batch.target);
  }
  keel::Metrics validation_step(const keel::data::Example& batch) {
    const auto logits = static_cast<Derived&>(*this).forward(batch.data);
    const double loss = torch::nn::functional::cross_entropy(logits, batch.target).template item<double>();
    const double accuracy = logits.argmax(1).eq(batch.target).to(torch::kFloat64).mean().template item<double>();
    return {{"val_loss", loss}, {"val_accuracy", accuracy}};
  }
};

/// 784 -> hidden -> 10 with Dropout.
struct MlpImpl : torch::nn::Module, Classifier<MlpImpl> {
  static constexpr double kDropout = 0.2;
  explicit MlpImpl(std::int64_t hidden = 256, double dropout_probability = kDropout)
      : fc1(register_module("fc1", torch::nn::Linear(784, hidden))),
        dropout(register_module("dropout", torch::nn::Dropout(dropout_probability))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, 10))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(fc1(x.flatten(1)));
    return fc2(dropout(x));
  }

  // Declared: keel saves what a module holds only when it knows every member (here all of
  // them are submodules, saved as their parameters and buffers).
  BOOST_HANA_DEFINE_STRUCT(MlpImpl, (torch::nn::Linear, fc1), (torch::nn::Dropout, dropout), (torch::nn::Linear, fc2));
};

/// Two convolution blocks (conv, BatchNorm, ReLU, max-pool), then a Dropout-regularized head.
struct CnnImpl : torch::nn::Module, Classifier<CnnImpl> {
  static constexpr double kDropout = 0.3;
  explicit CnnImpl(double dropout_probability = kDropout)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1)))),
        bn1(register_module("bn1", torch::nn::BatchNorm2d(32))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)))),
        bn2(register_module("bn2", torch::nn::BatchNorm2d(64))),
        dropout(register_module("dropout", torch::nn::Dropout(dropout_probability))),
        fc1(register_module("fc1", torch::nn::Linear(64 * 7 * 7, 128))),
        fc2(register_module("fc2", torch::nn::Linear(128, 10))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(bn1(conv1(x))), 2);
    x = torch::max_pool2d(torch::relu(bn2(conv2(x))), 2);
    x = torch::relu(fc1(dropout(x.flatten(1))));
    return fc2(dropout(x));
  }

  BOOST_HANA_DEFINE_STRUCT(CnnImpl, (torch::nn::Conv2d, conv1), (torch::nn::BatchNorm2d, bn1), (torch::nn::Conv2d, conv2),
                           (torch::nn::BatchNorm2d, bn2), (torch::nn::Dropout, dropout), (torch::nn::Linear, fc1),
                           (torch::nn::Linear, fc2));
};

}  // namespace fashion_mnist
