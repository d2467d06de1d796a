// keel-run, the launcher of data-parallel jobs (tools/keel_run): the variables each rank gets,
// what happens when a rank fails, when the launcher gets a stop signal, and when it is killed.
// The ranks here are shell scripts: the launcher knows nothing of training.

#include "support/process.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sched.h>
#include <unistd.h>

namespace keel_run_test {

namespace fs = std::filesystem;
using keel_test::Process;
using keel_test::ProcessResult;
using keel_test::lines_starting;

namespace {

const std::string launcher = KEEL_RUN_TOOL;

ProcessResult launch(std::vector<std::string> args, std::chrono::seconds timeout = std::chrono::seconds(60)) {
  args.insert(args.begin(), launcher);
  return keel_test::run(args, timeout);
}

/// Whether process `pid` is gone (or only a zombie nobody has reaped yet: it runs no more).
bool ended(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

/// Whether process `pid` has ended within 10 s.
bool ends_soon(pid_t pid) {
  for (int i = 0; i < 200; ++i) {
    if (ended(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace

TEST_CASE("keel-run gives each rank torchrun's variables and passes the arguments on") {
  if (launcher.empty()) return;
  const std::string script =
      "echo \"rank=$RANK local=$LOCAL_RANK world=$WORLD_SIZE local_world=$LOCAL_WORLD_SIZE group=$GROUP_RANK "
      "addr=$MASTER_ADDR port=$MASTER_PORT args=$1,$2\"";
  {
    const auto result = launch({"--nproc-per-node", "3", "/bin/sh", "-c", script, "sh", "first", "two words"});
    CHECK(result.exit_code == 0);
    CHECK(lines_starting(result.output, "rank=") ==
          std::vector<std::string>{
              "rank=0 local=0 world=3 local_world=3 group=0 addr=127.0.0.1 port=29500 args=first,two words",
              "rank=1 local=1 world=3 local_world=3 group=0 addr=127.0.0.1 port=29500 args=first,two words",
              "rank=2 local=2 world=3 local_world=3 group=0 addr=127.0.0.1 port=29500 args=first,two words"});
  }
  {  // the second node of two: global ranks 2 and 3
    const auto result = launch({"--nproc-per-node=2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.1.2.3",
                                "--master-port", "23456", "--", "/bin/sh", "-c", script, "sh", "a", "b"});
    CHECK(result.exit_code == 0);
    CHECK(lines_starting(result.output, "rank=") ==
          std::vector<std::string>{"rank=2 local=0 world=4 local_world=2 group=1 addr=10.1.2.3 port=23456 args=a,b",
                                   "rank=3 local=1 world=4 local_world=2 group=1 addr=10.1.2.3 port=23456 args=a,b"});
  }
  {  // the cores this process may use are shared out, unless the user chose
    const auto result = keel_test::run({"/usr/bin/env", "-u", "OMP_NUM_THREADS", launcher, "--nproc-per-node", "2",
                                        "/bin/sh", "-c", "echo threads=$OMP_NUM_THREADS"});
    cpu_set_t cores;
    REQUIRE(::sched_getaffinity(0, sizeof cores, &cores) == 0);
    const int expected = std::max(1, CPU_COUNT(&cores) / 2);
    CHECK(lines_starting(result.output, "threads=") == std::vector<std::string>(2, "threads=" + std::to_string(expected)));
    CHECK(result.output.find("keel-run: OMP_NUM_THREADS=") != std::string::npos);
    const auto chosen = keel_test::run({"/usr/bin/env", "OMP_NUM_THREADS=7", launcher, "--nproc-per-node", "2",
                                        "/bin/sh", "-c", "echo threads=$OMP_NUM_THREADS"});
    CHECK(lines_starting(chosen.output, "threads=") == std::vector<std::string>(2, "threads=7"));
  }
}

TEST_CASE("keel-run refuses bad arguments with the value and what it expected") {
  if (launcher.empty()) return;
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"/bin/true"}, "--nproc-per-node is required"},
      {{"--nproc-per-node", "0", "/bin/true"}, "--nproc-per-node 0: expected a whole number from 1 to 4096"},
      {{"--nproc-per-node", "two", "/bin/true"}, "--nproc-per-node two: expected a whole number"},
      {{"--nproc-per-node", "2"}, "no PROGRAM to run"},
      {{"--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "/bin/true"},
       "--node-rank 2 with --nnodes 2: expected a node rank from 0 to 1"},
      {{"--nproc-per-node", "2", "--nnodes", "2", "/bin/true"}, "--master-addr is required with --nnodes 2"},
      {{"--nproc-per-node", "2", "--master-port", "70000", "/bin/true"}, "--master-port 70000: expected a whole number from 1 to 65535"},
      {{"--nproc-per-node", "2", "--nprocs", "2", "/bin/true"}, "unknown option --nprocs"},
      {{"--nproc-per-node"}, "--nproc-per-node needs a value"},
      {{"-n", "2", "/bin/true"}, "unknown option -n (options are spelled --name)"},
      {{"--nproc-per-node", "4096", "--nnodes", "1000", "--master-addr", "h", "/bin/true"},
       "--nnodes 1000 times --nproc-per-node 4096 is more than 1048576 ranks"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.message);
    const auto result = launch(c.args);
    CHECK(result.exit_code == 2);
    CHECK(result.output.find("keel-run: " + c.message) != std::string::npos);
    CHECK(result.output.find("usage: keel-run") != std::string::npos);
  }
  const auto missing = launch({"--nproc-per-node", "2", "/nonexistent/program"});
  CHECK(missing.exit_code == 127);
  // (one rank's message at least: the other may be stopped before it prints)
  CHECK(missing.output.find("keel-run: cannot start /nonexistent/program (rank ") != std::string::npos);
  CHECK(missing.output.find("): No such file or directory") != std::string::npos);
}

TEST_CASE("when a rank fails, keel-run stops the others and exits with that rank's status") {
  if (launcher.empty()) return;
  REQUIRE(fs::exists("/proc/self/stat"));  // (ended() reads /proc)
  // Rank 1 fails once the others have started a program of their own (as a script starting the
  // trainer does) and said its pid; they would run for a minute. The stop reaches that program.
  const fs::path started = fs::temp_directory_path() / ("keel-run-started-" + std::to_string(::getpid()));
  fs::remove_all(started);
  fs::create_directories(started);
  const std::string script =
      "if [ \"$RANK\" = 1 ]; then while [ $(ls \"$1\" | wc -l) -lt 2 ]; do sleep 0.05; done; exit 3; fi; "
      "sleep 60 & echo \"program=$!\"; touch \"$1/$RANK\"; wait";
  const auto result = launch({"--nproc-per-node", "3", "/bin/sh", "-c", script, "sh", started.string()},
                             std::chrono::seconds(40));
  fs::remove_all(started);
  CHECK(result.exit_code == 3);
  CHECK(result.output.find("keel-run: rank 1 (pid ") != std::string::npos);
  CHECK(result.output.find("exited with status 3; stopping the other ranks") != std::string::npos);
  const auto programs = lines_starting(result.output, "program=");
  REQUIRE(programs.size() == 2);
  for (const auto& line : programs) {
    const pid_t pid = std::stoi(line.substr(8));
    CAPTURE(pid);
    CHECK(ends_soon(pid));
  }

  // A rank that ignores SIGTERM is killed once the stop timeout has passed. (Rank 0 fails only
  // once rank 1 ignores SIGTERM: rank 1 says so with a file.)
  const fs::path ignoring = fs::temp_directory_path() / ("keel-run-ignoring-" + std::to_string(::getpid()));
  fs::remove(ignoring);
  const std::string stubborn =
      "trap '' TERM; if [ \"$RANK\" = 0 ]; then while [ ! -e \"$1\" ]; do sleep 0.05; done; exit 5; fi; "
      "touch \"$1\"; while :; do sleep 0.1; done";
  const auto killed = launch({"--nproc-per-node", "2", "--stop-timeout", "1", "/bin/sh", "-c", stubborn, "sh",
                              ignoring.string()},
                             std::chrono::seconds(40));
  fs::remove(ignoring);
  CHECK(killed.exit_code == 5);
  CHECK(killed.output.find("keel-run: 1 rank(s) still running 1 s after the stop began; killing them") != std::string::npos);

  // A rank ended by a signal: 128 + the signal, as a shell reports it.
  const auto signalled = launch({"--nproc-per-node", "2", "/bin/sh", "-c",
                                 "if [ \"$RANK\" = 1 ]; then kill -KILL $$; fi; exec sleep 60"},
                                std::chrono::seconds(40));
  CHECK(signalled.exit_code == 128 + SIGKILL);
  CHECK(signalled.output.find("was killed by signal 9") != std::string::npos);
}

TEST_CASE("keel-run passes a stop signal on to every rank, once") {
  if (launcher.empty()) return;
  // Each rank counts the SIGTERMs it gets: one, then it exits 143 as keel's stop does.
  const std::string script =
      "n=0; trap 'n=$((n+1))' TERM; echo ready$RANK; while [ $n = 0 ]; do sleep 0.05; done; sleep 0.5; "
      "echo \"rank$RANK got $n\"; exit 143";
  Process run({launcher, "--nproc-per-node", "2", "/bin/sh", "-c", script});
  REQUIRE(run.pump_until("ready0", std::chrono::seconds(30)));
  REQUIRE(run.pump_until("ready1", std::chrono::seconds(30)));
  run.kill(SIGTERM);
  const auto result = run.wait(std::chrono::seconds(30));
  CHECK(result.exit_code == 143);
  CHECK(lines_starting(result.output, "rank") == std::vector<std::string>{"rank0 got 1", "rank1 got 1"});
  CHECK(result.output.find("stopping the other ranks") == std::string::npos);  // nothing failed

  // A rank that ignores the stop: once another has stopped, it has --stop-timeout seconds.
  const std::string stuck =
      "if [ \"$RANK\" = 1 ]; then trap '' TERM; fi; echo ready$RANK; while :; do sleep 0.05; done";
  Process stop({launcher, "--nproc-per-node", "2", "--stop-timeout", "1", "/bin/sh", "-c", stuck});
  REQUIRE(stop.pump_until("ready0", std::chrono::seconds(30)));
  REQUIRE(stop.pump_until("ready1", std::chrono::seconds(30)));
  stop.kill(SIGTERM);
  const auto stopped = stop.wait(std::chrono::seconds(30));
  CHECK(stopped.exit_code == 128 + SIGTERM);  // rank 0's, the first to end
  CHECK(stopped.output.find("keel-run: 1 rank(s) still running 1 s after the stop began; killing them") !=
        std::string::npos);
}

TEST_CASE("no rank outlives a killed keel-run") {
  if (launcher.empty()) return;
  REQUIRE(fs::exists("/proc/self/stat"));  // (ended() reads /proc)
  Process run({launcher, "--nproc-per-node", "2", "/bin/sh", "-c", "echo pid=$$; exec sleep 60"});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (lines_starting(run.output(), "pid=").size() < 2 && std::chrono::steady_clock::now() < deadline)
    run.pump(std::chrono::milliseconds(50));
  std::set<pid_t> ranks;
  for (const auto& line : lines_starting(run.output(), "pid=")) ranks.insert(std::stoi(line.substr(4)));
  REQUIRE(ranks.size() == 2);
  run.kill(SIGKILL);
  run.wait(std::chrono::seconds(30));
  for (const pid_t pid : ranks) {
    CAPTURE(pid);
    CHECK(ends_soon(pid));  // the kernel kills them as the launcher exits
  }
}

}  // namespace keel_run_test
