// keel::TensorBoardLogger, read back by a reader that shares no code with keel: Node.js with
// @roboflow/tfrecords (the framing's CRCs) and protobufjs (tensorflow.Event from
// tests/tensorboard/event.proto), tests/tensorboard/read_events.mjs. Needs `node` on the PATH
// and the reader's dependencies installed (npm ci --prefix tests/tensorboard).
#include "support/process.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#ifndef KEEL_TENSORBOARD_READER
#error "KEEL_TENSORBOARD_READER must name tests/tensorboard/read_events.mjs (set in tests/CMakeLists.txt)"
#endif

namespace tensorboard_test {

namespace fs = std::filesystem;
using keel_test::SmallNetImpl;
using keel_test::SyntheticImages;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-tensorboard-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// `node` from the PATH (keel_test::run does not search it).
std::string node_program() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / "node";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

/// One scalar as the reader printed it.
struct Scalar {
  std::int64_t step;
  std::string tag;
  float value;
};

/// The reader's output lines and the scalars they hold; fails the test unless the reader
/// accepted the whole file.
struct Read {
  std::string output;
  std::vector<Scalar> scalars;
};
Read read_events(const fs::path& file) {
  const std::string node = node_program();
  REQUIRE_MESSAGE(!node.empty(), "node (Node.js) is not on the PATH; it runs tests/tensorboard/read_events.mjs");
  const auto result = keel_test::run({node, KEEL_TENSORBOARD_READER, file.string()});
  INFO(result.output);
  REQUIRE(result.exit_code == 0);  // 2: run `npm ci --prefix tests/tensorboard`
  Read read{result.output, {}};
  std::stringstream lines(result.output);
  for (std::string line; std::getline(lines, line);) {
    std::stringstream fields(line);
    Scalar scalar{};
    std::string value, rest;
    const bool parsed = static_cast<bool>(fields >> scalar.step >> scalar.tag >> value) && !(fields >> rest);
    REQUIRE_MESSAGE(parsed, ("unexpected line: " + line));
    scalar.value = static_cast<float>(std::stod(value));
    read.scalars.push_back(scalar);
  }
  return read;
}

/// `value` as the file holds it (float32), compared to 1e-6 relative: the reader prints 9
/// significant digits, enough to give the float back.
doctest::Approx as_float32(double value) { return doctest::Approx(static_cast<float>(value)).epsilon(1e-6).scale(0); }

/// What the loop reported at each optimizer step, to compare the file with.
struct StepRecorder {
  std::vector<std::int64_t> steps;
  std::vector<double> losses, lrs, grad_norms;
  template <class A>
  void serialize(A& a) {
    a(steps, losses, lrs, grad_norms);
  }
  void on_optimizer_step_end(keel::Context& ctx) {
    steps.push_back(ctx.global_step());
    losses.push_back(ctx.loss().item<double>());
    lrs.push_back(ctx.lr());
    grad_norms.push_back(ctx.grad_norm());
  }
};

/// Throws at the end of optimizer step `at` (0: never), as a process killed there would stop:
/// what the logger wrote after the last checkpoint stays in the file.
struct KillAt {
  std::int64_t at = 0;  // configuration, not state
  template <class A>
  void serialize(A&) {}
  void on_optimizer_step_end(keel::Context& ctx) {
    if (ctx.global_step() == at) throw std::runtime_error("killed at step " + std::to_string(at));
  }
};

// 64 samples in batches of 16: 4 optimizer steps per epoch, validation at each epoch's end.
keel::TrainerOptions options(std::int64_t epochs) {
  return keel::TrainerOptions().max_epochs(epochs).batch_size(16).seed(3).threads(1);
}
keel::sched::StepLROptions schedule() { return keel::sched::StepLROptions(3, 0.5); }
double scheduled_lr(std::int64_t step) { return 0.1 * std::pow(0.5, static_cast<double>(step / 3)); }

/// The (step, tag) pairs of 12 steps logged every 2 with a validation every 4.
std::vector<std::pair<std::int64_t, std::string>> expected_tags() {
  std::vector<std::pair<std::int64_t, std::string>> tags;
  for (std::int64_t step = 1; step <= 12; ++step) {
    if (step % 2 == 0) {
      tags.emplace_back(step, "train/loss");
      tags.emplace_back(step, "train/lr");
    }
    if (step % 4 == 0) {  // metrics in name order
      tags.emplace_back(step, "val/val_accuracy");
      tags.emplace_back(step, "val/val_loss");
    }
  }
  return tags;
}

TEST_CASE("TensorBoardLogger writes an event file that an independent reader accepts, with the loop's values") {
  const auto dir = fresh_directory("values");
  SyntheticImages train(64, 5), validation(32, 6);
  using T = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::SGD>,
                          keel::scheduler<keel::sched::StepLR>, keel::callbacks<keel::TensorBoardLogger, StepRecorder>>;
  keel::seed_everything(3);
  T trainer(options(3), torch::optim::SGDOptions(0.1), schedule(), keel::TensorBoardLogger((dir / "tb").string(), 2));
  trainer.fit(train, validation);
  REQUIRE(trainer.loop().global_step == 12);

  const auto& logger = trainer.callback<keel::TensorBoardLogger>();
  CHECK(logger.path() == (dir / "tb" / "events.out.tfevents.keel").string());
  CHECK(logger.bytes() == static_cast<std::int64_t>(fs::file_size(logger.path())));
  const Read read = read_events(logger.path());
  INFO(read.output);

  std::vector<std::pair<std::int64_t, std::string>> tags;
  for (const auto& s : read.scalars) tags.emplace_back(s.step, s.tag);
  CHECK(tags == expected_tags());

  const auto& recorded = trainer.callback<StepRecorder>();
  REQUIRE(recorded.steps.size() == 12);
  for (const auto& s : read.scalars) {
    CAPTURE(s.step);
    CAPTURE(s.tag);
    const auto at = static_cast<std::size_t>(s.step - 1);
    REQUIRE(recorded.steps.at(at) == s.step);
    if (s.tag == "train/loss") {
      CHECK(s.value == as_float32(recorded.losses[at]));
    } else if (s.tag == "train/lr") {
      CHECK(s.value == as_float32(recorded.lrs[at]));
      CHECK(s.value == as_float32(scheduled_lr(s.step)));
    } else {
      CHECK(std::isfinite(s.value));
    }
  }
  // The last validation's metrics are the trainer's.
  for (const auto& metric : trainer.metrics()) {  // (not a structured binding: clang 14 cannot capture one)
    const std::string& name = metric.first;
    const double value = metric.second;
    CAPTURE(name);
    bool found = false;
    for (const auto& s : read.scalars)
      if (s.step == 12 && s.tag == "val/" + name) {
        found = true;
        CHECK(s.value == as_float32(value));
      }
    CHECK(found);
  }
  fs::remove_all(dir);
}

TEST_CASE("TensorBoardLogger logs the gradient norm before clipping when gradients are clipped") {
  const auto dir = fresh_directory("grad-norm");
  SyntheticImages train(64, 5);
  using T = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::SGD>,
                          keel::callbacks<keel::TensorBoardLogger, StepRecorder>>;
  keel::seed_everything(3);
  T trainer(options(1).max_steps(2).clip_grad_norm(1e-3), torch::optim::SGDOptions(0.1),
            keel::TensorBoardLogger((dir / "tb").string(), 1));
  trainer.fit(train);
  const Read read = read_events(trainer.callback<keel::TensorBoardLogger>().path());
  INFO(read.output);
  const auto& recorded = trainer.callback<StepRecorder>();
  REQUIRE(read.scalars.size() == 6);
  for (std::int64_t step = 1; step <= 2; ++step) {
    const auto& norm = read.scalars.at(static_cast<std::size_t>(3 * step - 1));
    CHECK(norm.step == step);
    CHECK(norm.tag == "train/grad_norm");
    CHECK(norm.value == as_float32(recorded.grad_norms.at(static_cast<std::size_t>(step - 1))));
    CHECK(norm.value > 1e-3);  // the norm before clipping
  }
  fs::remove_all(dir);
}

std::vector<char> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_CASE("after a kill and a resume the event file holds every step once, as an uninterrupted run's") {
  SyntheticImages train(64, 5), validation(32, 6);
  using T = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::SGD>,
                          keel::scheduler<keel::sched::StepLR>, keel::callbacks<keel::TensorBoardLogger, KillAt>>;
  // Checkpoints at steps 3, 4 (epoch end), 6, 8 (epoch end), 9, 12.
  auto make = [&](const fs::path& dir, std::int64_t kill_at) {
    keel::seed_everything(3);
    auto checkpointed = options(3).save_every_steps(3).keep_last(0).checkpoint_dir((dir / "ckpt").string()).resume("auto");
    return std::make_unique<T>(checkpointed, torch::optim::SGDOptions(0.1), schedule(),
                               keel::TensorBoardLogger((dir / "tb").string(), 2), KillAt{kill_at});
  };

  const auto whole_dir = fresh_directory("whole");
  auto whole = make(whole_dir, 0);
  whole->fit(train, validation);
  const std::string whole_file = whole->callback<keel::TensorBoardLogger>().path();
  const Read expected = read_events(whole_file);
  {
    std::vector<std::pair<std::int64_t, std::string>> tags;
    for (const auto& s : expected.scalars) tags.emplace_back(s.step, s.tag);
    REQUIRE(tags == expected_tags());
  }

  const auto dir = fresh_directory("killed");
  std::string file;
  std::int64_t bytes_at_checkpoint = 0;
  {
    // Killed at step 8, before its epoch's end: the newest checkpoint is step 6's, and the file
    // holds step 8's record too (written, then flushed as the trainer goes away).
    auto killed = make(dir, 8);
    CHECK_THROWS_WITH_AS(killed->fit(train, validation), "killed at step 8", std::runtime_error);
    CHECK(killed->loop().global_step == 8);
    file = killed->callback<keel::TensorBoardLogger>().path();
  }
  {
    auto probe = make(dir, 0);  // what the checkpoint counted
    REQUIRE(probe->resume_latest(dir / "ckpt"));
    CHECK(probe->loop().global_step == 6);
    bytes_at_checkpoint = probe->callback<keel::TensorBoardLogger>().bytes();
  }
  CHECK(static_cast<std::int64_t>(fs::file_size(file)) > bytes_at_checkpoint);  // step 8's record
  {
    // A process killed in the middle of a write leaves half a record: here the first 20 bytes of
    // the file's first record, then bytes that are no record at all.
    const auto start = read_bytes(file);
    std::ofstream out(file, std::ios::binary | std::ios::app);
    out.write(start.data(), 20);
    out << "not a record";
  }
  CHECK(keel_test::run({node_program(), KEEL_TENSORBOARD_READER, file}).exit_code == 1);  // the damage shows

  auto resumed = make(dir, 0);
  resumed->fit(train, validation);
  CHECK(resumed->loop().global_step == 12);
  const Read got = read_events(file);
  CHECK(got.output == expected.output);  // the same steps, once each, in order, with the same values
  // Only the wall times differ: the files have the same size, and the states are the same.
  CHECK(fs::file_size(file) == fs::file_size(whole_file));
  CHECK(resumed->callback<keel::TensorBoardLogger>().bytes() == whole->callback<keel::TensorBoardLogger>().bytes());
  CHECK(resumed->state_digest() == whole->state_digest());
  resumed.reset();
  whole.reset();
  fs::remove_all(dir);
  fs::remove_all(whole_dir);
}

TEST_CASE("TensorBoardLogger refuses a cadence that is not positive") {
  CHECK_THROWS_WITH_AS(keel::TensorBoardLogger("tb", 0), doctest::Contains("every_n_steps must be positive, got 0"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TensorBoardLogger("tb", -5), doctest::Contains("every_n_steps must be positive, got -5"),
                       keel::ConfigError);
}

}  // namespace tensorboard_test
