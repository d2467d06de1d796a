// Exactness across a process boundary, the strongest test of the resume promise: N steps in one
// process against K steps, process exit (or SIGKILL), a fresh process that resumes, N-K more
// steps. The final states must match byte for byte: same digest, identical final checkpoint.
#include "support/process.hpp"
#include "support/saved_state.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>
#include <torch/version.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace fs = std::filesystem;

namespace process_test {

using keel_test::run;
using keel_test::saved_state;
using keel_test::value_of;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-proc-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<std::string> driver(const std::string& variant, const fs::path& dir, std::int64_t max_steps,
                                std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {KEEL_RESUME_DRIVER, "--variant",   variant,
                                   "--ckpt-dir",       dir.string(), "--max-steps",
                                   std::to_string(max_steps),       "--epochs", "10"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

/// Runs the driver to completion and returns its digest; the run must succeed.
std::string digest_of(const std::vector<std::string>& argv) {
  const auto result = run(argv);
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto digest = value_of(result.output, "state_digest");
  REQUIRE(digest);
  return *digest;
}

/// Uninterrupted N steps against K steps + exit + resume, for one variant and one K.
void check_split(const std::string& variant, std::int64_t n, std::int64_t k, std::vector<std::string> extra = {}) {
  CAPTURE(variant);
  CAPTURE(k);
  const auto whole_dir = fresh_directory(variant + "-whole-" + std::to_string(k));
  const auto split_dir = fresh_directory(variant + "-split-" + std::to_string(k));
  const std::string whole = digest_of(driver(variant, whole_dir, n, extra));
  const std::string first = digest_of(driver(variant, split_dir, k, extra));
  CHECK(first != whole);
  auto resume_args = extra;
  resume_args.insert(resume_args.end(), {"--resume", "auto"});
  const auto resumed = run(driver(variant, split_dir, n, resume_args));
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(resumed.output.find("keel: resumed from") != std::string::npos);
  CHECK(value_of(resumed.output, "state_digest") == whole);
  CHECK(file_bytes(split_dir / keel::ckpt::step_file_name(n)) == file_bytes(whole_dir / keel::ckpt::step_file_name(n)));
}

// 200 samples in batches of 16: 13 batches, so 13 optimizer steps per epoch.
TEST_CASE("exact resume across processes: SGD with momentum and StepDecay") {
  check_split("sgd_step", 30, 17);  // mid-epoch
  check_split("sgd_step", 30, 13);  // at the epoch boundary
}

TEST_CASE("exact resume across processes: Adam (AMSGrad), CosineWarmup, epoch metric accumulator") {
  check_split("adam_cosine", 30, 17);
  check_split("adam_cosine", 30, 13);
}

TEST_CASE("exact resume across processes: AdamW, CosineWarmup, early stopping, a callback's own engine") {
  check_split("adamw_cosine", 30, 17);
  check_split("adamw_cosine", 30, 13);
  check_split("adamw_cosine", 30, 9, {"--drop-last", "--batch-size", "24"});
}

TEST_CASE("exact resume across processes: a model with declared state beyond its parameters and buffers") {
  check_split("declared_model", 30, 17);
  check_split("declared_model", 30, 13);
  // The plain members travel in their own section.
  const auto dir = fresh_directory("declared-model-sections");
  digest_of(driver("declared_model", dir, 5, {"--save-every-steps", "5"}));
  const auto container = keel::ckpt::read_container(dir / keel::ckpt::step_file_name(5));
  REQUIRE(container.manifest.find("model.members") != nullptr);
  CHECK(container.manifest.find("model.members")->type == "keel_test::StatefulNetImpl");
}

/// The newest checkpoint of a directory (the end of a run that may have stopped early).
fs::path newest_checkpoint(const fs::path& dir) {
  const auto found = keel::ckpt::list_checkpoints(dir);
  REQUIRE(!found.empty());
  return found.front().path;
}

// Every optimizer, a scheduler of every family (per step, per epoch, on validation metrics,
// sequential, a function of the step), the stateful callbacks, bf16 autocast, clipping and
// validation every N steps: N steps in one process against K steps, exit, resume. Early
// stopping and plateau decisions after K happen at the same step: same digest, same final
// step, the same final checkpoint byte for byte.
TEST_CASE("exactness matrix: optimizers x scheduler families x stateful callbacks x bf16, resumed mid-epoch") {
  struct Entry {
    std::string variant;
    std::vector<std::string> flags;
    std::vector<std::int64_t> splits;  // K: mid-epoch (on a validation step where there is one) and an epoch end
  };
  // 13 steps per epoch (7 with --accumulate 2).
  const std::vector<Entry> matrix = {
      {"rmsprop_plateau", {"--precision", "bf16", "--validate-every-steps", "5"}, {15, 13}},
      {"adagrad_onecycle", {"--clip-norm", "0.5"}, {17, 13}},
      {"sgd_sequential", {"--clip-value", "0.05", "--precision", "bf16"}, {17, 13}},
      {"adam_multistep_epoch", {"--precision", "bf16", "--accumulate", "2"}, {17, 14}},
      {"adamw_lambda", {"--validate-every-steps", "4"}, {16, 13}},
      // EMA validated on, top-k retention by val_loss (keep 1 last + 2 best), dynamic loss scaling.
      // (The scale doubles every 4 steps: the resume falls between two growths. Overflows and
      // back-offs across a resume: test_loop_features.cpp.)
      {"sgd_ema", {"--loss-scale", "1024", "--keep-best", "2", "--validate-every-steps", "5"}, {15, 13}},
  };
  const std::int64_t n = 40;
  for (const auto& entry : matrix) {
    CAPTURE(entry.variant);
    const auto whole_dir = fresh_directory("matrix-whole-" + entry.variant);
    const auto whole = run(driver(entry.variant, whole_dir, n, entry.flags));
    INFO(whole.output);
    REQUIRE(whole.exit_code == 0);
    for (const std::int64_t k : entry.splits) {
      CAPTURE(k);
      const auto split_dir = fresh_directory("matrix-split-" + entry.variant + "-" + std::to_string(k));
      const auto first = run(driver(entry.variant, split_dir, k, entry.flags));
      REQUIRE(first.exit_code == 0);
      CHECK(value_of(first.output, "global_step") == std::to_string(k));  // no early stop before K
      auto resume_flags = entry.flags;
      resume_flags.insert(resume_flags.end(), {"--resume", "auto"});
      const auto resumed = run(driver(entry.variant, split_dir, n, resume_flags));
      INFO(resumed.output);
      REQUIRE(resumed.exit_code == 0);
      CHECK(resumed.output.find("keel: resumed from") != std::string::npos);
      CHECK(value_of(resumed.output, "global_step") == value_of(whole.output, "global_step"));
      CHECK(value_of(resumed.output, "state_digest") == value_of(whole.output, "state_digest"));
      CHECK(file_bytes(newest_checkpoint(split_dir)) == file_bytes(newest_checkpoint(whole_dir)));
      if (entry.variant == "rmsprop_plateau")  // a reduction decided after the resume point
        CHECK(std::stod(value_of(whole.output, "lr").value_or("0")) < std::stod(value_of(first.output, "lr").value_or("0")));
      if (entry.variant == "adam_multistep_epoch")  // a milestone after the resume point
        CHECK(std::stod(value_of(whole.output, "lr").value_or("0")) < std::stod(value_of(first.output, "lr").value_or("0")));
      if (entry.variant == "sgd_ema") {
        // Top-k retention: split at an epoch end (a checkpoint the whole run writes too), the
        // same files are kept, byte for byte; split elsewhere, the files both runs have are equal.
        std::map<std::string, std::string> kept_whole, kept_split;
        for (const auto& f : keel::ckpt::list_checkpoints(whole_dir)) kept_whole[f.path.filename().string()] = file_bytes(f.path);
        for (const auto& f : keel::ckpt::list_checkpoints(split_dir)) kept_split[f.path.filename().string()] = file_bytes(f.path);
        CHECK(kept_whole.size() >= 2);  // the last and the two best (the last may be one of them)
        if (k % 13 == 0) CHECK(kept_split == kept_whole);
        std::size_t shared = 0;
        for (const auto& kept : kept_split)  // (not a structured binding: CHECK_MESSAGE captures)
          if (kept_whole.count(kept.first)) {
            ++shared;
            CHECK_MESSAGE(kept_whole[kept.first] == kept.second, kept.first);
          }
        CHECK(shared >= 1);  // the last
        CHECK(std::stod(value_of(whole.output, "loss_scale").value_or("0")) == 1024.0 * 1024.0);  // 10 growths
      }
    }
    MESSAGE(entry.variant << ": ended at step " << value_of(whole.output, "global_step").value_or("?"));
    if (entry.variant == "adamw_lambda") {  // early stopping decided after the resume points
      CHECK(std::stoll(value_of(whole.output, "global_step").value_or("0")) > 17);
      CHECK(std::stoll(value_of(whole.output, "global_step").value_or("0")) < n);
    }
  }
}

TEST_CASE("a kill inside a gradient-accumulation window replays from the last optimizer step") {
  // accumulate 3 over 13 batches: windows of 3, 3, 3, 3, 1 micro-batches, 5 steps per epoch.
  const std::vector<std::string> accumulate = {"--accumulate", "3", "--save-every-steps", "2"};
  const auto whole_dir = fresh_directory("accum-whole");
  const auto kill_dir = fresh_directory("accum-kill");
  const std::string whole = digest_of(driver("adamw_cosine", whole_dir, 12, accumulate));

  auto killed_args = accumulate;
  killed_args.insert(killed_args.end(), {"--kill-at-batch", "8"});  // 2 steps done, 2 of 3 micro-batches in
  const auto killed = run(driver("adamw_cosine", kill_dir, 12, killed_args));
  INFO(killed.output);
  REQUIRE(killed.signal == SIGKILL);
  const auto at_kill = keel::ckpt::list_checkpoints(kill_dir);
  REQUIRE(!at_kill.empty());
  CHECK(at_kill.front().global_step == 2);

  auto resume_args = accumulate;
  resume_args.insert(resume_args.end(), {"--resume", "auto"});
  const auto resumed = run(driver("adamw_cosine", kill_dir, 12, resume_args));
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(value_of(resumed.output, "state_digest") == whole);
}

void check_same_tensors(const std::vector<keel::NamedTensor>& a, const std::vector<keel::NamedTensor>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].name);
    CHECK(a[i].name == b[i].name);
    CHECK(keel::bitwise_equal(a[i].tensor, b[i].tensor));
  }
}

// Floating-point results depend on the CPU's kernels, so a fixture written on another machine
// cannot be compared with a fresh run here; what holds on any machine is checked instead: the
// old file loads, the state it restores is exactly the file's, and continuing from it is exact.
// `name` tells the temporary directories apart.
struct Reloaded {
  fs::path saved_again;  ///< the checkpoint saved again at once after loading the fixture
  std::string output;    ///< what that run printed
};
Reloaded check_fixture_loads_and_continues(const fs::path& fixture, const std::string& name) {
  CAPTURE(fixture.string());
  REQUIRE(fs::exists(fixture));

  // Load it and save it again at once: every tensor and counter is the file's, bit for bit.
  const auto reloaded_dir = fresh_directory(name + "-reloaded");
  const auto reloaded = run(driver("adamw_cosine", reloaded_dir, 7,
                                   {"--resume", fixture.string(), "--save-to", (reloaded_dir / "again.ckpt").string()}));
  INFO(reloaded.output);
  REQUIRE(reloaded.exit_code == 0);
  CHECK(reloaded.output.find("resumed from") != std::string::npos);
  const auto old_state = saved_state(fixture);
  const auto new_state = saved_state(reloaded_dir / "again.ckpt");
  CHECK(new_state.loop.global_step == 7);
  CHECK(new_state.loop.epoch == old_state.loop.epoch);
  CHECK(new_state.loop.batch_in_epoch == old_state.loop.batch_in_epoch);
  CHECK(new_state.loop.data_seed == old_state.loop.data_seed);
  check_same_tensors(new_state.model.parameters, old_state.model.parameters);
  check_same_tensors(new_state.model.buffers, old_state.model.buffers);
  REQUIRE(new_state.optimizer.params.size() == old_state.optimizer.params.size());
  for (std::size_t i = 0; i < old_state.optimizer.params.size(); ++i) {
    const auto& a = new_state.optimizer.params[i];
    const auto& b = old_state.optimizer.params[i];
    CAPTURE(b.name);
    CHECK(a.name == b.name);
    CHECK(a.step == b.step);
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (std::size_t t = 0; t < a.tensors.size(); ++t) CHECK(keel::bitwise_equal(a.tensors[t].second, b.tensors[t].second));
  }
  CHECK(new_state.scheduler.step == old_state.scheduler.step);
  CHECK(new_state.scheduler.base_lrs == old_state.scheduler.base_lrs);
  CHECK(keel::bitwise_equal(new_state.rng.cpu, old_state.rng.cpu));

  // Continuing from it is exact: fixture -> 20 in one process equals fixture -> 13, exit, -> 20.
  const std::string whole =
      digest_of(driver("adamw_cosine", fresh_directory(name + "-whole"), 20, {"--resume", fixture.string()}));
  const auto split_dir = fresh_directory(name + "-split");
  digest_of(driver("adamw_cosine", split_dir, 13, {"--resume", fixture.string()}));
  CHECK(value_of(run(driver("adamw_cosine", split_dir, 20, {"--resume", "auto"})).output, "state_digest") == whole);
  return {reloaded_dir / "again.ckpt", reloaded.output};
}

TEST_CASE("checkpoints of earlier keel versions keep loading and continue exactly") {
  // tests/fixtures/checkpoints/README.md: written by keel 0.1.0 (LoopState version 1, callback
  // sections named by position).
  const fs::path fixture = fs::path(KEEL_FIXTURES) / "checkpoints" / "keel-0.1.0-adamw_cosine-step7.ckpt";
  const auto container = keel::ckpt::read_container(fixture);
  CHECK(container.library_version == "0.1.0");
  CHECK(container.manifest.find("callback.0") != nullptr);
  const auto again = keel::ckpt::read_container(check_fixture_loads_and_continues(fixture, "fixture-0.1.0").saved_again);
  // The callbacks' sections: the same bytes under their new names.
  for (const auto& renamed : std::vector<std::pair<std::string, std::string>>{
           {"callback.0", "callback.(anonymous namespace)::RandomProbe"},
           {"callback.1", "callback.(anonymous namespace)::EpochLossMean"},
           {"callback.2", "callback.keel::EarlyStopping"}}) {
    CAPTURE(renamed.second);  // (no structured binding: clang 14 cannot capture one)
    const auto* before = container.manifest.find(renamed.first);
    const auto* after = again.manifest.find(renamed.second);
    REQUIRE(before);
    REQUIRE(after);
    CHECK(container.section(*before) == again.section(*after));
  }
}

// The test suite runs against LibTorch 1.13 and 2.x (scripts/test.sh), so each LibTorch loads
// the file the other wrote; tests/cross_libtorch/run.sh checks the same with today's keel.
void check_libtorch_fixture(const std::string& torch_version) {
  const fs::path fixture = fs::path(KEEL_FIXTURES) / "checkpoints" /
                           ("keel-0.2.0-libtorch-" + torch_version + "-adamw_cosine-step7.ckpt");
  CAPTURE(fixture.string());
  const auto container = keel::ckpt::read_container(fixture);
  CHECK(container.manifest.fact("torch_version") == torch_version);
  const auto reloaded = check_fixture_loads_and_continues(fixture, "fixture-libtorch-" + torch_version);
  // On the other LibTorch the resume says it is no longer bitwise, naming both versions.
  const bool other = torch_version != TORCH_VERSION;
  CHECK((reloaded.output.find("torch_version '" + torch_version + "' (here '" TORCH_VERSION "')") != std::string::npos) == other);
}

TEST_CASE("a checkpoint written with LibTorch 1.13 loads and continues exactly") { check_libtorch_fixture("1.13.0"); }
TEST_CASE("a checkpoint written with LibTorch 2.6 loads and continues exactly") { check_libtorch_fixture("2.6.0"); }

TEST_CASE("a resume with another configuration is refused and names the difference") {
  const auto dir = fresh_directory("refuse");
  digest_of(driver("adamw_cosine", dir, 5));
  const auto refused = run(driver("adamw_cosine", dir, 10, {"--resume", "auto", "--seed", "8"}));
  CHECK(refused.exit_code == 3);
  CHECK(refused.output.find("configuration 'data.seed' is '7' in the checkpoint but '8' in this run") != std::string::npos);
  // ... and says how to go on: allow the change (a fork), or start a new run.
  CHECK(refused.output.find("allow_changes({\"data.seed\"})") != std::string::npos);
  CHECK(refused.output.find("--resume never") != std::string::npos);
  CHECK(keel::ckpt::list_checkpoints(dir).front().global_step == 5);  // nothing was overwritten
}

// Train longer: a finished 2-epoch run (13 steps per epoch, a 26-step schedule) extended to 4
// epochs (52 steps) from its last checkpoint, once per schedule extension.
std::vector<std::string> extension(const fs::path& dir, const fs::path& base, const std::string& mode,
                                   std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--epochs",         "4", "--total-steps", "52", "--resume", "auto",
                                   "--fork-from",      base.string(), "--allow-changes", "scheduler.*",
                                   "--extend",         mode, "--save-every-steps", "5"};
  args.insert(args.end(), extra.begin(), extra.end());
  return driver("adamw_cosine", dir, 0, args);
}

TEST_CASE("a finished run extended to more epochs, killed twice and resumed, equals the uninterrupted extension") {
  const auto base_dir = fresh_directory("extend-base");
  digest_of(driver("adamw_cosine", base_dir, 0, {"--epochs", "2", "--total-steps", "26"}));
  const auto base = base_dir / keel::ckpt::step_file_name(26);
  REQUIRE(fs::exists(base));
  std::set<std::string> digests;
  for (const std::string mode : {"rescale", "append_cosine", "append_constant(0.2)"}) {
    CAPTURE(mode);
    const auto whole_dir = fresh_directory("extend-whole");
    const auto killed_dir = fresh_directory("extend-killed");
    const auto whole = run(extension(whole_dir, base, mode));
    INFO(whole.output);
    REQUIRE(whole.exit_code == 0);
    CHECK(whole.output.find("schedule extension " + keel::ScheduleExtension::parse(mode).name() + ", 1 change") !=
          std::string::npos);
    CHECK(whole.output.find("scheduler.total_steps: 26 -> 52") != std::string::npos);
    digests.insert(value_of(whole.output, "state_digest").value_or(""));
    // Killed before the fork's first checkpoint (the restart forks again), then after some of
    // its checkpoints (the restart resumes the fork's own), then run to the end.
    for (const char* at : {"28", "45"}) {
      const auto killed = run(extension(killed_dir, base, mode, {"--kill-at-batch", at}));
      INFO(killed.output);
      REQUIRE(killed.signal == SIGKILL);
    }
    const auto resumed = run(extension(killed_dir, base, mode));
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(resumed.output.find("keel: resumed from " + killed_dir.string()) != std::string::npos);  // its own
    CHECK(resumed.output.find("forked from") == std::string::npos);
    CHECK(value_of(resumed.output, "state_digest") == value_of(whole.output, "state_digest"));
    CHECK(file_bytes(killed_dir / keel::ckpt::step_file_name(52)) == file_bytes(whole_dir / keel::ckpt::step_file_name(52)));
  }
  CHECK(digests.size() == 3);  // the three extensions train differently
}

TEST_CASE("keel-ckpt info shows the lineage of a run forked twice") {
  const auto dir = fresh_directory("lineage");
  digest_of(driver("adamw_cosine", dir, 0, {"--epochs", "2", "--total-steps", "26"}));
  digest_of(driver("adamw_cosine", dir, 0,
                   {"--epochs", "3", "--total-steps", "39", "--resume", "auto", "--allow-changes", "scheduler.*",
                    "--extend", "append_cosine(0.5)"}));
  digest_of(driver("adamw_cosine", dir, 0,
                   {"--epochs", "4", "--total-steps", "52", "--seed", "9", "--resume", "auto", "--allow-changes", "*"}));
  const auto info = run({KEEL_CKPT_TOOL, "info", (dir / keel::ckpt::step_file_name(52)).string()});
  INFO(info.output);
  REQUIRE(info.exit_code == 0);
  for (const auto& line : std::vector<std::string>
       {"  1. forked from '" + (dir / keel::ckpt::step_file_name(26)).string() +
            "' at step 26 (epoch 2), schedule extension append_cosine(0.5), 1 change\n"
            "     scheduler.total_steps: 26 -> 39\n",
        "  2. forked from '" + (dir / keel::ckpt::step_file_name(39)).string() +
            "' at step 39 (epoch 3), schedule extension rescale, 2 changes\n"}) {
    CHECK(info.output.find(line) != std::string::npos);
  }
  CHECK(info.output.find("     data.seed: 7 -> 9\n") != std::string::npos);
  CHECK(info.output.find("     scheduler.total_steps: 39 -> 52\n") != std::string::npos);
}

TEST_CASE("a resume with another thread count warns that it is no longer bitwise") {
  const auto dir = fresh_directory("threads");
  digest_of(driver("sgd_step", dir, 5, {"--threads", "1"}));
  const auto resumed = run(driver("sgd_step", dir, 8, {"--threads", "2", "--resume", "auto"}));
  CHECK(resumed.exit_code == 0);
  CHECK(resumed.output.find("written with 1 intra-op threads and this run uses 2") != std::string::npos);
}

TEST_CASE("the example's digest does not depend on the worker count, also across resumes") {
  const std::string example = KEEL_FASHION_MNIST_EXAMPLE;
  REQUIRE_MESSAGE(!example.empty(), "the example was not built (KEEL_BUILD_EXAMPLES=OFF)");
  auto args = [&](const fs::path& dir, int workers, int max_steps) {
    return std::vector<std::string>{example, "--model", "mlp", "--augment", "--max-steps", std::to_string(max_steps),
                                    "--epochs", "1", "--save-every-steps", "50", "--threads", "2",
                                    "--workers", std::to_string(workers), "--ckpt-dir", dir.string(),
                                    "--progress", "off", "--log-dir", (dir / "logs").string(), "--resume", "auto"};
  };
  std::optional<std::string> reference;
  for (int workers : {0, 1, 2, 4}) {
    CAPTURE(workers);
    const auto result = run(args(fresh_directory("workers-" + std::to_string(workers)), workers, 240));
    INFO(result.output);
    REQUIRE(result.exit_code == 0);
    const auto digest = value_of(result.output, "state_digest");
    REQUIRE(digest);
    if (!reference) reference = digest;
    CHECK(*digest == *reference);
  }
  // Killed once a checkpoint at step >= 100 exists (4 workers), resumed with none and killed
  // again past step 150, then finished with 2 workers.
  const auto dir = fresh_directory("workers-resume");
  auto kill_past = [&](int workers, std::int64_t step) {
    keel_test::Process process(args(dir, workers, 240));
    while (!process.pump(std::chrono::milliseconds(5))) {
      const auto files = keel::ckpt::list_checkpoints(dir);
      if (!files.empty() && files.front().global_step >= step) {
        process.kill(SIGKILL);
        break;
      }
    }
    return process.wait().signal == SIGKILL;
  };
  REQUIRE(kill_past(4, 100));
  REQUIRE(kill_past(0, 150));
  const auto last = run(args(dir, 2, 240));
  INFO(last.output);
  REQUIRE(last.exit_code == 0);
  CHECK(value_of(last.output, "state_digest") == reference);
}

TEST_CASE("the example trains longer with --resume-changed and starts from weights with --init-from") {
  const std::string example = KEEL_FASHION_MNIST_EXAMPLE;
  REQUIRE_MESSAGE(!example.empty(), "the example was not built (KEEL_BUILD_EXAMPLES=OFF)");
  auto args = [&](const fs::path& dir, int max_steps, std::vector<std::string> extra) {
    std::vector<std::string> argv{example, "--model", "mlp", "--max-steps", std::to_string(max_steps), "--epochs", "1",
                                  "--threads", "2", "--ckpt-dir", dir.string(), "--progress", "off",
                                  "--log-dir", (dir / "logs").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  };
  const auto dir = fresh_directory("example-fork");
  REQUIRE(run(args(dir, 40, {})).exit_code == 0);
  const auto refused = run(args(dir, 80, {}));
  CHECK(refused.exit_code == 3);
  CHECK(refused.output.find("--resume-changed auto") != std::string::npos);
  const auto longer = run(args(dir, 80, {"--resume-changed", "auto", "--extend", "append_cosine(0.5)"}));
  INFO(longer.output);
  REQUIRE(longer.exit_code == 0);
  CHECK(longer.output.find("schedule extension append_cosine(0.5), 2 changes") != std::string::npos);
  CHECK(value_of(longer.output, "state_digest"));

  const auto tuned = fresh_directory("example-init");
  const auto warm = run(args(tuned, 10, {"--init-from", (dir / "last.ckpt").string(), "--mlp-hidden", "128",
                                         "--init-non-strict"}));
  INFO(warm.output);
  REQUIRE(warm.exit_code == 0);
  CHECK(warm.output.find("weights only, non-strict, 3 skipped") != std::string::npos);
  CHECK(warm.output.find("skipped model parameter 'fc2.weight' has shape [10, 256] in the checkpoint but [10, 128] in the model") !=
        std::string::npos);
}

/// The rows of a metrics.csv: the step and loss columns of each line after the header.
std::vector<std::pair<std::string, std::string>> step_and_loss_rows(const fs::path& csv) {
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  CHECK(line.rfind("step,epoch,phase,loss,lr,samples_per_sec", 0) == 0);
  std::vector<std::pair<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    std::vector<std::string> fields;
    std::stringstream split(line);
    for (std::string field; std::getline(split, field, ',');) fields.push_back(field);
    REQUIRE(fields.size() >= 4);
    rows.emplace_back(fields[0] + "," + fields[2], fields[3]);
  }
  return rows;
}

TEST_CASE("after kills and resumes the metric logs hold every step exactly once, with the uninterrupted losses") {
  const std::string example = KEEL_FASHION_MNIST_EXAMPLE;
  REQUIRE_MESSAGE(!example.empty(), "the example was not built (KEEL_BUILD_EXAMPLES=OFF)");
  auto args = [&](const fs::path& dir) {
    return std::vector<std::string>{example, "--model", "mlp", "--max-steps", "1000", "--epochs", "2",
                                    "--log-every", "10", "--save-every-steps", "100", "--threads", "2",
                                    "--ckpt-dir", dir.string(), "--log-dir", (dir / "logs").string(),
                                    "--progress", "off", "--resume", "auto"};
  };
  const auto whole = fresh_directory("logs-whole");
  REQUIRE(run(args(whole)).exit_code == 0);

  const auto dir = fresh_directory("logs-killed");
  for (std::int64_t step : {250, 500, 950}) {  // 950: past the epoch end and its validation row
    keel_test::Process process(args(dir));
    bool killed = false;
    while (!process.pump(std::chrono::milliseconds(2))) {
      const auto files = keel::ckpt::list_checkpoints(dir);
      if (!files.empty() && files.front().global_step >= step) {
        process.kill(SIGKILL);
        killed = true;
        break;
      }
    }
    process.wait();
    REQUIRE(killed);
  }
  const auto last = run(args(dir));
  INFO(last.output);
  REQUIRE(last.exit_code == 0);

  const auto expected = step_and_loss_rows(whole / "logs" / "metrics.csv");
  const auto got = step_and_loss_rows(dir / "logs" / "metrics.csv");
  REQUIRE(expected.size() == 101);  // 100 training rows and one validation row
  CHECK(got == expected);           // the same steps, once each, in order, with the same losses

  std::ifstream jsonl(dir / "logs" / "metrics.jsonl");
  std::size_t lines = 0;
  for (std::string line; std::getline(jsonl, line); ++lines) CHECK(line.front() == '{');
  CHECK(lines == expected.size());
}

}  // namespace process_test
