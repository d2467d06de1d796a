#pragma once
// Every LibTorch random stream: the CPU generator (Dropout, randperm, init...) and the default
// generator of each CUDA device. Captured at a checkpoint and restored last at a resume, after
// everything that might draw a number while it is built.

#include <keel/data/sampler.hpp>  // derive_seed
#include <keel/serialize_tensor.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <cereal/types/vector.hpp>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace keel {

struct RngState {
  torch::Tensor cpu;                ///< uint8 state of the default CPU generator
  std::vector<torch::Tensor> cuda;  ///< uint8 state of each CUDA device's default generator

  static RngState capture() {
    RngState state;
    state.cpu = read(at::globalContext().defaultGenerator(at::kCPU));
    for (int i = 0; i < cuda_devices(); ++i)
      state.cuda.push_back(read(at::globalContext().defaultGenerator(at::Device(at::kCUDA, i))));
    return state;
  }

  /// Problems that would make apply() fail; warnings for what is applied only in part.
  std::vector<std::string> check(std::vector<std::string>& warnings) const {
    std::vector<std::string> problems;
    const auto current = capture();
    if (!cpu.defined() || cpu.scalar_type() != torch::kUInt8 || cpu.sizes() != current.cpu.sizes())
      problems.push_back("CPU generator state has the wrong size or dtype (written by another "
                         "LibTorch version?)");
    else
      try {  // LibTorch validates the state only when it is set: try it on a scratch generator
        auto scratch = at::detail::createCPUGenerator();
        scratch.set_state(cpu);
      } catch (const std::exception& e) {
        problems.push_back(std::string("CPU generator state is invalid: ") + first_line(e.what()));
      }
    for (std::size_t i = 0; i < cuda.size() && i < current.cuda.size(); ++i)
      if (!cuda[i].defined() || cuda[i].scalar_type() != torch::kUInt8 ||
          cuda[i].sizes() != current.cuda[i].sizes())
        problems.push_back("CUDA generator state of device " + std::to_string(i) +
                           " has the wrong size or dtype");
    if (cuda.size() != current.cuda.size())
      warnings.push_back("the checkpoint holds the generator states of " +
                         std::to_string(cuda.size()) + " CUDA devices, this process sees " +
                         std::to_string(current.cuda.size()) +
                         "; streams of devices present in both are restored");
    return problems;
  }

  void apply() const {
    write(at::globalContext().defaultGenerator(at::kCPU), cpu);
    const int devices = cuda_devices();
    for (int i = 0; i < devices && i < static_cast<int>(cuda.size()); ++i)
      write(at::globalContext().defaultGenerator(at::Device(at::kCUDA, i)), cuda[i]);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("cpu", cpu), cereal::make_nvp("cuda", cuda));
  }

 private:
  static std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }
  static int cuda_devices() {
    return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  }
  // at::Generator is a handle; a copy shares the generator and gives access to its mutex.
  static torch::Tensor read(at::Generator generator) {
    std::lock_guard<std::mutex> lock(generator.mutex());
    return generator.get_state();
  }
  static void write(at::Generator generator, const torch::Tensor& state) {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state);
  }
};

/// Seeds LibTorch's CPU generator and every CUDA generator.
inline void seed_everything(std::uint64_t seed) { torch::manual_seed(seed); }

/// Seeds every generator for data-parallel rank `rank` from the CPU generator's current state: a
/// rank that a checkpoint holds no streams of its own for (a job resumed with more processes than
/// wrote it), which would otherwise draw rank 0's numbers (the same Dropout masks). The same
/// state and rank give the same streams.
inline void seed_rank_from_current(std::int64_t rank) {
  const torch::Tensor state = RngState::capture().cpu.contiguous();
  std::uint64_t seed = data::derive_seed(0x72616e6bULL /* "rank" */, static_cast<std::uint64_t>(rank));
  const auto* bytes = state.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < state.numel(); ++i) seed = data::derive_seed(seed, bytes[i]);
  seed_everything(seed);
}

}  // namespace keel
