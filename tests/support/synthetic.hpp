#pragma once
// A synthetic dataset and a small model with BatchNorm and Dropout, shared by the unit tests
// and the process-boundary test driver.

#include <keel/keel.hpp>

#include <torch/torch.h>

namespace keel_test {

/// 1x8x8 images whose 4 classes follow a fixed random linear rule, plus label noise.
class SyntheticImages {
 public:
  SyntheticImages(std::int64_t size, std::uint64_t seed) {
    auto generator = at::detail::createCPUGenerator(seed);  // leaves the global stream alone
    images_ = at::randn({size, 1, 8, 8}, generator);
    const auto rule = at::randn({64, 4}, generator);
    labels_ = images_.flatten(1).matmul(rule).argmax(1);
  }
  std::size_t size() const { return static_cast<std::size_t>(labels_.size(0)); }
  keel::data::Example get(std::size_t i) const {
    return {images_[static_cast<std::int64_t>(i)], labels_[static_cast<std::int64_t>(i)]};
  }

 private:
  torch::Tensor images_;
  torch::Tensor labels_;
};

/// Convolution, BatchNorm (running statistics are buffers), Dropout (draws from the CPU stream).
struct SmallNetImpl : torch::nn::Module {
  SmallNetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 3).padding(1)))),
        bn(register_module("bn", torch::nn::BatchNorm2d(6))),
        dropout(register_module("dropout", torch::nn::Dropout(0.25))),
        fc(register_module("fc", torch::nn::Linear(6 * 4 * 4, 4))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(bn(conv(x))), 2);
    return fc(dropout(x.flatten(1)));
  }
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::nn::functional::cross_entropy(forward(batch.data), batch.target);
  }
  keel::Metrics validation_step(const keel::data::Example& batch) {
    auto logits = forward(batch.data);
    return {{"val_loss", torch::nn::functional::cross_entropy(logits, batch.target).item<double>()},
            {"val_accuracy", logits.argmax(1).eq(batch.target).to(torch::kFloat64).mean().item<double>()}};
  }

  BOOST_HANA_DEFINE_STRUCT(SmallNetImpl, (torch::nn::Conv2d, conv), (torch::nn::BatchNorm2d, bn),
                           (torch::nn::Dropout, dropout), (torch::nn::Linear, fc));
};

/// SmallNet's layers plus state that parameters and buffers alone would not carry: a call
/// counter and a running statistic (plain members, saved in the section "model.members") and a
/// registered buffer that changes in place. All three change what forward computes, so a
/// resume that lost any of them would show in the digest.
struct StatefulNetImpl : torch::nn::Module {
  StatefulNetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 3).padding(1)))),
        bn(register_module("bn", torch::nn::BatchNorm2d(6))),
        dropout(register_module("dropout", torch::nn::Dropout(0.25))),
        fc(register_module("fc", torch::nn::Linear(6 * 4 * 4, 4))),
        scale(register_buffer("scale", torch::ones({1}))),
        calls(0),
        running_mean(0.0) {}

  torch::Tensor forward(torch::Tensor x) {
    if (is_training()) {
      ++calls;
      running_mean = 0.9 * running_mean + 0.1 * x.mean().item<double>();
      scale.mul_(1.001);
    }
    x = (x - running_mean) * (1.0 + 0.01 * static_cast<double>(calls % 7));
    x = torch::max_pool2d(torch::relu(bn(conv(x))), 2);
    return fc(dropout(x.flatten(1))) * scale;
  }
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::nn::functional::cross_entropy(forward(batch.data), batch.target);
  }
  keel::Metrics validation_step(const keel::data::Example& batch) {
    auto logits = forward(batch.data);
    return {{"val_loss", torch::nn::functional::cross_entropy(logits, batch.target).item<double>()}};
  }

  BOOST_HANA_DEFINE_STRUCT(StatefulNetImpl, (torch::nn::Conv2d, conv), (torch::nn::BatchNorm2d, bn),
                           (torch::nn::Dropout, dropout), (torch::nn::Linear, fc), (torch::Tensor, scale),
                           (std::int64_t, calls), (double, running_mean));
};

}  // namespace keel_test
