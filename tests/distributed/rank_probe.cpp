// A rank of a data-parallel job for the tests of keel/distributed (tests/unit/test_distributed.cpp),
// started by keel-run or by the test itself with the launcher's variables set.
//
//   rank_probe collectives        all-reduce, broadcast, gather and barrier; prints what each gave
//   rank_probe leave K            rank K exits (status 3) right after joining; the others try an
//                                 all-reduce and print the error
//   rank_probe hang K             rank K sleeps instead of the all-reduce (until killed); the others
//                                 print the error their timeout gives
// Every rank joins with a timeout of KEEL_PROBE_TIMEOUT_MS (default 20000) milliseconds.

#include <keel/distributed.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

int run(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const int chosen = argc > 2 ? std::atoi(argv[2]) : -1;
  const char* timeout_text = std::getenv("KEEL_PROBE_TIMEOUT_MS");
  const std::chrono::milliseconds timeout(timeout_text ? std::atoll(timeout_text) : 20000);
  keel::dist::ProcessGroup group(keel::dist::place_from_environment(), timeout);
  const int rank = group.rank();
  if (mode == "collectives") {
    at::Tensor sums = torch::tensor({1.0f, 10.0f}) * (rank + 1);
    group.all_reduce_sum(sums);
    at::Tensor from_root = torch::full({3}, static_cast<double>(rank + 5), torch::kFloat64);
    group.broadcast(from_root, 0);
    const auto names = group.all_gather_text("r" + std::to_string(rank));
    group.barrier();
    std::printf("rank=%d sum=%g,%g broadcast=%g,%g,%g gathered=%s\n", rank, sums[0].item<double>(),
                sums[1].item<double>(), from_root[0].item<double>(), from_root[1].item<double>(),
                from_root[2].item<double>(), join(names).c_str());
    return 0;
  }
  if (mode == "leave" || mode == "hang") {
    group.barrier();  // every rank has joined: what fails next is the all-reduce
    if (rank == chosen) {
      if (mode == "leave") {
        std::printf("rank=%d leaving\n", rank);
        std::fflush(stdout);
        std::_Exit(3);  // as a crash would: no goodbye to the others
      }
      std::printf("rank=%d hanging\n", rank);
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::hours(1));
    }
    at::Tensor sums = torch::ones({4});
    const auto start = std::chrono::steady_clock::now();
    try {
      group.all_reduce_sum(sums);
    } catch (const keel::dist::DistributedError& e) {
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("rank=%d failed_after_s=%.1f\nerror=%s\n", rank, waited, e.what());
      return 1;
    }
    std::printf("rank=%d the all-reduce succeeded without rank %d\n", rank, chosen);
    return 0;
  }
  std::fprintf(stderr, "usage: rank_probe collectives | leave RANK | hang RANK\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const keel::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return e.exit_status();
  }
}
