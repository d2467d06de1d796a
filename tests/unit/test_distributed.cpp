// keel/distributed: a process's place read from the launchers' variables, and ranks joined on
// c10d (TCPStore, Gloo) that run collectives and, when a rank dies or hangs, fail within the
// timeout naming it. The ranks are tests/distributed/rank_probe, started by keel-run or
// directly with the variables a launcher such as srun would set; the resume driver's and the
// Fashion-MNIST example's data-parallel runs, stopped and resumed.

#include "support/process.hpp"
#include "support/saved_state.hpp"

#include <keel/distributed/data_parallel.hpp>
#include <keel/distributed/place.hpp>

#include <doctest/doctest.h>

#include <torch/torch.h>

#include <keel/checkpoint/directory.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>
#include <csignal>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace distributed_test {

using keel_test::Process;
using keel_test::ProcessResult;
using keel_test::lines_starting;

namespace {

namespace fs = std::filesystem;

const std::string probe = KEEL_RANK_PROBE;
const std::string launcher = KEEL_RUN_TOOL;
const std::string driver = KEEL_RESUME_DRIVER;
const std::string example = KEEL_FASHION_MNIST_EXAMPLE;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-distributed-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// An environment of these variables only.
keel::dist::EnvironmentReader environment(std::map<std::string, std::string> variables) {
  return [variables = std::move(variables)](const char* name) -> const char* {
    const auto found = variables.find(name);
    return found == variables.end() ? nullptr : found->second.c_str();
  };
}

/// The message of the ConfigError that reading `variables` throws ("" if none).
std::string refusal(std::map<std::string, std::string> variables) {
  try {
    keel::dist::place_from_environment(environment(std::move(variables)));
  } catch (const keel::ConfigError& e) {
    return e.what();
  }
  return "";
}

/// A TCP port on the loopback that nothing listens on now (the kernel's pick).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  socklen_t size = sizeof address;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0);
  ::close(fd);
  return ntohs(address.sin_port);
}

/// Rank `rank` of a job of two, started as srun or a hand-written script would: the variables
/// set, no launcher watching.
std::vector<std::string> rank_of_two(int rank, int port, std::vector<std::string> args) {
  std::vector<std::string> argv{"/usr/bin/env", "RANK=" + std::to_string(rank), "WORLD_SIZE=2",
                                "LOCAL_RANK=" + std::to_string(rank), "LOCAL_WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                                "MASTER_PORT=" + std::to_string(port), "KEEL_PROBE_TIMEOUT_MS=3000", probe};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

}  // namespace

TEST_CASE("evaluation sums reach the other ranks exactly, whatever the metrics' names hold") {
  // What DataParallel::add_up sends and adds up, rank by rank.
  const std::map<std::string, double> rank0{{"val_loss", 0.1}, {"odd name\nwith a newline", 1.0 / 3.0}, {"a b", 2.5}};
  const std::map<std::string, double> rank1{{"val_loss", 0.2}, {"only here", -1e-300}};
  std::map<std::string, double> sums;
  std::int64_t samples = 0;
  keel::dist::detail::add_evaluation(keel::dist::detail::evaluation_bytes(rank0, 7), sums, samples);
  keel::dist::detail::add_evaluation(keel::dist::detail::evaluation_bytes(rank1, 5), sums, samples);
  CHECK(samples == 12);
  CHECK(sums.size() == 4);
  CHECK(sums.at("val_loss") == 0.1 + 0.2);
  CHECK(sums.at("odd name\nwith a newline") == 1.0 / 3.0);
  CHECK(sums.at("a b") == 2.5);
  CHECK(sums.at("only here") == -1e-300);
  const std::string damaged = keel::dist::detail::evaluation_bytes(rank0, 7).substr(0, 20);
  CHECK_THROWS_WITH_AS(keel::dist::detail::add_evaluation(damaged, sums, samples),
                       doctest::Contains("evaluation sums arrived damaged"), keel::dist::DistributedError);
}

TEST_CASE("a process's place comes from torchrun's, Slurm's or Open MPI's variables") {
  using keel::dist::place_from_environment;
  {
    const auto place = place_from_environment(environment({}));
    CHECK(place.launcher == "none");
    CHECK(place.rank == 0);
    CHECK(place.world_size == 1);
    CHECK_FALSE(place.distributed());
  }
  {
    const auto place = place_from_environment(environment({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
                                                            {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.7"},
                                                            {"MASTER_PORT", "29511"}}));
    CHECK(place.launcher == "torchrun");
    CHECK(place.rank == 3);
    CHECK(place.world_size == 4);
    CHECK(place.local_rank == 1);
    CHECK(place.local_world_size == 2);
    CHECK(place.master_addr == "10.0.0.7");
    CHECK(place.master_port == 29511);
  }
  {  // srun, with an uneven allocation's per-node count; torchrun's variables would win
    const auto place = place_from_environment(
        environment({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}, {"SLURM_LOCALID", "2"},
                     {"SLURM_NTASKS_PER_NODE", "3(x2)"}, {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "1234"}}));
    CHECK(place.launcher == "slurm");
    CHECK(place.rank == 5);
    CHECK(place.world_size == 6);
    CHECK(place.local_rank == 2);
  }
  {
    const auto place = place_from_environment(
        environment({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "1"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "1"}}));
    CHECK(place.launcher == "openmpi");
    CHECK_FALSE(place.distributed());  // a job of one needs no store
  }
}

TEST_CASE("a launcher's malformed variables are refused, naming the variable and its value") {
  const std::map<std::string, std::string> good{{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                                                {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& name, const std::string& value) {
    auto variables = good;
    variables[name] = value;
    return refusal(variables);
  };
  CHECK(refusal(good).empty());
  CHECK(with("RANK", "2").find("RANK='2' is not a rank of a job of 2 (an integer from 0 to 1)") != std::string::npos);
  CHECK(with("RANK", "-1").find("RANK='-1'") != std::string::npos);
  CHECK(with("WORLD_SIZE", "two").find("WORLD_SIZE='two' is not a number of ranks") != std::string::npos);
  CHECK(with("WORLD_SIZE", "").find("WORLD_SIZE=''") != std::string::npos);
  CHECK(with("MASTER_PORT", "70000").find("MASTER_PORT='70000' is not a TCP port (an integer from 1 to 65535)") !=
        std::string::npos);
  CHECK(with("LOCAL_RANK", "4").find("LOCAL_RANK='4'") != std::string::npos);
  CHECK(refusal({{"RANK", "0"}}).find("has RANK but not WORLD_SIZE") != std::string::npos);
  CHECK(refusal({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}})
            .find("rank 0 of 2 (RANK, WORLD_SIZE) but MASTER_ADDR or MASTER_PORT is not set") != std::string::npos);
}

TEST_CASE("a process group on a device without a backend is refused before the rendezvous") {
  keel::dist::ProcessPlace place;
  place.rank = 1;  // (not rank 0: nothing would serve a store; a refusal comes before any)
  place.world_size = 2;
  place.master_addr = "127.0.0.1";
  place.master_port = 1;
  place.launcher = "torchrun";
  auto refusal = [&](torch::Device device) -> std::string {
    try {
      keel::dist::ProcessGroup group(place, std::chrono::milliseconds(100), device);
    } catch (const keel::ConfigError& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("not a ConfigError: ") + e.what();
    }
    return "accepted";
  };
  CHECK(refusal(torch::Device(torch::kCUDA)) ==
        "keel: a process group runs on the CPU or on one CUDA device with an index (cuda:0, ...); got cuda");
  CHECK(refusal(torch::Device(torch::kMeta)).find("got meta") != std::string::npos);
  if (!keel::dist::detail::has_nccl)  // (this LibTorch: Debian's have no CUDA)
    CHECK(refusal(torch::Device(torch::kCUDA, 1)) ==
          "keel: data-parallel training on cuda:1 needs LibTorch's NCCL process group, and this program was built "
          "without it (USE_C10D_NCCL is not defined: LibTorch's CMake target defines it for a CUDA build of LibTorch); "
          "train on the CPU (Gloo), or build against a CUDA LibTorch");
}

TEST_CASE("ranks started by keel-run meet on c10d and run collectives") {
  if (probe.empty() || launcher.empty()) return;
  const ProcessResult result = keel_test::run(
      {launcher, "--nproc-per-node", "2", "--master-port", std::to_string(free_port()), probe, "collectives"},
      std::chrono::seconds(120));
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK(lines_starting(result.output, "rank=") ==
        std::vector<std::string>{"rank=0 sum=3,30 broadcast=5,5,5 gathered=r0,r1",
                                 "rank=1 sum=3,30 broadcast=5,5,5 gathered=r0,r1"});
}

TEST_CASE("a rank that dies or hangs is named by the others within the timeout") {
  if (probe.empty()) return;
  for (const std::string mode : {"leave", "hang"}) {
    for (const int gone : {0, 1}) {
      CAPTURE(mode);
      CAPTURE(gone);
      const int port = free_port();
      Process first(rank_of_two(0, port, {mode, std::to_string(gone)}));
      Process second(rank_of_two(1, port, {mode, std::to_string(gone)}));
      Process& survivor = gone == 0 ? second : first;
      Process& other = gone == 0 ? first : second;
      const ProcessResult survived = survivor.wait(std::chrono::seconds(60));
      other.kill(SIGKILL);
      const ProcessResult ended = other.wait(std::chrono::seconds(60));
      INFO(survived.output);
      INFO(ended.output);
      CHECK(survived.exit_code == 1);
      const auto error = keel_test::value_of(survived.output, "error");
      REQUIRE(error);
      CHECK(error->find("rank " + std::to_string(1 - gone) + " of 2: an all-reduce failed: rank " +
                        std::to_string(gone) + " is gone or not answering") != std::string::npos);
      // Within the timeout (3 s here) and the roll call's wait (at most as long), plus slack.
      const auto waited = keel_test::value_of(survived.output, "rank=" + std::to_string(1 - gone) + " failed_after_s");
      REQUIRE(waited);
      CHECK(std::stod(*waited) < 30.0);  // (generous: a loaded CI machine)
      if (mode == "leave") CHECK(ended.exit_code == 3);
    }
  }
}

namespace {
/// The resume driver's data-parallel variant, `ranks` ranks under keel-run (or alone for 1).
ProcessResult train(int ranks, std::int64_t batch, std::vector<std::string> extra,
                    const std::string& variant = "ddp_sgd") {
  std::vector<std::string> argv;
  if (ranks > 1)
    argv = {launcher, "--nproc-per-node", std::to_string(ranks), "--master-port", std::to_string(free_port())};
  for (const std::string& a : {driver, std::string("--variant"), variant, std::string("--epochs"),
                               std::string("2"), std::string("--dataset-size"), std::string("200"),
                               std::string("--batch-size"), std::to_string(batch)})
    argv.push_back(a);
  argv.insert(argv.end(), extra.begin(), extra.end());
  return keel_test::run(argv, std::chrono::seconds(300));
}

std::vector<torch::Tensor> load_params(const fs::path& file) {
  std::vector<torch::Tensor> params;
  torch::load(params, file.string());
  return params;
}

/// Resumes two ranks (batch 16) from the checkpoints that `saving` (the stopped run's
/// checkpoint flags) left, to the end, and checks that both ranks end with the digest of an
/// uninterrupted two-rank run. Returns the resumed run's flags.
std::vector<std::string> check_exact_resume(const std::vector<std::string>& saving) {
  std::vector<std::string> resumed = saving;
  resumed.insert(resumed.end(), {"--resume", "auto"});
  const ProcessResult finished = train(2, 16, resumed);
  INFO(finished.output);
  REQUIRE(finished.exit_code == 0);
  const ProcessResult straight = train(2, 16, {});
  REQUIRE(straight.exit_code == 0);
  const auto digests = lines_starting(finished.output, "state_digest=");
  REQUIRE(digests.size() == 2);
  CHECK(digests[0] == digests[1]);  // the ranks are equal
  CHECK(lines_starting(straight.output, "state_digest=") == digests);
  return resumed;
}

/// The largest absolute difference between two lists of parameters of the same shapes.
double max_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  double most = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].sizes() == b[i].sizes());
    most = std::max(most, (a[i] - b[i]).abs().max().item<double>());
  }
  return most;
}
}  // namespace

TEST_CASE("two data-parallel ranks of batch B train as one process of batch 2B") {
  if (driver.empty() || launcher.empty()) return;
  const fs::path dir = fresh_directory("equivalence");
  // (PlainNet: no BatchNorm, whose statistics are each rank's own, nor Dropout.)
  const ProcessResult two = train(2, 16, {"--params-to", (dir / "two.pt").string()}, "ddp_plain");
  INFO(two.output);
  REQUIRE(two.exit_code == 0);
  const ProcessResult one = train(1, 32, {"--params-to", (dir / "one.pt").string()}, "ddp_plain");
  INFO(one.output);
  REQUIRE(one.exit_code == 0);
  // The control: one process of batch 16 trains differently, so the comparison can fail.
  const ProcessResult half = train(1, 16, {"--params-to", (dir / "half.pt").string()}, "ddp_plain");
  REQUIRE(half.exit_code == 0);
  // Both ranks end at the same step; the same samples per step, summed in another order:
  // float32 rounding apart (14 steps of SGD with momentum).
  CHECK(lines_starting(two.output, "global_step=") == std::vector<std::string>{"global_step=14", "global_step=14"});
  CHECK(keel_test::value_of(one.output, "global_step") == "14");
  const auto ranks = load_params(dir / "two.pt");
  CHECK(max_difference(ranks, load_params(dir / "one.pt")) < 1e-5);
  CHECK(max_difference(ranks, load_params(dir / "half.pt")) > 1e-3);
  // Validation is shared out: each rank validated half of the 64 samples (after each of the two
  // epochs, and in the evaluation after fit), and both got the mean of all 64.
  CHECK(lines_starting(two.output, "validated_samples=") ==
        std::vector<std::string>{"validated_samples=96", "validated_samples=96"});
  CHECK(keel_test::value_of(one.output, "validated_samples") == "192");
  const auto evaluated = lines_starting(two.output, "evaluated_val_loss=");
  REQUIRE(evaluated.size() == 2);
  CHECK(evaluated[0] == evaluated[1]);
  const double alone = std::stod(*keel_test::value_of(one.output, "evaluated_val_loss"));
  CHECK(std::stod(evaluated[0].substr(evaluated[0].find('=') + 1)) == doctest::Approx(alone).epsilon(1e-5));
  fs::remove_all(dir);
}

// The gradients all-reduced in buckets of 256 bytes (SmallNet's parameters make several), the
// buckets started during backward as their gradients come, or after it: the same sums.
TEST_CASE("overlapping the gradient all-reduces with the backward pass changes no bit of the result") {
  if (driver.empty() || launcher.empty()) return;
  const fs::path dir = fresh_directory("overlap");
  for (const std::string accumulate : {"1", "2"}) {
    CAPTURE(accumulate);
    auto with = [&](const std::string& overlap) {
      return std::vector<std::string>{"--bucket-bytes", "256", "--overlap", overlap, "--accumulate", accumulate,
                                      "--params-to", (dir / ("params-" + overlap + ".pt")).string()};
    };
    const ProcessResult on = train(2, 16, with("on"));
    INFO(on.output);
    REQUIRE(on.exit_code == 0);
    const ProcessResult off = train(2, 16, with("off"));
    INFO(off.output);
    REQUIRE(off.exit_code == 0);
    const auto digests = lines_starting(on.output, "state_digest=");
    REQUIRE(digests.size() == 2);
    CHECK(digests == lines_starting(off.output, "state_digest="));
    const auto a = load_params(dir / "params-on.pt");
    const auto b = load_params(dir / "params-off.pt");
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(keel::bitwise_equal(a[i], b[i]));
  }
  fs::remove_all(dir);
}

// SmallNet: BatchNorm's running statistics (rank 0's are taken at each step) and Dropout's
// random stream (equal on every rank: the same seed, the same draws) are in the digest.
// With async_save rank 0 writes in the background, and every rank learns each write's outcome
// at the next save or the end of fit.
TEST_CASE("rank 0 writes the checkpoints of two ranks, and both resume from them exactly") {
  if (driver.empty() || launcher.empty()) return;
  for (const std::string async_save : {"off", "on"}) {
    CAPTURE(async_save);
    const fs::path dir = fresh_directory("resume-async-" + async_save);
    const std::vector<std::string> saving{"--ckpt-dir", (dir / "ckpt").string(), "--save-every-steps", "3",
                                          "--async-save", async_save};
    std::vector<std::string> first = saving;
    first.insert(first.end(), {"--max-steps", "8", "--save-to", (dir / "saved.ckpt").string()});
    const ProcessResult stopped = train(2, 16, first);
    INFO(stopped.output);
    REQUIRE(stopped.exit_code == 0);
    // Trainer::save_checkpoint, called by both ranks: rank 0 writes, and each returns with the file there.
    CHECK(lines_starting(stopped.output, "saved_to_exists=") ==
          std::vector<std::string>{"saved_to_exists=1", "saved_to_exists=1"});
    CHECK(keel_test::run({KEEL_CKPT_TOOL, "verify", (dir / "saved.ckpt").string()}).exit_code == 0);
    // One writer: each checkpoint once, no rank's temporary left behind.
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(dir / "ckpt")) files.push_back(entry.path().filename().string());
    std::sort(files.begin(), files.end());
    CHECK(files == std::vector<std::string>{".keel.lock", "last.ckpt", "step-000000003.ckpt", "step-000000006.ckpt",
                                            "step-000000007.ckpt", "step-000000008.ckpt"});  // (7: an epoch's end)
    check_exact_resume(saving);
    fs::remove_all(dir);
  }
}

namespace {
/// How often each sample was trained in each epoch, from the files the driver's --trained-to
/// left in `dir` (one per process).
std::map<std::int64_t, std::map<std::int64_t, int>> trained_samples(const fs::path& dir) {
  std::map<std::int64_t, std::map<std::int64_t, int>> counts;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::ifstream in(entry.path());
    std::int64_t epoch = 0, index = 0;
    while (in >> epoch >> index) ++counts[epoch][index];
  }
  return counts;
}
}  // namespace

// Two ranks train 3 steps of 16 each (samples 0-95 of epoch 0's order), one process goes on for
// 2 steps (96-127), then two ranks finish the epoch (128-199: 36 each) and train the next one.
TEST_CASE("a checkpoint resumed with another number of processes trains the rest of its epoch, each sample once") {
  if (driver.empty() || launcher.empty()) return;
  const fs::path dir = fresh_directory("elastic");
  fs::create_directories(dir / "trained");
  const std::vector<std::string> common{"--ckpt-dir", (dir / "ckpt").string(), "--trained-to", (dir / "trained").string()};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    return extra;
  };
  const ProcessResult two = train(2, 16, with({"--max-steps", "3"}));
  INFO(two.output);
  REQUIRE(two.exit_code == 0);
  const ProcessResult one = train(1, 16, with({"--max-steps", "5", "--resume", "auto"}));
  INFO(one.output);
  REQUIRE(one.exit_code == 0);
  CHECK(one.output.find("the checkpoint was trained by 2 processes of batch 16, and 1 process of batch 16 train now: "
                        "epoch 0 goes on from sample 96 of its order, each of the rest once; a step averages 16 "
                        "samples instead of 32") != std::string::npos);
  const ProcessResult again = train(2, 16, with({"--resume", "auto"}));
  INFO(again.output);
  REQUIRE(again.exit_code == 0);
  CHECK(again.output.find("the checkpoint was trained by 1 process of batch 16, and 2 processes of batch 16 train "
                          "now: epoch 0 goes on from sample 128 of its order") != std::string::npos);
  // 5 steps, then the rest of epoch 0 in 3 (36 samples per rank: 16, 16, 4), then epoch 1 in 7.
  CHECK(lines_starting(again.output, "global_step=") == std::vector<std::string>{"global_step=15", "global_step=15"});
  // The ranks start alike (DataParallel compares their states) but for their random streams:
  // the one-process checkpoint had none for rank 1, which is seeded from rank 0's and its rank
  // instead of drawing rank 0's numbers (the driver seeds every rank alike).
  const auto digests = lines_starting(again.output, "state_digest=");
  REQUIRE(digests.size() == 2);
  CHECK(digests[0] != digests[1]);

  const auto counts = trained_samples(dir / "trained");
  REQUIRE(counts.size() == 2);
  for (const auto& entry : counts) {  // (no structured binding: clang 14 cannot capture one)
    const std::int64_t epoch = entry.first;
    CAPTURE(epoch);
    CHECK(entry.second.size() == 200);
    std::int64_t once = 0;
    for (const auto& sample : entry.second) once += sample.second == 1 ? 1 : 0;
    CHECK(once == 200);
  }
  // The lineage records both resizes (keel-ckpt info prints it).
  const auto info = keel_test::run({KEEL_CKPT_TOOL, "info", (dir / "ckpt" / "last.ckpt").string()});
  INFO(info.output);
  CHECK(info.output.find("strategy.world_size: 2 -> (absent)") != std::string::npos);
  CHECK(info.output.find("strategy.world_size: (absent) -> 2") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("SIGTERM to keel-run stops both ranks after one checkpoint, and the resume is exact") {
  if (driver.empty() || launcher.empty()) return;
  const fs::path dir = fresh_directory("sigterm");
  const std::vector<std::string> saving{"--ckpt-dir", (dir / "ckpt").string(), "--save-every-steps", "2",
                                        "--pause-ms", "60"};  // (14 steps of at least 60 ms: time to signal)
  std::vector<std::string> argv{launcher, "--nproc-per-node", "2", "--master-port", std::to_string(free_port()),
                                driver, "--variant", "ddp_sgd", "--epochs", "2", "--dataset-size", "200",
                                "--batch-size", "16"};
  argv.insert(argv.end(), saving.begin(), saving.end());
  Process job(argv);
  // Once the first checkpoint is there, training is under way on both ranks.
  for (int i = 0; i < 600 && !fs::exists(dir / "ckpt" / "step-000000002.ckpt"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  job.kill(SIGTERM);
  const ProcessResult stopped = job.wait(std::chrono::seconds(120));
  INFO(stopped.output);
  CHECK(stopped.exit_code == 143);
  // Both ranks stopped at the same step, after the one checkpoint rank 0 wrote there.
  const auto lines = lines_starting(stopped.output, "keel: stopped by SIGTERM after saving ");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == lines[1]);
  CHECK(keel_test::value_of(stopped.output, "state_digest") == std::nullopt);
  check_exact_resume(saving);
  fs::remove_all(dir);
}

TEST_CASE("ranks that would train differently are refused before the first step, naming the difference") {
  if (driver.empty()) return;
  const int port = free_port();
  auto rank = [&](int r, const std::string& batch) {
    return std::vector<std::string>{"/usr/bin/env", "RANK=" + std::to_string(r), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                                    "MASTER_PORT=" + std::to_string(port), driver, "--variant", "ddp_sgd",
                                    "--epochs", "1", "--batch-size", batch};
  };
  Process first(rank(0, "16"));
  Process second(rank(1, "8"));
  const ProcessResult a = first.wait(std::chrono::seconds(120));
  const ProcessResult b = second.wait(std::chrono::seconds(120));
  INFO(a.output);
  INFO(b.output);
  CHECK(a.exit_code == 1);
  CHECK(b.exit_code == 1);
  for (const auto* output : {&a.output, &b.output})
    CHECK(output->find("the ranks do not start alike; against rank 0:\n  rank 1: data.batch_size=8 (rank 0: "
                       "data.batch_size=16)") != std::string::npos);
}

namespace {
/// The Fashion-MNIST example as a job of two ranks under keel-run: the CNN (BatchNorm, Dropout),
/// 60 steps of 32 samples per rank, a checkpoint every 10 steps, a 10-second timeout for a
/// missing rank.
std::vector<std::string> example_job(const fs::path& dir, bool async_save = false) {
  std::vector<std::string> job{launcher, "--nproc-per-node", "2", "--master-port", std::to_string(free_port()), example,
          "--strategy", "ddp", "--model", "cnn", "--batch-size", "32", "--max-steps", "60", "--epochs", "1",
          "--save-every-steps", "10", "--log-every", "10", "--validation-size", "1000", "--threads", "1",
          "--dist-timeout", "10", "--progress", "plain", "--ckpt-dir", (dir / "ckpt").string(),
          "--log-dir", (dir / "logs").string()};
  if (async_save) job.push_back("--async-save");
  return job;
}

/// A process's parent pid and state letter, from /proc/<pid>/stat (state '?' when it is gone).
std::pair<pid_t, char> parent_and_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line) || line.rfind(')') == std::string::npos) return {-1, '?'};
  std::istringstream rest(line.substr(line.rfind(')') + 1));  // (after the command name, which may hold spaces)
  char state = '?';
  pid_t parent = -1;
  rest >> state >> parent;
  return {parent, state};
}

/// The pid of the child of `parent` that runs as rank `rank` (its environment says RANK=rank), or -1.
pid_t child_of_rank(pid_t parent, int rank) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = std::stoi(name);
    if (parent_and_state(pid).first != parent) continue;
    std::ifstream environ(entry.path() / "environ", std::ios::binary);
    for (std::string variable; std::getline(environ, variable, '\0');)
      if (variable == "RANK=" + std::to_string(rank)) return pid;
  }
  return -1;
}

/// Runs `job` until its newest checkpoint is at `step` or later, then sends SIGKILL to the
/// process `victim` names (keel-run's pid given). Returns the job's end.
template <class Victim>
ProcessResult kill_at_step(const std::vector<std::string>& job, const fs::path& ckpt, std::int64_t step,
                           const Victim& victim) {
  Process process(job);
  while (!process.pump(std::chrono::milliseconds(5))) {
    const auto files = keel::ckpt::list_checkpoints(ckpt);
    if (!files.empty() && files.front().global_step >= step) {
      const pid_t target = victim(process.pid());
      REQUIRE(target > 0);
      ::kill(target, SIGKILL);
      break;
    }
  }
  return process.wait(std::chrono::seconds(120));
}
}  // namespace

TEST_CASE("the example trains as two ranks under keel-run, and a SIGKILL to a rank or to keel-run resumes exactly") {
  if (launcher.empty()) return;
  REQUIRE_MESSAGE(!example.empty(), "the example was not built (KEEL_BUILD_EXAMPLES=OFF)");
  const fs::path straight_dir = fresh_directory("example-straight");
  const ProcessResult straight = keel_test::run(example_job(straight_dir), std::chrono::seconds(600));
  INFO(straight.output);
  REQUIRE(straight.exit_code == 0);
  // Rank 0 reports and logs for the job: one result, one progress line per 10 steps, one log.
  CHECK(lines_starting(straight.output, "test_accuracy=").size() == 1);
  REQUIRE(lines_starting(straight.output, "state_digest=").size() == 1);
  CHECK(lines_starting(straight.output, "epoch 1/1 | step 10/60").size() == 1);
  std::ifstream csv(straight_dir / "logs" / "metrics.csv");
  std::vector<std::string> steps;
  for (std::string line; std::getline(csv, line);)
    if (line.find(",train,") != std::string::npos) steps.push_back(line.substr(0, line.find(',')));
  CHECK(steps == std::vector<std::string>{"10", "20", "30", "40", "50", "60"});
  const auto info = keel_test::run({KEEL_CKPT_TOOL, "info", (straight_dir / "ckpt" / "last.ckpt").string()});
  CHECK(info.output.find("strategy:          keel::DataParallel, 2 processes") != std::string::npos);
  // Each rank's random streams (the example seeds each rank differently: its own Dropout masks).
  CHECK(info.output.find("\n  rng.ranks ") != std::string::npos);

  // At a random moment: a SIGKILL to one rank (either), then one to keel-run itself. These runs
  // save in the background (--async-save): a kill may land while rank 0 writes.
  std::mt19937 random(std::random_device{}());
  const int victim = static_cast<int>(random() % 2);
  const std::int64_t first_step = 10 + static_cast<std::int64_t>(random() % 20);
  const std::int64_t second_step = first_step + 10 + static_cast<std::int64_t>(random() % (41 - first_step));  // (<= 50)
  CAPTURE(victim);
  CAPTURE(first_step);
  CAPTURE(second_step);
  const fs::path dir = fresh_directory("example-killed");
  const auto started = std::chrono::steady_clock::now();
  const ProcessResult rank_killed = kill_at_step(example_job(dir, true), dir / "ckpt", first_step,
                                                 [&](pid_t run) { return child_of_rank(run, victim); });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  INFO(rank_killed.output);
  // keel-run ends with the killed rank's status; the survivor names it, within its timeout
  // (10 s, and as long for the roll call) and keel-run's --stop-timeout (30 s).
  CHECK(rank_killed.exit_code == 128 + SIGKILL);
  CHECK(rank_killed.output.find("rank " + std::to_string(victim) + " is gone or not answering") != std::string::npos);
  CHECK(took < 120.0);
  std::vector<pid_t> ranks;
  const ProcessResult launcher_killed = kill_at_step(example_job(dir, true), dir / "ckpt", second_step, [&](pid_t run) {
    ranks = {child_of_rank(run, 0), child_of_rank(run, 1)};
    return run;
  });
  CHECK(launcher_killed.signal == SIGKILL);
  // The kernel kills the ranks of a killed keel-run (PR_SET_PDEATHSIG); the restart waits for
  // them to be gone (rank 0 holds the checkpoint directory's lock until then).
  for (const pid_t rank : ranks)
    for (int i = 0; i < 200 && rank > 0 && std::string("?XZ").find(parent_and_state(rank).second) == std::string::npos;
         ++i)  // (until gone, dead or a zombie)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const ProcessResult resumed = keel_test::run(example_job(dir, true), std::chrono::seconds(600));
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(lines_starting(resumed.output, "state_digest=") == lines_starting(straight.output, "state_digest="));
  fs::remove_all(straight_dir);
  fs::remove_all(dir);
}

namespace {
/// The example's MLP without Dropout, SGD with momentum, 20 steps: `ranks` ranks (under
/// keel-run when more than one) of `batch` samples each. Returns the final parameters, in the
/// model's order.
/// `before`: what starts it when it runs alone (an environment, say); `extra`: more flags.
std::vector<torch::Tensor> example_mlp_parameters(const fs::path& dir, int ranks, int batch,
                                                  std::vector<std::string> before = {},
                                                  const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = std::move(before);
  if (ranks > 1)
    argv = {launcher, "--nproc-per-node", std::to_string(ranks), "--master-port", std::to_string(free_port())};
  std::vector<std::string> command = {
      example, "--model", "mlp", "--dropout", "0", "--optimizer", "sgd", "--lr", "0.05", "--batch-size",
      std::to_string(batch), "--max-steps", "20", "--epochs", "1", "--validation-size", "1000", "--threads", "1",
      "--progress", "off", "--ckpt-dir", (dir / "ckpt").string(), "--log-dir", (dir / "logs").string()};
  command.insert(command.end(), extra.begin(), extra.end());
  argv.insert(argv.end(), command.begin(), command.end());
  const ProcessResult result = keel_test::run(argv, std::chrono::seconds(300));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  std::vector<torch::Tensor> parameters;
  for (const auto& p : keel_test::saved_state(dir / "ckpt" / "last.ckpt").model.parameters) parameters.push_back(p.tensor);
  return parameters;
}

}  // namespace

// The example's model: its MLP with --dropout 0 (Dropout draws each rank's own masks; the CNN's
// BatchNorm normalizes by each rank's own batch, so neither is one process's computation).
TEST_CASE("the example's MLP as two ranks of batch 32 ends with the parameters of one process of batch 64; --strategy single trains alone in a job of two") {
  if (launcher.empty()) return;
  REQUIRE_MESSAGE(!example.empty(), "the example was not built (KEEL_BUILD_EXAMPLES=OFF)");
  const fs::path dir = fresh_directory("example-equivalence");
  const auto two = example_mlp_parameters(dir / "two", 2, 32);
  const auto one = example_mlp_parameters(dir / "one", 1, 64);
  const auto half = example_mlp_parameters(dir / "half", 1, 32);  // the control: other samples per step
  const double ranks_against_one = max_difference(two, one);
  MESSAGE("largest parameter difference, two ranks of 32 against one process of 64: ", ranks_against_one,
          "; against one process of 32: ", max_difference(two, half));
  CHECK(ranks_against_one < 1e-5);
  CHECK(max_difference(two, half) > 1e-3);

  // --strategy single: one process inside a batch script whose variables name two tasks (it
  // would wait for a rank 1 that never comes: --dist-timeout 5 fails it then) trains alone, as
  // the process of 64 above did.
  const auto alone = example_mlp_parameters(
      dir / "alone", 1, 64,
      {"/usr/bin/env", "SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_LOCALID=0", "SLURM_NTASKS_PER_NODE=2",
       "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(free_port())},
      {"--strategy", "single", "--dist-timeout", "5"});
  CHECK(max_difference(alone, one) == 0.0);
  // Its checkpoints are a process alone's: no strategy, no other ranks' streams (the Trainer
  // takes the place again after alone(); the SLURM variables said two).
  const auto manifest = keel::ckpt::read_container(dir / "alone" / "ckpt" / "last.ckpt").manifest;
  CHECK_FALSE(manifest.fingerprint.value("strategy").has_value());
  CHECK(manifest.find("rng.ranks") == nullptr);
  fs::remove_all(dir);
}

}  // namespace distributed_test
