#pragma once
// The ranks of a data-parallel job, joined on LibTorch's own distributed engine (c10d): a
// TCPStore that rank 0 serves at MASTER_ADDR:MASTER_PORT for the rendezvous, and a process
// group for the collectives: Gloo for CPU tensors, NCCL for a CUDA device where LibTorch was
// built with it (USE_C10D_NCCL, which LibTorch's CMake target defines for a CUDA build) and
// NCCL's header is on the include path. A collective that fails (a rank died, or did not answer
// within the timeout) is turned into a DistributedError that names the ranks that are gone,
// found by a roll call through the store, so that no rank hangs and the message says which one
// to look at. (On NCCL, but for the first collective: NCCL sets its communicator up there, and
// that waits for every rank without a timeout.)

#include <keel/distributed/place.hpp>
#include <keel/error.hpp>

#ifndef USE_C10D_GLOO
#error "keel/distributed needs LibTorch's Gloo process group, which LibTorch's headers declare only under USE_C10D_GLOO: build with LibTorch's CMake target (find_package(Torch) and target_link_libraries(app PRIVATE keel::keel) define it), or pass -DUSE_C10D_GLOO -DUSE_DISTRIBUTED; Debian needs libgloo-dev"
#endif
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
// NCCL where LibTorch has it and NCCL's own header can be found (a pip PyTorch keeps it apart,
// in site-packages/nvidia/nccl/include): without it keel compiles Gloo only.
#if defined(USE_C10D_NCCL) && __has_include(<nccl.h>)
#define KEEL_HAS_NCCL 1
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/version.h>
#else
#define KEEL_HAS_NCCL 0
#endif
#include <torch/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

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

inline constexpr bool has_nccl = KEEL_HAS_NCCL;

/// How to give each rank a GPU of its own (in the messages that refuse otherwise).
inline constexpr const char* one_gpu_per_rank =
    "TrainerOptions().device(torch::Device(torch::kCUDA, local_rank)) with local_rank = "
    "keel::dist::place_from_environment().local_rank, or cuda:0 where each rank sees one GPU of its own "
    "(CUDA_VISIBLE_DEVICES)";

/// Refuses a CUDA device where this program has no NCCL process group (before the rendezvous).
inline void require_backend_for(torch::Device device) {
  if (!device.is_cuda() || has_nccl) return;
#ifdef USE_C10D_NCCL
  throw ConfigError("keel: data-parallel training on " + device.str() +
                    " needs NCCL's header nccl.h, which this program was built without: LibTorch has NCCL, "
                    "but nccl.h is not on the include path; add NCCL's include directory (for a pip PyTorch, "
                    "site-packages/nvidia/nccl/include) to your target");
#else
  throw ConfigError("keel: data-parallel training on " + device.str() +
                    " needs LibTorch's NCCL process group, and this program was built without it "
                    "(USE_C10D_NCCL is not defined: LibTorch's CMake target defines it for a CUDA build "
                    "of LibTorch); train on the CPU (Gloo), or build against a CUDA LibTorch");
#endif
}

/// This machine's name (for messages).
inline std::string host_name() {
  char name[256] = {};
  return ::gethostname(name, sizeof name - 1) == 0 ? std::string(name) : std::string("this machine");
}

#if KEEL_HAS_NCCL
/// NCCL's blocking wait: a collective that fails or outlasts the timeout throws from wait(), where
/// keel names the missing ranks, instead of NCCL's watchdog handling it (ending the process, or
/// nothing, depending on the version). Left alone if the user set it, under either name; the
/// variable is the one this LibTorch reads (TORCH_NCCL_ from 2.2 on).
inline void use_blocking_wait() {
  if (std::getenv("TORCH_NCCL_BLOCKING_WAIT") || std::getenv("NCCL_BLOCKING_WAIT")) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 2)
  ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
#else
  ::setenv("NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
#endif
}

/// The GPU behind `device` as its PCI address (two ranks' cuda:0 may be different GPUs, under
/// their own CUDA_VISIBLE_DEVICES).
inline std::string gpu_address(torch::Device device) {
  const auto* properties = at::cuda::getDeviceProperties(device.index());
  char address[32];
  std::snprintf(address, sizeof address, "%04x:%02x:%02x", static_cast<unsigned>(properties->pciDomainID),
                static_cast<unsigned>(properties->pciBusID), static_cast<unsigned>(properties->pciDeviceID));
  return address;
}

/// Ends an NCCL process group as LibTorch 2.x asks (its destructor warns otherwise): shutdown
/// after a normal run, abort after a failed collective (work that waits for a dead rank never
/// finishes). LibTorch 1.x has neither: its destructor does it.
template <class Group>
auto end_nccl(Group& group, bool failed, int) -> decltype(group.shutdown(), group.abort(), void()) {
  try {
    if (failed) group.abort();
    else group.shutdown();
  } catch (const std::exception&) {  // (a destructor: what it could not end, the process's end does)
  }
}
template <class Group>
void end_nccl(Group&, bool, long) {}
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
      if (device_.is_cpu()) {
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
#if KEEL_HAS_NCCL
    if (device_.is_cuda()) start_nccl();
#endif
  }
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  ~ProcessGroup() {
#if KEEL_HAS_NCCL
    if (nccl_) detail::end_nccl(*nccl_, failed_, 0);
#endif
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
      collective("a barrier", token, [&](std::vector<at::Tensor>& one) { return group_->allreduce(one); });
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
      failed_ = true;
      const std::string gone = missing_ranks();
      // (All of NCCL's message when no rank is gone: its cause is on a later line, "Last error".)
      const std::string said = gone.empty() && device_.is_cuda() ? indented(e.what()) : first_line(e.what());
      throw DistributedError("keel: rank " + std::to_string(place_.rank) + " of " +
                             std::to_string(place_.world_size) + ": " + what + " failed: " +
                             (gone.empty() ? "every rank answered a roll call afterwards, so no rank is gone: the "
                                             "collective itself failed (" + where() + ")"
                                           : gone) +
                             "\n  (c10d said: " + said + ")");
    }
  }
#if KEEL_HAS_NCCL
  /// Each rank's NCCL process group, once the ranks have shown that each has a GPU of its own
  /// (NCCL refuses two ranks on one GPU, in words that do not say which ranks).
  void start_nccl() {
    const std::string mine = detail::host_name() + " GPU " + detail::gpu_address(device_);
    const auto all = all_gather_text(mine);
    for (std::size_t r = 0; r < all.size(); ++r)
      for (std::size_t q = r + 1; q < all.size(); ++q)
        if (all[q] == all[r])
          throw ConfigError("keel: ranks " + std::to_string(r) + " and " + std::to_string(q) + " would both train on " +
                            all[r] + " (this rank's device: " + device_.str() +
                            "); NCCL needs a GPU per rank: give each rank " + detail::one_gpu_per_rank);
    try {
      detail::use_blocking_wait();
      c10::cuda::set_device(device_.index());  // (where NCCL puts what it makes before the first collective)
      auto options = ::c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout_;
      nccl_ = c10::make_intrusive<::c10d::ProcessGroupNCCL>(store_, place_.rank, place_.world_size, options);
      group_ = nccl_;
    } catch (const std::exception& e) {
      throw DistributedError("keel: rank " + std::to_string(place_.rank) + " of " +
                             std::to_string(place_.world_size) + " could not start NCCL on " + device_.str() + ": " +
                             indented(e.what()));
    }
  }
#endif

  /// A roll call through the store, after a failed collective: each rank that reaches it
  /// answers (a failure is final: a rank answers once, whichever collective failed for it), and
  /// the ranks that have not answered within the timeout (time for the others' own collectives
  /// to fail) are named; empty when every rank answered. The store lives in rank 0: if it
  /// cannot be reached, rank 0 is the one gone.
  std::string missing_ranks() {
    const std::string prefix = "keel/roll-call/";
    try {
      store_->set(prefix + std::to_string(place_.rank), detail::bytes_of("here"));
      std::vector<std::string> keys;
      for (int r = 0; r < place_.world_size; ++r) keys.push_back(prefix + std::to_string(r));
      try {
        store_->wait(keys, timeout_);
        return "";  // (every rank answered)
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
  static std::string indented(std::string text) {
    for (std::size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 1))
      text.insert(at + 1, "    ");
    return text;
  }

  ProcessPlace place_;
  std::chrono::milliseconds timeout_;
  torch::Device device_;
  c10::intrusive_ptr<::c10d::Store> store_;
  c10::intrusive_ptr<detail::Collectives> group_;
#if KEEL_HAS_NCCL
  c10::intrusive_ptr<::c10d::ProcessGroupNCCL> nccl_;  // (group_ too, when on CUDA)
#endif
  std::atomic<bool> failed_{false};  // a collective failed (NCCL's group is then aborted, not shut down;
                                     // atomic: a gradient hook may start one in autograd's thread)
  std::int64_t gathers_ = 0;  // all_gather_text calls so far (the same on every rank): their keys
};

}  // namespace keel::dist
