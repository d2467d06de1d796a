#pragma once
// keel::DataParallel, the strategy of `keel::strategy<keel::DataParallel>`: every process (rank)
// holds the whole model and trains on its own share of each epoch's samples; before each
// optimizer step the ranks' gradients are averaged, so every rank takes the same step and the
// ranks stay equal. Rank 0 writes the checkpoints and the others wait for each one. Started by
// a launcher (keel-run, torchrun, srun, mpirun: keel/distributed/place.hpp); started alone, the
// program trains in one process as without the policy.
//
// With B samples per rank and N ranks, a step averages over the same N*B samples as one process
// with batch N*B: the same training, up to the order of floating-point sums.

#include <keel/data/sampler.hpp>
#include <keel/distributed/gradient_buckets.hpp>
#include <keel/distributed/place.hpp>
#include <keel/distributed/process_group.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/rng.hpp>
#include <keel/strategy/single_process.hpp>

#include <cereal/archives/binary.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <torch/types.h>
#include <torch/utils.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace keel {

namespace dist::detail {
/// Values as bytes for the other ranks (through the store's gather): cereal's binary archive,
/// so that a string may hold any character (a newline too) and a number reads back exactly.
template <class... Values>
std::string to_bytes(const Values&... values) {
  std::ostringstream out;
  {
    cereal::BinaryOutputArchive archive(out);
    archive(values...);
  }
  return out.str();
}

/// Reads what to_bytes wrote into `values`; bytes that do not read back are refused, naming
/// `what` they were.
template <class... Values>
void from_bytes(const std::string& bytes, const char* what, Values&... values) {
  try {
    std::istringstream in(bytes);
    cereal::BinaryInputArchive archive(in);
    archive(values...);
  } catch (const std::exception& e) {
    throw DistributedError(std::string("keel: a rank's ") + what + " arrived damaged: " + e.what());
  }
}

/// One rank's evaluation sums and sample count as bytes for the others (DataParallel::add_up).
inline std::string evaluation_bytes(const std::map<std::string, double>& sums, std::int64_t samples) {
  return to_bytes(samples, sums);
}

/// Adds one rank's evaluation_bytes to `sums` and `samples` (called in rank order, so that
/// every rank adds the same numbers in the same order).
inline void add_evaluation(const std::string& bytes, std::map<std::string, double>& sums, std::int64_t& samples) {
  std::int64_t count = 0;
  std::map<std::string, double> theirs;
  from_bytes(bytes, "evaluation sums", count, theirs);
  samples += count;
  for (const auto& [name, sum] : theirs) sums[name] += sum;
}
}  // namespace dist::detail

class DataParallel {
 public:
  /// Reads this process's place from the launcher's variables (a malformed one is refused
  /// here); the ranks join at the first fit.
  DataParallel() : place_(dist::place_from_environment()) {}

  int rank() const noexcept { return place_.rank; }
  int world_size() const noexcept { return place_.world_size; }
  const dist::ProcessPlace& place() const noexcept { return place_; }

  /// Trains this process alone, whatever the launcher's variables say: for a program run once
  /// inside a job whose variables name several tasks (a batch script of `sbatch --ntasks=4` that
  /// does not start it with srun), which would otherwise wait for ranks that never come. Call it
  /// before fit.
  DataParallel& alone() {
    if (group_) throw ConfigError("keel: DataParallel::alone() was called after the ranks joined; call it before fit");
    place_ = dist::ProcessPlace{};
    return *this;
  }

  /// How long a rank waits for the others (to join, and in each collective) before it fails
  /// with a DistributedError naming the ranks that did not answer. Default: 5 minutes. Set it
  /// before fit.
  DataParallel& timeout(std::chrono::milliseconds limit) {
    if (limit.count() <= 0)
      throw ConfigError("keel: DataParallel's timeout must be positive, got " + std::to_string(limit.count()) + " ms");
    timeout_ = limit;
    return *this;
  }

  /// The gradients are all-reduced in buckets of about this many bytes (at least one parameter
  /// each; default 1 MiB), and with `overlap` (default on) a bucket's all-reduce starts during
  /// the backward pass as soon as its gradients are there (keel/distributed/gradient_buckets.hpp).
  /// With two processes neither changes a bit of the result; with more, the bucket size changes
  /// the order of the sums, as DistributedDataParallel's bucket_cap_mb does: resume with the
  /// same. Every rank must use the same (checked before the first step). Set them before fit.
  DataParallel& bucket_bytes(std::int64_t bytes) {
    if (bytes <= 0) throw ConfigError("keel: DataParallel's bucket_bytes must be positive, got " + std::to_string(bytes));
    bucket_bytes_ = bytes;
    return *this;
  }
  DataParallel& overlap(bool on) {
    overlap_ = on;
    return *this;
  }
  std::int64_t bucket_bytes() const noexcept { return bucket_bytes_; }
  bool overlap() const noexcept { return overlap_; }

  /// The process group, once joined (null in a process started alone).
  dist::ProcessGroup* group() noexcept { return group_.get(); }

  // ---- what the loop asks (keel/strategy/single_process.hpp) --------------------------------

  template <class State>
  void join(State& s) {
    if (group_ || !place_.distributed()) return;
    const torch::Device device = s.options.device();
    if (device.is_cuda() && !device.has_index())
      throw ConfigError("keel: in a data-parallel job each rank trains on a GPU of its own, and the device is '" +
                        device.str() + "' without an index: give rank " + std::to_string(rank()) + " (local rank " +
                        std::to_string(place_.local_rank) + ") " + dist::detail::one_gpu_per_rank);
    group_ = std::make_unique<dist::ProcessGroup>(place_, timeout_, device);
  }

  /// Before the first step, every rank must train the same way from the same state: their
  /// configurations (the fingerprint and the loop's settings) must be rank 0's, and so must
  /// their states when they came from a checkpoint (`loaded`; `digest()` is the state's):
  /// otherwise refused, naming the ranks and what differs. Then every rank takes rank 0's
  /// parameters and buffers.
  template <class State, class Digest>
  void start(State& s, bool loaded, const Fingerprint& configuration, const Digest& digest) {
    if (!group_) return;
    std::string mine;
    for (const auto& [key, value] : configuration.entries()) mine += key + "=" + value + "\n";
    const auto& o = s.options;
    mine += "loop.max_steps=" + std::to_string(o.max_steps()) + "\nloop.max_epochs=" + std::to_string(o.max_epochs()) +
            "\ncheckpoint.save_every_steps=" + std::to_string(o.save_every_steps()) +
            "\ncheckpoint.save_on_epoch_end=" + std::to_string(o.save_on_epoch_end()) +
            "\ncheckpoint.enabled=" + std::to_string(!o.checkpoint_dir().empty()) +
            "\nstrategy.bucket_bytes=" + std::to_string(bucket_bytes_) + "\nstrategy.overlap=" + std::to_string(overlap_) +
            "\nloaded=" + (loaded ? "from " + s.view.checkpoint_path : std::string("no")) + "\n";
    if (loaded) mine += "state_digest=" + digest() + "\n";
    const auto all = group_->all_gather_text(mine);
    std::string differ;
    for (std::size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0]) differ += "\n  rank " + std::to_string(r) + ": " + first_difference(all[0], all[r]);
    if (!differ.empty())
      throw dist::DistributedError(
          "keel: rank " + std::to_string(rank()) + ": the ranks do not start alike; against rank 0:" + differ +
          "\n  start every rank with the same program, options and checkpoint directory");
    broadcast_from_rank_0(s.model->parameters());
    broadcast_buffers(s);
  }

  /// At each optimizer-step boundary: the ranks stop together. A callback's stop request on any
  /// rank stops all (`stop_requested` becomes true on every rank), and so does a stop signal
  /// that any rank has received (the largest signal number is returned, 0 if none), so that
  /// every rank saves the same checkpoint and ends with the same status.
  int agree_on_stop(bool& stop_requested, int pending_signal) {
    if (!group_) return pending_signal;
    at::Tensor flags = torch::tensor({stop_requested ? 1.0 : 0.0, static_cast<double>(pending_signal)}, torch::kFloat64);
    group_->all_reduce_max(flags);
    stop_requested = flags[0].item<double>() > 0.0;
    return static_cast<int>(flags[1].item<double>());
  }

  /// This rank's share of each epoch (and of an evaluation); all of it before the ranks have
  /// joined (an evaluate before the first fit runs whole on each rank).
  data::SamplerOptions shard(data::SamplerOptions sampling) const {
    if (!group_) return sampling;
    sampling.rank = rank();
    sampling.world_size = world_size();
    return sampling;
  }

  /// Before the backward pass of each micro-batch (`window_ends`: the window's last): with
  /// overlap, that pass's gradients go to the buckets as they come, and buckets start their
  /// all-reduce during it.
  template <class State>
  void before_backward(State& s, bool window_ends) {
    if (!group_ || !overlap_ || !window_ends) return;
    buckets(s).arm();
  }

  /// Makes the window's outcome the same on every rank: the gradients averaged over the ranks
  /// (all-reduced in buckets, those not started during backward now), the mean of the ranks'
  /// window losses returned, and rank 0's buffers taken (BatchNorm's running statistics follow
  /// each rank's own samples: as PyTorch's DistributedDataParallel does, rank 0's count). A
  /// parameter without a gradient on every rank keeps none; one with a gradient on some ranks
  /// gets their sum over the world size (the others count as zero), so every rank steps alike.
  template <class State>
  torch::Tensor synchronize(State& s, const torch::Tensor& window_loss) {
    if (!group_) return window_loss;
    dist::GradientBuckets& grads = buckets(s);
    grads.start_rest(*group_);
    // Which gradients exist on any rank, and the losses: one small all-reduce.
    const auto& params = trainable_;
    at::Tensor control = torch::zeros({static_cast<std::int64_t>(params.size()) + 1}, torch::kFloat64);
    auto counts = control.accessor<double, 1>();
    for (std::size_t i = 0; i < params.size(); ++i)
      counts[static_cast<std::int64_t>(i)] = params[i].grad().defined() ? 1.0 : 0.0;
    counts[static_cast<std::int64_t>(params.size())] = window_loss.item<double>();
    group_->all_reduce_sum(control);
    const double world = static_cast<double>(world_size());
    std::vector<bool> has_gradient(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) has_gradient[i] = counts[static_cast<std::int64_t>(i)] > 0.0;
    grads.finish(*group_, has_gradient, world);
    broadcast_buffers(s);
    return torch::full({}, counts[static_cast<std::int64_t>(params.size())] / world, window_loss.options());
  }

  /// The ranks' evaluation sums and sample counts, added up in rank order (so every rank gets
  /// the same values, bit for bit). A metric some rank lacks (it had no sample) counts as 0 there.
  void add_up(std::map<std::string, double>& sums, std::int64_t& samples) {
    if (!group_) return;
    std::map<std::string, double> total;
    std::int64_t count = 0;
    for (const auto& bytes : group_->all_gather_text(dist::detail::evaluation_bytes(sums, samples)))
      dist::detail::add_evaluation(bytes, total, count);
    sums = std::move(total);
    samples = count;
  }

  /// Every rank's random streams, gathered before each save into `generators.ranks` on every
  /// rank: the checkpoint's "rng.ranks" section, from which each rank takes its own at a resume.
  template <class Generators>
  void gather_random_streams(Generators& generators) {
    if (!group_) return;
    generators.ranks.clear();
    for (const auto& bytes : group_->all_gather_text(dist::detail::to_bytes(RngState::capture()))) {
      RngState streams;
      dist::detail::from_bytes(bytes, "random streams", streams);
      generators.ranks.push_back(std::move(streams));
    }
  }

  bool writes_checkpoints() const noexcept { return rank() == 0; }
  /// The writer's outcome of a save, sent to every rank (all return once it is known).
  SaveOutcome share_save_outcome(SaveOutcome outcome) {
    if (!group_) return outcome;
    at::Tensor value = torch::tensor({static_cast<std::int64_t>(outcome)}, torch::kInt64);
    group_->broadcast(value, 0);
    return static_cast<SaveOutcome>(value[0].item<std::int64_t>());
  }

  /// What a resume with another number of processes changes: always allowed, it goes on at
  /// sample granularity (keel/state/fork.hpp, continue_epoch) and is recorded in the lineage.
  /// (Nothing for a process alone: its checkpoints are those of a Trainer without the policy.)
  void describe(Fingerprint& f) const {
    if (world_size() <= 1) return;
    f.add("strategy", "keel::DataParallel");
    f.add("strategy.world_size", world_size());
  }

 private:
  template <class State>
  void broadcast_buffers(State& s) {
    broadcast_from_rank_0(s.model->buffers());
  }
  void broadcast_from_rank_0(const std::vector<at::Tensor>& tensors) {
    for (auto& [dtype, flat] : by_dtype(tensors)) {
      group_->broadcast(flat.values, 0);
      flat.scatter();
    }
  }

  /// The first line of `theirs` that differs from `ours`, with rank 0's value.
  static std::string first_difference(const std::string& ours, const std::string& theirs) {
    std::size_t at = 0;
    while (at < ours.size() && at < theirs.size()) {
      const std::size_t a = ours.find('\n', at), b = theirs.find('\n', at);
      const std::string line_ours = ours.substr(at, a - at), line_theirs = theirs.substr(at, b - at);
      if (line_ours != line_theirs) return line_theirs + " (rank 0: " + line_ours + ")";
      at = a + 1;
    }
    return "(a configuration of another length)";
  }

  /// Tensors of one dtype laid end to end in one buffer, and back.
  struct Flat {
    at::Tensor values;
    std::vector<at::Tensor> parts;
    void scatter() {
      std::int64_t offset = 0;
      for (auto& part : parts) {
        const std::int64_t n = part.numel();
        part.copy_(values.narrow(0, offset, n).view(part.sizes()));
        offset += n;
      }
    }
  };
  static std::map<at::ScalarType, Flat> by_dtype(const std::vector<at::Tensor>& tensors) {
    std::map<at::ScalarType, Flat> out;
    for (const auto& t : tensors) out[t.scalar_type()].parts.push_back(t);
    for (auto& [dtype, flat] : out) {
      std::vector<at::Tensor> pieces;
      for (const auto& part : flat.parts) pieces.push_back(part.detach().reshape({-1}));
      flat.values = torch::cat(pieces);
      for (auto& part : flat.parts) part = part.detach();  // (written in place: outside autograd)
    }
    return out;
  }

  /// The gradient buckets of the model's trainable parameters, laid out at first use.
  template <class State>
  dist::GradientBuckets& buckets(State& s) {
    if (!buckets_) {
      for (const auto& p : s.model->parameters())
        if (p.requires_grad()) trainable_.push_back(p);
      buckets_ = std::make_unique<dist::GradientBuckets>(trainable_, bucket_bytes_);
      if (overlap_) buckets_->overlap_with_backward(*group_);
    }
    return *buckets_;
  }

  dist::ProcessPlace place_;
  std::chrono::milliseconds timeout_{std::chrono::minutes(5)};
  std::int64_t bucket_bytes_ = std::int64_t{1} << 20;
  bool overlap_ = true;
  std::vector<at::Tensor> trainable_;
  std::unique_ptr<dist::ProcessGroup> group_;
  std::unique_ptr<dist::GradientBuckets> buckets_;  // (after group_: destroyed first, its hooks removed)
};

}  // namespace keel
