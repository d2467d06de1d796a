#pragma once
// The ranks of a data-parallel job, joined on LibTorch's own distributed engine (c10d): a
// TCPStore that rank 0 serves at MASTER_ADDR:MASTER_PORT for the rendezvous, and a process
// group for the collectives: Gloo for CPU tensors, NCCL for a CUDA device where LibTorch was
// built with it (USE_C10D_NCCL, which LibTorch's CMake target defines for a CUDA build). A
// collective that fails (a rank died, or did not answer within the timeout) is turned into a
// DistributedError that names the ranks that are gone, found by a roll call through the store,
// so that no rank hangs and the message says which one to look at.

#include <keel/distributed/place.hpp>
#include <keel/error.hpp>

#ifndef USE_C10D_GLOO
#error "keel/distributed needs LibTorch's Gloo process group, which LibTorch's headers declare only under USE_C10D_GLOO: build with LibTorch's CMake target (find_package(Torch) and target_link_libraries(app PRIVATE keel::keel) define it), or pass -DUSE_C10D_GLOO -DUSE_DISTRIBUTED; Debian needs libgloo-dev"
#endif
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::dist {

/// A collective or the rendezvous failed: a rank died, stopped answering, or could not be
/// reached. exit_status 1, like any failed run; the message names the missing ranks.
class DistributedError : public Error {
 public:
  using Error::Error;
};

namespace detail {
/// TCPStoreOptions::useLibUV exists from LibTorch 2.3 on, where it defaults to a backend that a
/// LibTorch built without libuv may lack: keel asks for the classic one wherever there is a choice.
template <class Options, class = void>
struct has_use_libuv : std::false_type {};
template <class Options>
struct has_use_libuv<Options, std::void_t<decltype(std::declval<Options&>().useLibUV)>> : std::true_type {};

template <class Options>
void prefer_classic_store(Options& options) {
  if constexpr (has_use_libuv<Options>::value) options.useLibUV = false;
}

/// The Gloo device for this rank: the interface GLOO_SOCKET_IFNAME names (as in PyTorch), the
/// loopback when the store is on this machine's loopback, or the address of this host's name.
inline std::shared_ptr<::gloo::transport::Device> gloo_device(const ProcessPlace& place) {
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"); interface && *interface)
    return ::c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  const std::string& addr = place.master_addr;
  if (addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1")
    return ::c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return ::c10d::ProcessGroupGloo::createDefaultDevice();
}

inline std::vector<std::uint8_t> bytes_of(const std::string& text) { return {text.begin(), text.end()}; }

/// What the Gloo and NCCL process groups have in common: c10d::ProcessGroup in LibTorch 1.x,
/// c10d::Backend from 2.0 on.
using Collectives = std::conditional_t<std::is_base_of_v<::c10d::Backend, ::c10d::ProcessGroupGloo>, ::c10d::Backend,
                                       ::c10d::ProcessGroup>;

#ifdef USE_C10D_NCCL
inline constexpr bool has_nccl = true;
#else
inline constexpr bool has_nccl = false;
#endif

/// Refuses a CUDA device where this program has no NCCL process group (before the rendezvous).
inline void require_backend_for(torch::Device device) {
  if (device.is_cuda() && !has_nccl)
    throw ConfigError("keel: data-parallel training on " + device.str() +
                      " needs LibTorch's NCCL process group, and this program was built without it "
                      "(USE_C10D_NCCL is not defined: LibTorch's CMake target defines it for a CUDA build "
                      "of LibTorch); train on the CPU (Gloo), or build against a CUDA LibTorch");
}

#ifdef USE_C10D_NCCL
/// The NCCL process group of a rank that trains on CUDA `device` (with an index).
inline c10::intrusive_ptr<Collectives> nccl_group(const c10::intrusive_ptr<::c10d::Store>& store,
                                                  const ProcessPlace& place, std::chrono::milliseconds timeout,
                                                  torch::Device device) {
  // Blocking wait: a collective that fails or outlasts the timeout throws from wait(), where
  // keel names the missing ranks, instead of NCCL's watchdog ending the process on its own. (A
  // value the user set is kept; LibTorch 1.x reads the second name.)
  ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
  ::setenv("NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
  c10::cuda::set_device(device.index());  // (where NCCL puts what it makes before the first collective)
  auto options = ::c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<::c10d::ProcessGroupNCCL>(store, place.rank, place.world_size, options);
}
#endif
}  // namespace detail

/// The job's ranks, joined (see above). Every rank must call the same collectives in the same
/// order, as in any c10d program.
class ProcessGroup {
 public:
  /// Joins the job `place` describes (a job of at least two ranks): waits up to `timeout` for
  /// every rank at the store, then connects Gloo (`device` the CPU) or NCCL (a CUDA device with
  /// an index: each rank its own GPU). `timeout` also bounds every collective: a rank that does
  /// not answer within it is reported missing.
  ProcessGroup(ProcessPlace place, std::chrono::milliseconds timeout, torch::Device device = torch::kCPU)
      : place_(std::move(place)), timeout_(timeout), device_(device) {
    if (!place_.distributed())
      throw ConfigError("keel: a process group needs a job of at least two ranks; this process is the only one (" +
                        place_.launcher + ")");
    if (!device_.is_cpu() && !(device_.is_cuda() && device_.has_index()))
      throw ConfigError("keel: a process group runs on the CPU or on one CUDA device with an index (cuda:0, ...); got " +
                        device_.str());
    detail::require_backend_for(device_);
    ::c10d::TCPStoreOptions options;
    options.port = place_.master_port;
    options.isServer = place_.rank == 0;
    options.numWorkers = static_cast<std::size_t>(place_.world_size);
    options.waitWorkers = true;
    options.timeout = timeout_;
    detail::prefer_classic_store(options);
    try {
      store_ = c10::make_intrusive<::c10d::TCPStore>(place_.master_addr, options);
#ifdef USE_C10D_NCCL
      if (device_.is_cuda()) group_ = detail::nccl_group(store_, place_, timeout_, device_);
#endif
      if (!group_) {
        auto gloo = ::c10d::ProcessGroupGloo::Options::create(timeout_);
        gloo->devices.push_back(detail::gloo_device(place_));
        group_ = c10::make_intrusive<::c10d::ProcessGroupGloo>(store_, place_.rank, place_.world_size, gloo);
      }
    } catch (const std::exception& e) {
      throw DistributedError("keel: rank " + std::to_string(place_.rank) + " of " +
                             std::to_string(place_.world_size) + " could not join the job at " + where() +
                             " within " + seconds(timeout_) + ": " + first_line(e.what()) +
                             "\n  (every rank must start, with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE; "
                             "rank 0 serves the store, so it must be able to listen on that port)");
    }
  }

  int rank() const noexcept { return place_.rank; }
  int world_size() const noexcept { return place_.world_size; }
  const ProcessPlace& place() const noexcept { return place_; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  /// Where the collectives run: the CPU (Gloo) or this rank's GPU (NCCL).
  torch::Device device() const noexcept { return device_; }

  // One tensor per collective: c10d's tensor lists are one tensor per device, reduced together
  // on each rank first, not a list of different tensors. Flatten several into one to send them
  // together. A tensor elsewhere than device() (keel's small control tensors are made on the
  // CPU) goes through a copy there: NCCL reduces CUDA tensors only.

  /// Sums `tensor` (a dense tensor, the same shape and dtype on every rank) over the ranks, in
  /// place on every rank.
  void all_reduce_sum(at::Tensor& tensor) {
    collective("an all-reduce", tensor, [&](std::vector<at::Tensor>& one) { return group_->allreduce(one); });
  }
  /// A collective under way (c10d's Work; its type differs between LibTorch versions).
  using Work = decltype(std::declval<detail::Collectives&>().allreduce(std::declval<std::vector<at::Tensor>&>()));
  /// Starts summing `tensor` (on device()) over the ranks in place, in Gloo's threads or on
  /// NCCL's stream; `finish` waits for it. Every rank must start the same collectives in the
  /// same order, finished or not.
  Work start_all_reduce_sum(const at::Tensor& tensor) {
    if (tensor.device() != device_)
      throw ConfigError("keel: an all-reduce started on " + tensor.device().str() + ", and the ranks' collectives run on " +
                        device_.str() + ": keep the model on the Trainer's device");
    std::vector<at::Tensor> one{tensor};
    Work work;
    guarded("an all-reduce", [&] { work = group_->allreduce(one); });
    return work;
  }
  void finish(const Work& work) {
    guarded("an all-reduce", [&] { work->wait(timeout_); });
  }

  /// The elementwise maximum of `tensor` over the ranks, in place on every rank.
  void all_reduce_max(at::Tensor& tensor) {
    ::c10d::AllreduceOptions options;
    options.reduceOp = ::c10d::ReduceOp::MAX;
    collective("an all-reduce", tensor, [&](std::vector<at::Tensor>& one) { return group_->allreduce(one, options); });
  }
  /// Every rank's `tensor` becomes `root`'s (in place).
  void broadcast(at::Tensor& tensor, int root = 0) {
    ::c10d::BroadcastOptions options;
    options.rootRank = root;
    collective("a broadcast", tensor, [&](std::vector<at::Tensor>& one) { return group_->broadcast(one, options); });
  }
  /// Returns once every rank has reached the same barrier. (On NCCL an all-reduce of one
  /// number: c10d's NCCL barrier guesses a GPU from the rank before the first collective.)
  void barrier() {
    if (device_.is_cuda()) {
      at::Tensor token = torch::zeros({1});
      all_reduce_sum(token);
      return;
    }
    guarded("a barrier", [&] { group_->barrier()->wait(timeout_); });
  }
  /// Every rank's `text`, in rank order (through the store: for small things, digests and
  /// names, not tensors).
  std::vector<std::string> all_gather_text(const std::string& text) {
    const std::string prefix = "keel/gather/" + std::to_string(++gathers_) + "/";
    std::vector<std::string> all;
    guarded("gathering values", [&] {
      store_->set(prefix + std::to_string(place_.rank), detail::bytes_of(text));
      for (int r = 0; r < place_.world_size; ++r) {
        const auto bytes = store_->get(prefix + std::to_string(r));  // (waits up to the store's timeout)
        all.emplace_back(bytes.begin(), bytes.end());
      }
    });
    // Every rank has set its key of this gather, so every rank is done reading the previous
    // gather's keys: this rank's can go (else the store grows by a key per gather and rank).
    if (gathers_ > 1) try {
        store_->deleteKey("keel/gather/" + std::to_string(gathers_ - 1) + "/" + std::to_string(place_.rank));
      } catch (const std::exception&) {  // (a key left behind costs memory, not correctness)
      }
    return all;
  }

 private:
  /// Runs the collective `start` begins on `tensor` and waits for it (through a copy on
  /// device() when the tensor lies elsewhere).
  template <class Start>
  void collective(const char* what, at::Tensor& tensor, const Start& start) {
    const bool elsewhere = tensor.device() != device_;
    std::vector<at::Tensor> one{elsewhere ? tensor.to(device_) : tensor};
    guarded(what, [&] { start(one)->wait(timeout_); });
    if (elsewhere) tensor.copy_(one[0]);
  }

  /// Runs `step`; when it throws, finds which ranks are gone and throws DistributedError.
  template <class Step>
  void guarded(const char* what, const Step& step) {
    try {
      step();
    } catch (const std::exception& e) {
      throw DistributedError("keel: rank " + std::to_string(place_.rank) + " of " +
                             std::to_string(place_.world_size) + ": " + what + " failed: " + missing_ranks() +
                             "\n  (c10d said: " + first_line(e.what()) + ")");
    }
  }

  /// A roll call through the store, after a failed collective: each rank that reaches it
  /// answers (a failure is final: a rank answers once, whichever collective failed for it), and
  /// the ranks that have not answered within the timeout (time for the others' own collectives
  /// to fail) are named. The store lives in rank 0: if it cannot be reached, rank 0 is the one
  /// gone.
  std::string missing_ranks() {
    const std::string prefix = "keel/roll-call/";
    try {
      store_->set(prefix + std::to_string(place_.rank), detail::bytes_of("here"));
      std::vector<std::string> keys;
      for (int r = 0; r < place_.world_size; ++r) keys.push_back(prefix + std::to_string(r));
      try {
        store_->wait(keys, timeout_);
        return "every rank answered a roll call afterwards: a rank's connection failed (" + where() + ")";
      } catch (const std::exception&) {
      }
      std::string missing;
      int count = 0;
      for (int r = 0; r < place_.world_size; ++r)
        if (!store_->check({keys[static_cast<std::size_t>(r)]})) {
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
          ++count;
        }
      return (count == 1 ? "rank " + missing + " is" : "ranks " + missing + " are") +
             " gone or not answering (no answer within " + seconds(timeout_) +
             ", nor to a roll call); see that rank's output for why it stopped";
    } catch (const std::exception&) {
      return "rank 0 is gone or not answering (the rendezvous store it serves at " + where() +
             " cannot be reached); see rank 0's output for why it stopped";
    }
  }

  std::string where() const { return place_.master_addr + ":" + std::to_string(place_.master_port); }
  static std::string seconds(std::chrono::milliseconds t) {
    return std::to_string(t.count() / 1000) + (t.count() % 1000 ? "." + std::to_string(t.count() % 1000 / 100) : "") +
           " s";
  }
  static std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

  ProcessPlace place_;
  std::chrono::milliseconds timeout_;
  torch::Device device_;
  c10::intrusive_ptr<::c10d::Store> store_;
  c10::intrusive_ptr<detail::Collectives> group_;
  std::int64_t gathers_ = 0;  // all_gather_text calls so far (the same on every rank): their keys
};

}  // namespace keel::dist
