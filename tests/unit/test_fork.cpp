// Train longer, fork, fine-tune (README.md "Train longer, fork, fine-tune"): the refusal
// without permission and its message, forks that apply the new configuration and record the
// lineage, the schedule extensions' learning rates, the guard rails, and warm starts. The
// killed-and-resumed extension runs are in test_process_resume.cpp.
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace fork_test {

using keel::sched::CosineWarmup;
using keel::sched::CosineWarmupOptions;
using keel_test::SmallNetImpl;
using keel_test::SyntheticImages;

using T = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                        keel::scheduler<keel::sched::CosineWarmup>>;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-fork-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// 64 samples in batches of 16: 4 optimizer steps per epoch.
keel::TrainerOptions options(const fs::path& dir, std::int64_t epochs) {
  return keel::TrainerOptions()
      .max_epochs(epochs)
      .batch_size(16)
      .seed(3)
      .threads(1)
      .checkpoint_dir(dir.string())
      .keep_last(0)
      .stop_signals({});
}

template <class Trainer = T>
std::unique_ptr<Trainer> make(keel::TrainerOptions o, std::int64_t total_steps, double lr = 1e-2) {
  keel::seed_everything(3);
  return std::make_unique<Trainer>(std::make_shared<typename Trainer::Module>(), std::move(o),
                                   torch::optim::AdamWOptions(lr).weight_decay(0.01),
                                   CosineWarmupOptions(2, total_steps));
}

/// Collects keel's notices and warnings while alive.
struct Messages {
  std::vector<std::string> lines;
  keel::LogSink previous;
  Messages() : previous(keel::set_log_sink([this](keel::LogLevel, const std::string& m) { lines.push_back(m); })) {}
  ~Messages() { keel::set_log_sink(previous); }
  int count(const std::string& part) const {
    int n = 0;
    for (const auto& l : lines) n += l.find(part) != std::string::npos ? 1 : 0;
    return n;
  }
};

std::string error_of(T& trainer, SyntheticImages& data) {
  try {
    trainer.fit(data);
  } catch (const keel::CheckpointError& e) {
    return e.what();
  }
  return {};
}

/// A finished 2-epoch run (8 steps, schedule of 8) in `dir`.
void finished_run(const fs::path& dir, SyntheticImages& data) {
  auto base = make(options(dir, 2), 8);
  base->fit(data);
  REQUIRE(base->loop().global_step == 8);
}

double old_factor(std::int64_t s) { return CosineWarmup::factor_of(CosineWarmupOptions(2, 8), s); }

TEST_CASE("a resume with another configuration is refused, and the message says how to proceed") {
  SyntheticImages data(64, 5);
  const auto dir = fresh_directory("refused");
  finished_run(dir, data);
  auto longer = make(options(dir, 4).resume("auto"), 16);
  const std::string error = error_of(*longer, data);
  CHECK(error.find("configuration 'scheduler.total_steps' is '8' in the checkpoint but '16' in this run") !=
        std::string::npos);
  CHECK(error.find("allow_changes({\"scheduler.total_steps\"})") != std::string::npos);
  CHECK(error.find("--resume-changed auto") != std::string::npos);
  CHECK(error.find("resume(\"never\")") != std::string::npos);
  CHECK(longer->loop().global_step == 0);
  CHECK(longer->lineage().entries.empty());
}

TEST_CASE("a fork loads the whole state, applies the new schedule, says so once and records the lineage") {
  SyntheticImages data(64, 5);
  const auto dir = fresh_directory("rescale");
  finished_run(dir, data);
  Messages messages;
  auto longer = make(options(dir, 4).resume("auto").allow_changes({"scheduler.*"}), 16);
  longer->fit(data);
  CHECK(longer->loop().global_step == 16);
  CHECK(messages.count("forked from") == 1);
  CHECK(messages.count("scheduler.total_steps: 8 -> 16") == 1);
  REQUIRE(longer->lineage().entries.size() == 1);
  const auto& fork = longer->lineage().entries.front();
  CHECK(fork.kind == keel::LineageEntry::Kind::fork);
  CHECK(fork.step == 8);
  CHECK(fork.epoch == 2);
  CHECK(fork.source == (dir / keel::ckpt::step_file_name(8)).string());
  REQUIRE(fork.changes.size() == 1);
  CHECK(fork.changes.front().key == "scheduler.total_steps");
  CHECK(fork.extension.kind == keel::ScheduleExtension::Kind::rescale);
  // rescale: from the fork on, the schedule of a run configured for 16 steps from the start.
  for (std::int64_t s = 8; s <= 16; ++s)
    CHECK(longer->scheduler().lr_at(s) == doctest::Approx(1e-2 * CosineWarmup::factor_of(CosineWarmupOptions(2, 16), s)).epsilon(1e-15));
  const std::string digest = longer->state_digest();
  longer.reset();  // (its directory lock)

  // Restarted with the same command, the run resumes its own checkpoint: no second fork.
  Messages again;
  auto restarted = make(options(dir, 4).resume("auto").allow_changes({"scheduler.*"}), 16);
  restarted->fit(data);
  CHECK(again.count("forked from") == 0);
  CHECK(again.count("resumed from") == 1);
  CHECK(restarted->lineage().entries.size() == 1);
  CHECK(restarted->state_digest() == digest);
}

TEST_CASE("append_cosine and append_constant keep the old schedule to its end, then add the phase") {
  SyntheticImages data(64, 5);
  SUBCASE("append_cosine: a new cosine from the peak down to the new floor") {
    const auto dir = fresh_directory("append-cosine");
    finished_run(dir, data);
    auto longer = make(options(dir, 4).resume("auto").allow_changes({"scheduler.*"}).schedule_extension(
                           keel::ScheduleExtension::append_cosine(0.5)),
                       16);
    longer->fit(data);
    for (std::int64_t s = 0; s < 8; ++s) CHECK(longer->scheduler().lr_at(s) == doctest::Approx(1e-2 * old_factor(s)).epsilon(1e-15));
    for (std::int64_t s = 8; s < 16; ++s) {
      const double phase = 0.5 * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(s - 8) / 8.0));
      CHECK(longer->scheduler().lr_at(s) == doctest::Approx(1e-2 * phase).epsilon(1e-15));
    }
    CHECK(longer->scheduler().lr_at(8) == doctest::Approx(0.5e-2).epsilon(1e-15));
    CHECK(longer->scheduler().lr_at(16) == 0.0);
    std::vector<double> lrs;
    for (std::int64_t s = 0; s <= 16; ++s) lrs.push_back(longer->scheduler().lr_at(s));
    longer.reset();  // (its directory lock)

    // A restart rebuilds the phase from the lineage alone (whatever its own extension says).
    auto restarted = make(options(dir, 4).resume("auto").allow_changes({"scheduler.*"}), 16);
    restarted->fit(data);
    for (std::int64_t s = 0; s <= 16; ++s) CHECK(restarted->scheduler().lr_at(s) == lrs[static_cast<std::size_t>(s)]);
    restarted.reset();

    // A second fork appends to the first: 16 -> 24 steps, constant at 0.1.
    auto again = make(options(dir, 6).resume("auto").allow_changes({"scheduler.*"}).schedule_extension(
                          keel::ScheduleExtension::append_constant(0.1)),
                      24);
    again->fit(data);
    CHECK(again->loop().global_step == 24);
    REQUIRE(again->lineage().entries.size() == 2);
    for (std::int64_t s = 0; s < 16; ++s) CHECK(again->scheduler().lr_at(s) == lrs[static_cast<std::size_t>(s)]);
    for (std::int64_t s = 16; s < 40; ++s) CHECK(again->scheduler().lr_at(s) == doctest::Approx(1e-3).epsilon(1e-15));
    const std::string digest = again->state_digest();
    again.reset();

    // Restarted, the twice-forked run follows both phases and ends where it ended.
    auto again_restarted = make(options(dir, 6).resume("auto").allow_changes({"scheduler.*"}), 24);
    again_restarted->fit(data);
    CHECK(again_restarted->state_digest() == digest);
    for (std::int64_t s = 0; s < 16; ++s) CHECK(again_restarted->scheduler().lr_at(s) == lrs[static_cast<std::size_t>(s)]);
    CHECK(again_restarted->scheduler().lr_at(30) == doctest::Approx(1e-3).epsilon(1e-15));
    again_restarted.reset();

    // A third fork that changes only the learning rate keeps the schedule's shape...
    keel::seed_everything(3);
    auto lr_only = std::make_unique<T>(std::make_shared<SmallNetImpl>(),
                                       options(dir, 7).resume("auto").allow_changes({"optimizer.lr"}).schedule_extension(
                                           keel::ScheduleExtension::rescale()),
                                       torch::optim::AdamWOptions(2e-2).weight_decay(0.01), CosineWarmupOptions(2, 24));
    lr_only->fit(data);
    for (std::int64_t s = 0; s < 16; ++s) CHECK(lr_only->scheduler().lr_at(s) == doctest::Approx(2 * lrs[static_cast<std::size_t>(s)]).epsilon(1e-15));
    CHECK(lr_only->scheduler().lr_at(30) == doctest::Approx(2e-3).epsilon(1e-15));
    CHECK(lr_only->lineage().entries.back().describe().front().find("schedule unchanged") != std::string::npos);
    lr_only.reset();

    // ... and a rescale that changes the schedule forgets the phases: a 40-step schedule from the start.
    auto rescaled = make(options(dir, 10).resume("auto").allow_changes({"*"}), 40, 2e-2);
    rescaled->fit(data);
    for (std::int64_t s = 0; s <= 40; ++s)
      CHECK(rescaled->scheduler().lr_at(s) == doctest::Approx(2e-2 * CosineWarmup::factor_of(CosineWarmupOptions(2, 40), s)).epsilon(1e-15));
  }
  SUBCASE("append_constant: the lr the old schedule ended with") {
    const auto dir = fresh_directory("append-constant");
    auto base = make(options(dir, 1), 8);  // stopped half-way through its schedule (4 of 8 steps)
    base->fit(data);
    base.reset();
    auto longer = make(options(dir, 4).resume("auto").allow_changes({"scheduler.total_steps"}).schedule_extension(
                           keel::ScheduleExtension::append_constant()),
                       16);
    longer->fit(data);
    for (std::int64_t s = 4; s < 8; ++s) CHECK(longer->scheduler().lr_at(s) == doctest::Approx(1e-2 * old_factor(s)).epsilon(1e-15));
    for (std::int64_t s = 8; s < 30; ++s)
      CHECK(longer->scheduler().lr_at(s) == doctest::Approx(1e-2 * old_factor(7)).epsilon(1e-15));
  }
}

TEST_CASE("a fork applies a new optimizer configuration, and a new learning rate rescales the schedule") {
  SyntheticImages data(64, 5);
  const auto dir = fresh_directory("optimizer");
  finished_run(dir, data);
  keel::seed_everything(3);
  T longer(std::make_shared<SmallNetImpl>(), options(dir, 3).resume("auto").allow_changes({"optimizer.*"}),
           torch::optim::AdamWOptions(2e-2).weight_decay(0.05), CosineWarmupOptions(2, 8));
  longer.fit(data);
  const auto& group = longer.optimizer().torch_optimizer().param_groups().front();
  CHECK(static_cast<const torch::optim::AdamWOptions&>(group.options()).weight_decay() == 0.05);
  CHECK(longer.scheduler().base_lrs().front() == 2e-2);
  REQUIRE(longer.lineage().entries.size() == 1);
  CHECK(longer.lineage().entries.front().changes.size() == 2);
}

/// SyntheticImages that writes down each sample it hands out for training, with its epoch
/// (workers(0): the loader reads a batch only when it is trained).
struct RecordingImages {
  SyntheticImages images;
  std::vector<std::pair<std::int64_t, std::size_t>> trained;
  std::size_t size() const { return images.size(); }
  keel::data::Example get(std::size_t i, const keel::data::SampleContext& ctx) {
    if (ctx.training()) trained.emplace_back(ctx.epoch(), i);
    return images.get(i);
  }
};

// (Another number of processes takes the same path: test_distributed.cpp.)
TEST_CASE("another batch size in the middle of an epoch goes on from the samples trained, each once") {
  const auto dir = fresh_directory("batch-size");
  RecordingImages data{SyntheticImages(64, 5), {}};
  auto base = make(options(dir, 2).max_steps(3), 8);  // 48 of epoch 0's 64 samples
  base->fit(data);
  base.reset();
  Messages messages;
  auto other = make(options(dir, 2).batch_size(8).resume("auto").allow_changes({"data.batch_size"}), 8);
  other->fit(data);
  CHECK(messages.count("the checkpoint was trained by 1 process of batch 16, and 1 process of batch 8 train now: "
                       "epoch 0 goes on from sample 48 of its order, each of the rest once; a step averages 8 "
                       "samples instead of 16") == 1);
  // The rest of epoch 0 in 2 steps of 8, then epoch 1 in 8.
  CHECK(other->loop().global_step == 3 + 2 + 8);
  CHECK(other->loop().epoch == 2);
  CHECK(other->loop().epoch_offset == 0);
  std::map<std::int64_t, std::multiset<std::size_t>> epochs;
  for (const auto& [epoch, index] : data.trained) epochs[epoch].insert(index);
  REQUIRE(epochs.size() == 2);
  for (const auto& entry : epochs) {  // (no structured binding: clang 14 cannot capture one)
    const std::int64_t epoch = entry.first;
    CAPTURE(epoch);
    CHECK(entry.second.size() == 64);
    CHECK(std::set<std::size_t>(entry.second.begin(), entry.second.end()).size() == 64);
  }
  // Another data seed in the middle of an epoch is still refused (test below); so is a batch
  // size that the run does not allow.
  const auto refused_dir = fresh_directory("batch-size-refused");
  auto first = make(options(refused_dir, 2).max_steps(3), 8);
  first->fit(data);
  first.reset();
  auto refused = make(options(refused_dir, 2).batch_size(8).resume("auto"), 8);
  try {
    refused->fit(data);
    FAIL("resumed");
  } catch (const keel::CheckpointError& e) {
    CHECK(std::string(e.what()).find("configuration 'data.batch_size' is '16' in the checkpoint but '8' in this run") !=
          std::string::npos);
  }
}

/// Copies the checkpoint of `step` aside as it is written: the one of an epoch's last step,
/// taken before the epoch ends, is otherwise replaced by the end of fit's save of the same step.
struct KeepCheckpoint {
  std::int64_t step = 0;  // (configuration, not state)
  fs::path to;
  template <class Archive>
  void serialize(Archive&) {}
  void on_save_checkpoint_end(keel::Context& ctx) {
    if (ctx.global_step() == step && !fs::exists(to)) fs::copy_file(ctx.checkpoint_path(), to);
  }
};

TEST_CASE("a checkpoint of an epoch's last step resumed with another batch size ends that epoch at once") {
  using Kept = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                             keel::scheduler<keel::sched::CosineWarmup>, keel::callbacks<KeepCheckpoint>>;
  const auto dir = fresh_directory("last-step");
  const fs::path kept = dir / "kept.ckpt";
  RecordingImages data{SyntheticImages(64, 5), {}};
  {
    keel::seed_everything(3);
    Kept base(std::make_shared<SmallNetImpl>(), options(dir / "base", 2).max_steps(4).save_every_steps(4).save_on_epoch_end(false),
              torch::optim::AdamWOptions(1e-2), CosineWarmupOptions(2, 8), KeepCheckpoint{4, kept});
    base.fit(data);
  }
  REQUIRE(fs::exists(kept));
  CHECK(keel::ckpt::read_container(kept).manifest.fact("batch_in_epoch") == "4");  // of 4: before the epoch's end
  data.trained.clear();
  Messages messages;
  keel::seed_everything(3);
  Kept other(std::make_shared<SmallNetImpl>(),
             options(dir / "other", 2).batch_size(8).resume(kept.string()).allow_changes({"data.batch_size"}),
             torch::optim::AdamWOptions(1e-2), CosineWarmupOptions(2, 8), KeepCheckpoint{});
  other.fit(data);
  CHECK(messages.count("epoch 0 was trained to its end, which comes now") == 1);
  CHECK(other.loop().global_step == 4 + 8);  // epoch 1 in 8 steps of 8
  CHECK(other.loop().epoch == 2);
  std::set<std::size_t> epoch_one;
  for (const auto& trained : data.trained) {
    CHECK(trained.first == 1);  // nothing of epoch 0 again
    epoch_one.insert(trained.second);
  }
  CHECK(data.trained.size() == 64);
  CHECK(epoch_one.size() == 64);
}

TEST_CASE("changes that cannot make sense are refused even when allowed, with the reason") {
  SyntheticImages data(64, 5);
  const auto dir = fresh_directory("guard");
  finished_run(dir, data);
  const auto file = dir / keel::ckpt::step_file_name(8);

  SUBCASE("another optimizer type") {
    using Sgd = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::SGD>,
                              keel::scheduler<keel::sched::CosineWarmup>>;
    keel::seed_everything(3);
    Sgd other(std::make_shared<SmallNetImpl>(), options(dir, 4).allow_changes({"*"}), torch::optim::SGDOptions(0.1),
              CosineWarmupOptions(2, 8));
    try {
      other.load_checkpoint(file);
      FAIL("loaded");
    } catch (const keel::CheckpointError& e) {
      CHECK(std::string(e.what()).find("another optimizer cannot take over this optimizer's state") != std::string::npos);
    }
    CHECK(other.loop().global_step == 0);
  }
  SUBCASE("another model") {
    using Other = keel::Trainer<keel::model<keel_test::StatefulNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                keel::scheduler<keel::sched::CosineWarmup>>;
    auto other = make<Other>(options(dir, 4).allow_changes({"*"}), 8);
    try {
      other->load_checkpoint(file);
      FAIL("loaded");
    } catch (const keel::CheckpointError& e) {
      CHECK(std::string(e.what()).find("another model cannot continue this run; to start a new run from the tensors "
                                       "that match, use init_from with init_strict(false)") != std::string::npos);
    }
  }
  SUBCASE("the data order in the middle of an epoch") {
    const auto mid = fresh_directory("guard-mid");
    auto base = make(options(mid, 2).max_steps(6), 8);  // epoch 1, batch 2
    base->fit(data);
    base.reset();
    auto other = make(options(mid, 4).seed(4).resume("auto").allow_changes({"*"}), 8);
    const std::string error = error_of(*other, data);
    CHECK(error.find("configuration 'data.seed' is '3' in the checkpoint but '4' in this run: the data order may "
                     "change only at an epoch boundary, and the checkpoint is at batch 2 of its epoch") !=
          std::string::npos);
    // At an epoch boundary it may, and the new seed orders the data from there on.
    auto at_boundary = make(options(dir, 3).seed(4).resume("auto").allow_changes({"data.seed"}), 8);
    at_boundary->fit(data);
    CHECK(at_boundary->loop().data_seed == 4);
  }
  SUBCASE("append_cosine with a schedule that has no end") {
    using Step = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                               keel::scheduler<keel::sched::StepDecay>>;
    const auto step_dir = fresh_directory("guard-step");
    keel::seed_everything(3);
    Step base(std::make_shared<SmallNetImpl>(), options(step_dir, 1), torch::optim::AdamWOptions(1e-2),
              keel::sched::StepDecayOptions(3, 0.5));
    base.fit(data);
    keel::seed_everything(3);
    Step other(std::make_shared<SmallNetImpl>(),
               options(step_dir, 2).allow_changes({"*"}).schedule_extension(keel::ScheduleExtension::append_cosine()),
               torch::optim::AdamWOptions(1e-2), keel::sched::StepDecayOptions(5, 0.5));
    try {
      other.load_checkpoint(step_dir / keel::ckpt::step_file_name(4));
      FAIL("loaded");
    } catch (const keel::CheckpointError& e) {
      CHECK(std::string(e.what()).find("append_cosine needs a schedule with an end") != std::string::npos);
    }
    CHECK(other.loop().global_step == 0);
  }
  SUBCASE("AMSGrad switched on") {
    keel::seed_everything(3);
    T other(std::make_shared<SmallNetImpl>(), options(dir, 4).allow_changes({"*"}),
            torch::optim::AdamWOptions(1e-2).weight_decay(0.01).amsgrad(true), CosineWarmupOptions(2, 8));
    try {
      other.load_checkpoint(file);
      FAIL("loaded");
    } catch (const keel::CheckpointError& e) {
      CHECK(std::string(e.what()).find("AMSGrad changes which state Adam keeps per parameter") != std::string::npos);
    }
  }
  SUBCASE("fork_from, with a checkpoint directory that holds another run") {
    const auto elsewhere = fresh_directory("guard-elsewhere");
    finished_run(elsewhere, data);  // the directory's own run
    auto other = make(options(elsewhere, 4).resume("auto").fork_from(file.string()).allow_changes({"*"}), 16);
    try {
      other->fit(data);
      FAIL("trained");
    } catch (const keel::ConfigError& e) {
      CHECK(std::string(e.what()).find("holds checkpoints of another run") != std::string::npos);
    }
    CHECK(other->loop().global_step == 0);
  }
  SUBCASE("a checkpoint that fails verification") {
    const auto damaged = dir / "damaged.ckpt";
    fs::copy_file(file, damaged);
    {
      std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(fs::file_size(damaged) / 2));
      f.put('\x5a');
    }
    auto other = make(options(dir, 4).allow_changes({"*"}), 16);
    CHECK_THROWS_AS(other->load_checkpoint(damaged), keel::CheckpointError);
    CHECK(other->loop().global_step == 0);
    auto init = make(options(fresh_directory("guard-init"), 1), 8);
    CHECK_THROWS_AS(init->warm_start(damaged), keel::CheckpointError);
  }
}

bool same_tensors(const torch::OrderedDict<std::string, torch::Tensor>& a,
                  const torch::OrderedDict<std::string, torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& item : a)
    if (!b.contains(item.key()) || !keel::bitwise_equal(item.value(), b[item.key()])) return false;
  return true;
}

TEST_CASE("a warm start takes the weights, or weights and optimizer state, and starts a new run") {
  SyntheticImages data(64, 5);
  const auto dir = fresh_directory("warm");
  auto base = make(options(dir, 2), 8);
  base->fit(data);
  const auto file = dir / keel::ckpt::step_file_name(8);

  SUBCASE("weights only") {
    auto fresh = make(options(fresh_directory("warm-weights"), 1), 4, 5e-3);
    CHECK(!same_tensors(fresh->model()->named_parameters(), base->model()->named_parameters()));
    fresh->warm_start(file);
    CHECK(same_tensors(fresh->model()->named_parameters(), base->model()->named_parameters()));
    CHECK(same_tensors(fresh->model()->named_buffers(), base->model()->named_buffers()));
    CHECK(fresh->optimizer().state().params.empty());
    CHECK(fresh->loop().global_step == 0);
    CHECK(fresh->scheduler().steps() == 0);
    REQUIRE(fresh->lineage().entries.size() == 1);
    CHECK(fresh->lineage().entries.front().kind == keel::LineageEntry::Kind::warm_start);
    CHECK(fresh->lineage().entries.front().step == 8);
  }
  SUBCASE("weights and optimizer state") {
    keel::seed_everything(3);
    auto fresh = std::make_unique<T>(std::make_shared<SmallNetImpl>(),
                                     options(fresh_directory("warm-optimizer"), 1).init_mode(keel::InitFrom::weights_and_optimizer),
                                     torch::optim::AdamWOptions(5e-3).weight_decay(0.2), CosineWarmupOptions(2, 4));
    fresh->warm_start(file);
    // The checkpoint's per-parameter state, this run's hyper-parameters.
    const auto& group = fresh->optimizer().torch_optimizer().param_groups().front();
    CHECK(static_cast<const torch::optim::AdamWOptions&>(group.options()).weight_decay() == 0.2);
    const auto theirs = base->optimizer().state();
    const auto mine = fresh->optimizer().state();
    REQUIRE(mine.params.size() == theirs.params.size());
    for (std::size_t i = 0; i < mine.params.size(); ++i) {
      CHECK(mine.params[i].step == theirs.params[i].step);
      for (std::size_t k = 0; k < mine.params[i].tensors.size(); ++k)
        if (mine.params[i].tensors[k].second.defined())
          CHECK(keel::bitwise_equal(mine.params[i].tensors[k].second, theirs.params[i].tensors[k].second));
    }
    CHECK(fresh->optimizer().lr(0) == doctest::Approx(5e-3 / 2));  // its own schedule, at its first step
  }
  SUBCASE("from the options, only when the run has no checkpoint of its own") {
    const auto own = fresh_directory("warm-options");
    auto first = make(options(own, 1).resume("auto").init_from(file.string()), 4);
    first->fit(data);
    CHECK(first->loop().global_step == 4);
    REQUIRE(first->lineage().entries.size() == 1);
    first.reset();
    Messages messages;
    auto second = make(options(own, 2).resume("auto").init_from(file.string()), 4);
    second->fit(data);
    CHECK(messages.count("resumed from") == 1);
    CHECK(messages.count("warm start") == 0);
    CHECK(second->lineage().entries.size() == 1);
  }
  SUBCASE("another optimizer's state is refused") {
    using Sgd = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::SGD>>;
    keel::seed_everything(3);
    Sgd other(std::make_shared<SmallNetImpl>(), options(fresh_directory("warm-sgd"), 1).init_mode(keel::InitFrom::weights_and_optimizer),
              torch::optim::SGDOptions(0.1));
    try {
      other.warm_start(file);
      FAIL("loaded");
    } catch (const keel::CheckpointError& e) {
      CHECK(std::string(e.what()).find("cannot take over; use InitFrom::weights") != std::string::npos);
    }
  }
}

/// SmallNet's convolution, a wider head and an extra layer; no BatchNorm.
struct OtherHeadImpl : torch::nn::Module {
  OtherHeadImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 3).padding(1)))),
        fc(register_module("fc", torch::nn::Linear(6 * 4 * 4, 5))),
        extra(register_module("extra", torch::nn::Linear(5, 5))) {}
  torch::Tensor training_step(const keel::data::Example& batch) {
    auto x = torch::max_pool2d(torch::relu(conv(batch.data)), 2);
    return torch::nn::functional::cross_entropy(extra(fc(x.flatten(1))), batch.target);
  }
  BOOST_HANA_DEFINE_STRUCT(OtherHeadImpl, (torch::nn::Conv2d, conv), (torch::nn::Linear, fc), (torch::nn::Linear, extra));
};

TEST_CASE("a strict warm start refuses any mismatch; a non-strict one takes what matches and lists the rest") {
  SyntheticImages data(64, 5);
  const auto dir = fresh_directory("partial");
  auto base = make(options(dir, 1), 4);
  base->fit(data);
  const auto file = dir / keel::ckpt::step_file_name(4);
  using Other = keel::Trainer<keel::model<OtherHeadImpl>, keel::optimizer<keel::optim::AdamW>>;

  keel::seed_everything(3);
  Other strict(std::make_shared<OtherHeadImpl>(), options(fresh_directory("partial-strict"), 1),
               torch::optim::AdamWOptions(1e-3));
  const auto before = strict.model()->conv->weight.clone();
  try {
    strict.warm_start(file);
    FAIL("loaded");
  } catch (const keel::CheckpointError& e) {
    const std::string message = e.what();
    CHECK(message.find("model parameter 'fc.weight' has shape [4, 96] in the checkpoint but [5, 96] in the model") != std::string::npos);
    CHECK(message.find("model parameter 'extra.weight' is missing from the checkpoint") != std::string::npos);
    CHECK(message.find("unexpected model buffer 'bn.running_mean' in the checkpoint") != std::string::npos);
    CHECK(message.find("init_strict(false)") != std::string::npos);
  }
  CHECK(keel::bitwise_equal(strict.model()->conv->weight, before));  // nothing taken

  keel::seed_everything(3);
  Other partial(std::make_shared<OtherHeadImpl>(), options(fresh_directory("partial-loose"), 1).init_strict(false),
                torch::optim::AdamWOptions(1e-3));
  partial.warm_start(file);
  CHECK(keel::bitwise_equal(partial.model()->conv->weight, base->model()->conv->weight));
  CHECK(!keel::bitwise_equal(partial.model()->fc->bias.narrow(0, 0, 4), base->model()->fc->bias));
  REQUIRE(partial.lineage().entries.size() == 1);
  const auto& skipped = partial.lineage().entries.front().skipped;
  CHECK(skipped.size() == 9);  // fc's 2 (shape), extra's 2 (missing), bn's 2 parameters and 3 buffers (unexpected)
  std::string all;
  for (const auto& s : skipped) all += s + "\n";
  CHECK(all.find("model parameter 'fc.bias' has shape [4] in the checkpoint but [5] in the model") != std::string::npos);
  CHECK(all.find("unexpected model parameter 'bn.weight' in the checkpoint (this model has no such parameter)") != std::string::npos);
  CHECK(all.find("unexpected model buffer 'bn.num_batches_tracked'") != std::string::npos);
  CHECK(all.find("model parameter 'extra.bias' is missing from the checkpoint") != std::string::npos);
  partial.fit(data);  // and it trains
  CHECK(partial.loop().global_step == 4);
}

TEST_CASE("the options refuse contradictory fork and warm-start settings") {
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().init_from("a.ckpt").resume("b.ckpt").validate(),
                       doctest::Contains("starts a new run"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().checkpoint_dir("d").fork_from("a.ckpt").validate(),
                       doctest::Contains("needs resume(\"auto\")"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().init_from("a.ckpt").init_strict(false).init_mode(keel::InitFrom::weights_and_optimizer).validate(),
                       doctest::Contains("use InitFrom::weights with init_strict(false)"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(keel::TrainerOptions().allow_changes({""}).validate(), doctest::Contains("empty entry"),
                       keel::ConfigError);
  CHECK(keel::ScheduleExtension::parse("append_cosine(0.5)").level == 0.5);
  CHECK(keel::ScheduleExtension::parse("append-constant").kind == keel::ScheduleExtension::Kind::append_constant);
  CHECK_THROWS_AS(keel::ScheduleExtension::parse("cosine"), keel::ConfigError);
}

TEST_CASE("a fork to a new learning rate keeps each param group's own rate as its base") {
  const auto dir = fresh_directory("group-lr");
  const auto groups = [] {
    return keel::optim::ParamGroups({keel::optim::ParamGroup("head", keel::optim::name_contains("fc.")).set("lr", 3e-3)});
  };
  auto make_grouped = [&](keel::TrainerOptions o, double lr) {
    keel::seed_everything(3);
    return std::make_unique<T>(std::make_shared<SmallNetImpl>(), std::move(o), torch::optim::AdamWOptions(lr),
                               CosineWarmupOptions(2, 8), groups());
  };
  SyntheticImages train(64, 1);
  make_grouped(options(dir, 1), 1e-2)->fit(train);
  // Twice the optimizer's rate; the head group keeps the rate it sets itself.
  auto forked = make_grouped(options(dir, 2).resume("auto").allow_changes({"optimizer.lr"}), 2e-2);
  forked->fit(train);
  const auto& bases = forked->scheduler().base_lrs();
  REQUIRE(bases.size() == 2);
  CHECK(bases[0] == 2e-2);
  CHECK(bases[1] == 3e-3);
  fs::remove_all(dir);
}

}  // namespace fork_test
