// Faults injected into the Fashion-MNIST example, a real program: SIGKILL at random moments and
// inside checkpoint writes, the preemption signals, a second signal during the save, and a disk
// that refuses the write. Each ends in a run that must reach the uninterrupted state_digest.
// With KEEL_FAULT_REPORT set, each test records what it injected (scripts/fault-table.sh).
#include "support/fault_report.hpp"
#include "support/process.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace fault_test {

using keel_test::Process;
using keel_test::run;
using keel_test::value_of;
using namespace std::chrono_literals;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-fault-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string example_path() {
  const std::string example = KEEL_FASHION_MNIST_EXAMPLE;
  REQUIRE_MESSAGE(!example.empty(), "the example was not built (KEEL_BUILD_EXAMPLES=OFF)");
  REQUIRE_MESSAGE(fs::exists(fs::path(KEEL_FASHION_MNIST_DATA) / "train-images-idx3-ubyte.gz"),
                  "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist");
  return example;
}

/// The example's command line; `extra` comes last and overrides.
std::vector<std::string> example_args(const fs::path& dir, std::vector<std::string> extra) {
  std::vector<std::string> argv = {example_path(), "--model",    "mlp",  "--threads", "2",
                                   "--ckpt-dir",   dir.string(), "--log-dir", (dir / "logs").string(),
                                   "--progress",   "plain",      "--log-every", "5", "--resume", "auto"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

/// Runs to completion; returns the digest (the run must succeed).
std::string digest_of_run(const std::vector<std::string>& argv) {
  const auto result = run(argv);
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto digest = value_of(result.output, "state_digest");
  REQUIRE(digest);
  return *digest;
}

/// A temporary file of a checkpoint being written (`.step-....ckpt.tmp.<pid>`) is in `dir`.
bool write_in_progress(const fs::path& dir) {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".step-", 0) == 0 && name.find(".tmp.") != std::string::npos) return true;
  }
  return false;
}

/// last.ckpt, when present, opens a complete checkpoint that verifies.
void check_last_verifies(const fs::path& dir) {
  if (!fs::exists(dir / "last.ckpt")) return;
  CHECK_NOTHROW(keel::ckpt::read_container(dir / "last.ckpt"));
}

// A 2048-unit MLP saved after every step: each checkpoint is ~20 MB, so writes last long enough
// for kills to land inside them.
const std::vector<std::string> big_model = {"--mlp-hidden", "2048", "--max-steps", "60", "--save-every-steps", "1"};

/// `flags` with --async-save added.
std::vector<std::string> with_async(std::vector<std::string> flags) {
  flags.push_back("--async-save");
  return flags;
}

TEST_CASE("fault: SIGKILL at 24 random moments, half of them inside a checkpoint write, resumes to the same digest") {
  // Every other life writes its checkpoints in the background (--async-save): kills land in
  // those writes too, while training goes on, and the files are the same either way.
  const auto reference = digest_of_run(example_args(fresh_directory("kill-reference"), big_model));

  const auto dir = fresh_directory("kill");
  const unsigned seed = std::random_device{}();
  CAPTURE(seed);  // reproduces the kill moments
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> anywhere_ms(50, 4000);  // start-up, a step, or a write
  std::uniform_int_distribution<int> into_write_us(0, 20000);
  int kills = 0, inside_writes = 0, inside_async_writes = 0, finished = 0;
  for (int life = 0; kills < 24 && life < 200; ++life) {
    const bool async = (life / 2) % 2 == 1;  // two lives each way: aimed kills land in both kinds of write
    Process process(example_args(dir, async ? with_async(big_model) : big_model));
    bool ended = false;
    if (kills % 2 == 0) {
      ended = process.pump(std::chrono::milliseconds(anywhere_ms(rng)));
    } else {
      // Wait for a write to begin, then kill somewhere in the first 20 ms of it.
      while (!(ended = process.pump(1ms)) && !write_in_progress(dir)) {
      }
      if (!ended) std::this_thread::sleep_for(std::chrono::microseconds(into_write_us(rng)));
    }
    if (!ended) process.kill(SIGKILL);
    const auto result = process.wait();
    // The run finished before its kill (or in the moment between the last look and the kill):
    // it must be exact; start the chain over.
    if (result.signal != SIGKILL) {
      INFO(result.output);
      REQUIRE(result.exit_code == 0);
      CHECK(value_of(result.output, "state_digest") == reference);
      ++finished;
      fs::remove_all(dir);
      fs::create_directories(dir);
      continue;
    }
    ++kills;
    if (write_in_progress(dir)) {  // its temporary file outlived it
      ++inside_writes;
      inside_async_writes += async;
    }
    check_last_verifies(dir);
  }
  REQUIRE(kills == 24);
  MESSAGE(kills << " kills, " << inside_writes << " inside a checkpoint write (" << inside_async_writes
                << " of them in the background), " << finished << " chains finished");
  CHECK(inside_writes >= 6);
  CHECK(inside_async_writes >= 1);
  CHECK(digest_of_run(example_args(dir, big_model)) == reference);
  CHECK_FALSE(write_in_progress(dir));  // the resumed run removed what the killed writers left
  keel_test::report_fault("SIGKILL at a random moment (start-up, step, write)", kills - inside_writes,
                          "last.ckpt verifies after every kill; final state_digest equal to the uninterrupted run");
  keel_test::report_fault("SIGKILL inside a checkpoint write (temporary file left behind)", inside_writes - inside_async_writes,
                          "previous checkpoint intact, temporary removed on resume; final state_digest equal");
  keel_test::report_fault("SIGKILL inside a background checkpoint write (--async-save)", inside_async_writes,
                          "previous checkpoint and last.ckpt intact, temporary removed on resume; final state_digest equal");
}

TEST_CASE("fault: SIGTERM, SIGINT and SIGUSR1 stop after the step with a checkpoint, exit 128+signal, and resume exactly") {
  // Checkpoints only at the epoch end and the end, so each one in between is the signal's.
  const std::vector<std::string> flags = {"--max-steps", "1200", "--epochs", "2", "--save-every-steps", "0"};
  const auto reference = digest_of_run(example_args(fresh_directory("signal-reference"), flags));

  const auto dir = fresh_directory("signal");
  std::mt19937 rng(std::random_device{}());
  // (A life trains up to about 600 steps a second on a fast host: the delay stays well below
  // the 1200 steps' time, so that most lives are stopped inside training.)
  std::uniform_int_distribution<int> delay_ms(0, 300);
  std::int64_t previous_step = -1;
  int stops = 0, life = 0;
  for (int signal : {SIGTERM, SIGINT, SIGUSR1, SIGTERM, SIGINT, SIGUSR1}) {
    CAPTURE(signal);
    const bool async = life++ >= 3;  // the second round saves in the background: the stop waits for it
    CAPTURE(async);
    Process process(example_args(dir, async ? with_async(flags) : flags));
    REQUIRE(process.pump_until("| step ", 60s));  // training has started: the handler is installed
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    process.kill(signal);
    const auto result = process.wait();
    INFO(result.output);
    if (result.exit_code == 0) break;  // it finished first; the digest check below still applies
    // Killed by the signal's default action: fit had returned and given the default actions
    // back (the example was evaluating its test set). Only so if training was complete.
    if (result.exit_code == -1 &&
        keel::ckpt::read_container(dir / "last.ckpt").manifest.fact("global_step") == "1200")
      break;
    REQUIRE(result.exit_code == 128 + signal);
    CHECK(result.output.find("keel: stopped by " + keel::Interrupted::signal_name(signal)) != std::string::npos);
    const auto last = keel::ckpt::read_container(dir / "last.ckpt");  // written by the stop, whole
    const std::int64_t step = std::stoll(last.manifest.fact("global_step"));
    CHECK(step > previous_step);
    CHECK(last.manifest.fact("batch_in_epoch") != "");
    previous_step = step;
    ++stops;
  }
  CHECK(stops >= 4);
  CHECK(digest_of_run(example_args(dir, flags)) == reference);
  keel_test::report_fault("SIGTERM / SIGINT / SIGUSR1 at a random moment of training", stops,
                          "step finished, checkpoint written, exit 128+signal; final state_digest equal");
}

TEST_CASE("fault: a second signal during the stop's checkpoint write is ignored and corrupts nothing") {
  const std::vector<std::string> flags = {"--mlp-hidden", "2048", "--max-steps", "80", "--save-every-steps", "0"};
  const auto reference = digest_of_run(example_args(fresh_directory("double-reference"), flags));
  const auto dir = fresh_directory("double");
  int hits = 0;
  for (int attempt = 0; attempt < 10 && hits < 3; ++attempt) {
    Process process(example_args(dir, flags));
    if (!process.pump_until("| step ", 60s)) break;  // finished: nothing left to interrupt
    process.kill(SIGTERM);
    bool ended = false;
    while (!(ended = process.pump(std::chrono::milliseconds(1))) && !write_in_progress(dir)) {
    }
    if (!ended) process.kill(SIGINT);  // lands while the stop's checkpoint is being written
    const auto result = process.wait();
    INFO(result.output);
    if (result.exit_code == 0) break;
    REQUIRE(result.exit_code == 128 + SIGTERM);  // the first signal decides
    check_last_verifies(dir);
    if (!ended && result.output.find("extra signal is ignored") != std::string::npos) ++hits;
  }
  CHECK(hits >= 1);
  CHECK(digest_of_run(example_args(dir, flags)) == reference);
  keel_test::report_fault("second signal (SIGINT) during the stop's checkpoint write", hits,
                          "ignored; exit 143 for the first (SIGTERM), last.ckpt verifies; final state_digest equal");
}

TEST_CASE("fault: a disk that refuses the checkpoint write (RLIMIT_FSIZE) leaves the previous checkpoint, then retries") {
  const std::vector<std::string> flags = {"--max-steps", "300", "--save-every-steps", "50"};
  const auto reference = digest_of_run(example_args(fresh_directory("disk-reference"), flags));
  const auto dir = fresh_directory("disk");

  // A first life that saves step 50 and is killed.
  {
    Process process(example_args(dir, flags));
    while (!process.pump(std::chrono::milliseconds(2)) && !fs::is_symlink(dir / "last.ckpt")) {
    }
    process.kill(SIGKILL);
    process.wait();
  }
  const auto before = keel::ckpt::list_checkpoints(dir);
  REQUIRE(before.size() == 1);
  const std::string newest = fs::read_symlink(dir / "last.ckpt").string();

  // The same program with files limited to 100 kB (SIGXFSZ ignored, so write(2) fails with
  // EFBIG as on a full disk): by default the run stops with the path and the OS error.
  auto limited = [&](std::vector<std::string> extra) {
    std::string command = "trap '' XFSZ; ulimit -f 200; exec";
    for (const auto& a : example_args(dir, extra)) command += " '" + a + "'";
    return std::vector<std::string>{"/bin/sh", "-c", command};
  };
  const auto stopped = run(limited(flags));
  INFO(stopped.output);
  CHECK(stopped.exit_code == 4);
  CHECK(stopped.output.find("keel: cannot write '" + dir.string() + "/.step-") != std::string::npos);
  CHECK(stopped.output.find("File too large") != std::string::npos);
  CHECK(fs::read_symlink(dir / "last.ckpt").string() == newest);
  CHECK(keel::ckpt::list_checkpoints(dir).size() == 1);
  CHECK_FALSE(write_in_progress(dir));
  CHECK_NOTHROW(keel::ckpt::read_container(dir / "last.ckpt"));

  // With --continue-on-save-error it warns at every save and trains on.
  auto flags_continue = flags;
  flags_continue.push_back("--continue-on-save-error");
  const auto continued = run(limited(flags_continue));
  INFO(continued.output);
  CHECK(continued.exit_code == 0);
  CHECK(continued.output.find("not saved: keel: cannot write") != std::string::npos);
  CHECK(fs::read_symlink(dir / "last.ckpt").string() == newest);
  CHECK_FALSE(write_in_progress(dir));

  // The same with the writes in the background: the failure surfaces at the next save or the
  // end of fit, with the same message and the same outcome.
  const auto stopped_async = run(limited(with_async(flags)));
  INFO(stopped_async.output);
  CHECK(stopped_async.exit_code == 4);
  CHECK(stopped_async.output.find("keel: cannot write '" + dir.string() + "/.step-") != std::string::npos);
  CHECK(fs::read_symlink(dir / "last.ckpt").string() == newest);
  CHECK(keel::ckpt::list_checkpoints(dir).size() == 1);
  CHECK_FALSE(write_in_progress(dir));
  const auto continued_async = run(limited(with_async(flags_continue)));
  INFO(continued_async.output);
  CHECK(continued_async.exit_code == 0);
  CHECK(continued_async.output.find("not saved: keel: cannot write") != std::string::npos);
  CHECK(fs::read_symlink(dir / "last.ckpt").string() == newest);
  CHECK_FALSE(write_in_progress(dir));

  // Space again: the run resumes from the checkpoint that survived and ends exactly.
  CHECK(digest_of_run(example_args(dir, flags)) == reference);
  keel_test::report_fault("checkpoint write fails (file size limit, EFBIG: disk full), in the foreground and with --async-save", 4,
                          "exit 4 naming the path and 'File too large' (or warning and retry with "
                          "--continue-on-save-error); previous checkpoint and last.ckpt untouched, no temporary left");
}

}  // namespace fault_test

namespace fault_test {

/// The text of a file ("" when it is missing).
std::string contents_of(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every value of the example's optimizer and scheduler flags and every other training flag,
// in ten combinations: each trained uninterrupted, and killed (once a checkpoint past a random
// step exists; every other combination twice) and resumed, must reach the same digest and the
// same logs.
TEST_CASE("fault: every flag combination of the example, killed with SIGKILL and resumed, equals the uninterrupted run") {
  const std::vector<std::vector<std::string>> combinations = {
      {"--optimizer", "sgd", "--scheduler", "step", "--clip-norm", "1", "--no-decay-bias-norm"},
      {"--optimizer", "adam", "--scheduler", "multistep", "--precision", "bf16", "--ema", "0.99"},
      {"--optimizer", "adamw", "--scheduler", "exponential", "--validate-every-steps", "10", "--tensorboard", "TB"},
      {"--optimizer", "rmsprop", "--scheduler", "cosine", "--clip-value", "0.5", "--format", "json"},
      {"--optimizer", "adagrad", "--scheduler", "cosine-restarts", "--max-time", "3600"},
      {"--optimizer", "sgd", "--scheduler", "warmup-linear", "--momentum", "0.5", "--weight-decay", "0.01"},
      {"--optimizer", "adam", "--scheduler", "onecycle", "--precision", "bf16", "--format", "json", "--ema", "0.9",
       "--async-save"},
      {"--optimizer", "adamw", "--scheduler", "plateau", "--validate-every-steps", "5", "--lr", "0.01", "--async-save"},
      {"--optimizer", "rmsprop", "--scheduler", "constant", "--lr", "1e-4", "--tensorboard", "TB", "--no-decay-bias-norm"},
      {"--optimizer", "adagrad", "--scheduler", "warmup-cosine", "--clip-norm", "0.5", "--precision", "bf16"},
  };
  const unsigned seed = std::random_device{}();
  CAPTURE(seed);  // reproduces the kill points
  std::mt19937 rng(seed);
  for (std::size_t c = 0; c < combinations.size(); ++c) {
    const auto& flags = combinations[c];
    std::string line;
    for (const auto& flag : flags) line += flag + " ";
    CAPTURE(line);
    const bool json = std::find(flags.begin(), flags.end(), "json") != flags.end();
    // Each run's --tensorboard directory lies inside its own checkpoint directory.
    auto args = [&](const fs::path& dir) {
      std::vector<std::string> extra = {"--max-steps", "60", "--save-every-steps", "4", "--validation-size", "1000"};
      for (const auto& flag : flags) extra.push_back(flag == "TB" ? (dir / "tb").string() : flag);
      return example_args(dir, extra);
    };
    // keel::WallTimeLimit saves a measured time, so with --max-time two runs' digests differ
    // (README.md says so); the step reached and the logs must still match.
    const bool timed = std::find(flags.begin(), flags.end(), "--max-time") != flags.end();
    auto finish = [&](const fs::path& dir) {
      const auto result = run(args(dir));
      INFO(result.output);
      REQUIRE(result.exit_code == 0);
      CHECK(result.output.find("step 60 in") != std::string::npos);
      const auto digest = value_of(result.output, "state_digest");
      REQUIRE(digest);
      return timed ? std::string("(timed)") : *digest;
    };
    const auto reference_dir = fresh_directory("flags-reference-" + std::to_string(c));
    const auto reference = finish(reference_dir);

    const auto dir = fresh_directory("flags-" + std::to_string(c));
    const int kills = c % 2 == 0 ? 2 : 1;  // a resumed run killed again, in every other combination
    std::int64_t past = 0;
    for (int kill = 0; kill < kills; ++kill) {
      past = std::uniform_int_distribution<std::int64_t>(past + 4, past + 24)(rng);
      CAPTURE(past);
      Process process(args(dir));
      bool ended = false;
      while (!(ended = process.pump(5ms))) {
        const auto files = keel::ckpt::list_checkpoints(dir, json ? ".jckpt" : ".ckpt");
        if (!files.empty() && files.front().global_step >= past) break;
      }
      if (ended) {  // finished before the kill point (at most step 52 of 60, so rarely): rerun below
        INFO(process.wait().output);
        break;
      }
      process.kill(SIGKILL);
      REQUIRE(process.wait().signal == SIGKILL);
    }
    CHECK(finish(dir) == reference);
    // The logs hold every step once: the learning rates byte for byte, the metrics row for row
    // (their throughput column differs), the TensorBoard records byte count for byte count
    // (they differ only in their wall times).
    const std::string rates = contents_of(reference_dir / "logs/lr.csv");
    CHECK(std::count(rates.begin(), rates.end(), '\n') >= 2);
    CHECK(contents_of(dir / "logs/lr.csv") == rates);
    const std::string metrics = contents_of(reference_dir / "logs/metrics.csv");
    const std::string resumed = contents_of(dir / "logs/metrics.csv");
    CHECK(std::count(resumed.begin(), resumed.end(), '\n') == std::count(metrics.begin(), metrics.end(), '\n'));
    if (std::find(flags.begin(), flags.end(), "TB") != flags.end())
      CHECK(fs::file_size(dir / "tb" / "events.out.tfevents.keel") ==
            fs::file_size(reference_dir / "tb" / "events.out.tfevents.keel"));
    fs::remove_all(reference_dir);
    fs::remove_all(dir);
  }
}

}  // namespace fault_test
