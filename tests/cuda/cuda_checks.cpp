// keel on a CUDA GPU: what the CPU-only CI cannot show. Not part of scripts/test.sh (no GPU
// there); tests/cuda/run.sh builds and runs it where LibTorch has CUDA and a GPU is present.
//
//  1. exact resume on the GPU: N steps in one Trainer against K steps, a checkpoint, and a fresh
//     Trainer that resumes from it to N: the same state digest (deterministic cuDNN);
//  2. bf16 and fp16 autocast on CUDA: the forward pass runs in 16 bits, weights stay float32,
//     fp16 scales the loss (keel/loop/loss_scaler.hpp), and the resume is exact under autocast too;
//  3. gradient clipping and a per-epoch scheduler on CUDA tensors;
//  4. step time of fp32 and bf16 on a convolutional model (printed, not asserted).
// Exit status 0 when every check holds; each failure is printed.

#include "../support/synthetic.hpp"

#include <keel/keel.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

namespace {

namespace fs = std::filesystem;
int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
  if (!ok) ++failures;
}

using Net = keel_test::SmallNetImpl;
using T = keel::Trainer<keel::model<Net>, keel::optimizer<keel::optim::AdamW>, keel::scheduler<keel::sched::StepLR>,
                        keel::callbacks<keel::EarlyStopping>>;

keel::TrainerOptions options(const fs::path& dir, std::int64_t max_steps, keel::Precision precision) {
  return keel::TrainerOptions()
      .device(torch::Device(torch::kCUDA, 0))
      .max_epochs(20)
      .max_steps(max_steps)
      .batch_size(32)
      .seed(7)
      .checkpoint_dir(dir.string())
      .keep_last(0)
      .resume("auto")
      .precision(precision)
      .clip_grad_norm(1.0);
}

std::string train(const fs::path& dir, std::int64_t max_steps, keel::Precision precision) {
  keel_test::SyntheticImages train_set(640, 1234), validation(128, 99);
  keel::seed_everything(7);
  T trainer(std::make_shared<Net>(), options(dir, max_steps, precision), torch::optim::AdamWOptions(3e-3),
            keel::sched::StepLROptions(1, 0.7).interval(keel::sched::Interval::epoch), keel::EarlyStopping("val_loss", 50));
  trainer.fit(train_set, validation);
  check(trainer.model()->fc->weight.device().is_cuda(), "the model trains on the GPU");
  return trainer.state_digest();
}

void exact_resume(keel::Precision precision) {
  const std::string name = keel::precision_name(precision);
  const fs::path root = fs::temp_directory_path() / ("keel-cuda-" + name);
  fs::remove_all(root);
  const std::string whole = train(root / "whole", 50, precision);
  const std::string first = train(root / "split", 27, precision);  // 20 steps per epoch: mid-epoch
  const std::string resumed = train(root / "split", 50, precision);
  check(first != whole, name + ": the split run stopped early");
  check(resumed == whole, name + ": resumed on the GPU = uninterrupted (" + resumed + ")");
}

struct DtypeNetImpl : torch::nn::Module {
  DtypeNetImpl() : fc(register_module("fc", torch::nn::Linear(64, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    auto logits = fc(b.data.flatten(1));
    seen = c10::toString(logits.scalar_type());
    return torch::nn::functional::cross_entropy(logits, b.target);
  }
  static inline std::string seen;
  BOOST_HANA_DEFINE_STRUCT(DtypeNetImpl, (torch::nn::Linear, fc));
};

void autocast_types(keel::Precision precision) {
  const std::string name = keel::precision_name(precision);
  keel_test::SyntheticImages data(64, 5);
  keel::Trainer<keel::model<DtypeNetImpl>, keel::optimizer<keel::optim::SGD>> trainer(
      keel::TrainerOptions().device(torch::Device(torch::kCUDA, 0)).max_steps(2).batch_size(16).precision(precision),
      torch::optim::SGDOptions(0.1));
  trainer.fit(data);
  const std::string expected = precision == keel::Precision::bf16 ? "BFloat16" : "Half";
  check(DtypeNetImpl::seen == expected, name + " on CUDA: logits are " + DtypeNetImpl::seen);
  check(trainer.model()->fc->weight.scalar_type() == c10::kFloat, name + " on CUDA: weights stay float32");
  check(!keel::detail::autocast_enabled(c10::DeviceType::CUDA), name + " on CUDA: autocast is off after the fit");
  const double scale = trainer.loop().loss_scale.scale;
  check((precision == keel::Precision::fp16) == (scale > 0.0), name + " on CUDA: loss scale " + std::to_string(scale));
}

/// A larger convolutional model for timing.
struct ConvNetImpl : torch::nn::Module {
  ConvNetImpl()
      : c1(register_module("c1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 128, 3).padding(1)))),
        c2(register_module("c2", torch::nn::Conv2d(torch::nn::Conv2dOptions(128, 256, 3).padding(1)))),
        fc(register_module("fc", torch::nn::Linear(256 * 8 * 8, 10))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    auto x = torch::max_pool2d(torch::relu(c1(b.data)), 2);
    x = torch::max_pool2d(torch::relu(c2(x)), 2);
    return torch::nn::functional::cross_entropy(fc(x.flatten(1)), b.target);
  }
  BOOST_HANA_DEFINE_STRUCT(ConvNetImpl, (torch::nn::Conv2d, c1), (torch::nn::Conv2d, c2), (torch::nn::Linear, fc));
};
struct Images {
  torch::Tensor x = torch::randn({4096, 3, 32, 32});
  torch::Tensor y = torch::randint(0, 10, {4096});
  std::size_t size() const { return 4096; }
  keel::data::Example get_batch(const std::vector<std::int64_t>& i) const {
    auto index = torch::tensor(i);
    return {x.index_select(0, index), y.index_select(0, index)};
  }
};

void step_time(keel::Precision precision, bool deterministic) {
  Images data;
  keel::Trainer<keel::model<ConvNetImpl>, keel::optimizer<keel::optim::SGD>> trainer(
      keel::TrainerOptions()
          .device(torch::Device(torch::kCUDA, 0))
          .max_epochs(3)
          .batch_size(256)
          .precision(precision)
          .deterministic(deterministic),
      torch::optim::SGDOptions(0.01).momentum(0.9));
  const auto start = std::chrono::steady_clock::now();
  trainer.fit(data);
  torch::cuda::synchronize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("step time %s%s: %.2f ms per step of 256 images (3 epochs of 16 steps, the first included)\n",
              keel::precision_name(precision), deterministic ? ", deterministic(true)" : "", 1e3 * seconds / 48.0);
}

}  // namespace

int main() {
  if (!torch::cuda::is_available()) {
    std::printf("no CUDA device: nothing to check\n");
    return 2;
  }
  std::printf("LibTorch %s, %d CUDA device(s)\n", TORCH_VERSION, static_cast<int>(torch::cuda::device_count()));
  try {
    exact_resume(keel::Precision::fp32);
    exact_resume(keel::Precision::bf16);
    exact_resume(keel::Precision::fp16);
    autocast_types(keel::Precision::bf16);
    autocast_types(keel::Precision::fp16);
    step_time(keel::Precision::fp32, false);  // a warm-up run first: CUDA's start-up is not a step
    step_time(keel::Precision::fp32, false);
    step_time(keel::Precision::bf16, false);
    step_time(keel::Precision::fp16, false);
    step_time(keel::Precision::fp32, true);  // last: the switch is process-wide
    step_time(keel::Precision::bf16, true);
  } catch (const std::exception& e) {
    std::printf("FAILED: exception: %s\n", e.what());
    return 1;
  }
  std::printf("%s (%d failed)\n", failures == 0 ? "all CUDA checks passed" : "CUDA checks FAILED", failures);
  return failures == 0 ? 0 : 1;
}
