// The checkpoint container and write protocol: verification, all-or-nothing loading with every
// problem listed, the last.ckpt link, rotation, auto-resume past corrupt files, and the JSON
// format.
#include "support/compare.hpp"
#include "support/process.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <locale>
#include <map>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;

namespace checkpoint_test {

using keel_test::SmallNetImpl;
using keel_test::SyntheticImages;

/// Same structure as SmallNet but a wider head: a different model for mismatch tests.
struct OtherNetImpl : torch::nn::Module {
  OtherNetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 3).padding(1)))),
        fc(register_module("fc", torch::nn::Linear(6 * 4 * 4, 5))),
        extra(register_module("extra", torch::nn::Linear(5, 5))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return extra(fc(torch::max_pool2d(conv(b.data), 2).flatten(1))).sum();
  }
  BOOST_HANA_DEFINE_STRUCT(OtherNetImpl, (torch::nn::Conv2d, conv), (torch::nn::Linear, fc), (torch::nn::Linear, extra));
};

/// A fresh, empty directory under the system temp directory.
fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

using AdamWTrainer = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                   keel::callbacks<keel::EarlyStopping>>;

AdamWTrainer make_trainer(const fs::path& dir, double lr = 1e-3, std::int64_t save_every = 0) {
  keel::seed_everything(1);
  return AdamWTrainer(std::make_shared<SmallNetImpl>(),
                      keel::TrainerOptions().max_steps(6).batch_size(8).checkpoint_dir(dir.string()).save_every_steps(save_every),
                      torch::optim::AdamWOptions(lr));
}

std::vector<char> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void write_bytes(const fs::path& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST_CASE("a checkpoint holds every section, verifies, and digests like the trainer") {
  const auto dir = fresh_directory("container");
  auto trainer = make_trainer(dir);
  SyntheticImages data(64, 3);
  trainer.fit(data);
  const auto file = dir / keel::ckpt::step_file_name(6);
  REQUIRE(fs::exists(file));
  const auto container = keel::ckpt::read_container(file);
  std::vector<std::string> names;
  for (const auto& s : container.manifest.sections) names.push_back(s.name);
  // Callback sections are named after the callback's type (keel 0.2 and before: "callback.0").
  CHECK(names ==
        std::vector<std::string>{"loop", "lineage", "model", "optimizer", "scheduler", "callback.keel::EarlyStopping", "rng"});
  CHECK(container.manifest.find("optimizer")->type == "keel::optim::AdamW");
  CHECK(container.manifest.find("callback.keel::EarlyStopping")->type == "keel::EarlyStopping");
  CHECK(container.manifest.find("callback.keel::EarlyStopping")->version == 1);
  CHECK(container.manifest.fact("global_step") == "6");
  CHECK(container.library_version == KEEL_VERSION_STRING);
  CHECK(keel::checkpoint_digest(container) == trainer.state_digest());
  CHECK(fs::read_symlink(dir / "last.ckpt") == keel::ckpt::step_file_name(6));
}

TEST_CASE("damaged files are refused with a reason") {
  const auto dir = fresh_directory("damage");
  auto trainer = make_trainer(dir);
  SyntheticImages data(64, 3);
  trainer.fit(data);
  const auto good = dir / keel::ckpt::step_file_name(6);
  const auto bytes = read_bytes(good);
  const auto bad = dir / "bad.ckpt";
  auto error_of = [&](const std::vector<char>& content) {
    write_bytes(bad, content);
    try {
      keel::ckpt::read_container(bad);
    } catch (const keel::CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };

  CHECK(error_of({}).find("is empty") != std::string::npos);
  CHECK(error_of({'n', 'o', 'p', 'e', 0, 0, 0, 0, 0}).find("is not a keel checkpoint") != std::string::npos);
  auto future = bytes;
  future[8] = 9;
  CHECK(error_of(future).find("newer keel (container version 9") != std::string::npos);
  auto truncated = bytes;
  truncated.resize(bytes.size() / 2);
  CHECK(error_of(truncated).find("truncated") != std::string::npos);
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  const auto flip_error = error_of(flipped);
  CHECK(flip_error.find("whole-file checksum") != std::string::npos);
  CHECK(flip_error.find("is damaged (checksum") != std::string::npos);  // and the section it hit
  CHECK(error_of(bytes) == "no error");

  try {
    keel::ckpt::read_container(dir);
    FAIL("a directory was accepted");
  } catch (const keel::CheckpointError& e) {
    CHECK(std::string(e.what()).find("is a directory") != std::string::npos);
  }
}

TEST_CASE("a checkpoint of another model is refused with every problem, and nothing is applied") {
  const auto dir = fresh_directory("mismatch");
  auto trainer = make_trainer(dir);
  SyntheticImages data(64, 3);
  trainer.fit(data);

  keel::Trainer<keel::model<OtherNetImpl>, keel::optimizer<keel::optim::AdamW>, keel::callbacks<keel::EarlyStopping>>
      other(std::make_shared<OtherNetImpl>(), keel::TrainerOptions().max_steps(6).batch_size(8),
            torch::optim::AdamWOptions(1e-3));
  const std::string before = other.state_digest();
  try {
    other.load_checkpoint(dir / keel::ckpt::step_file_name(6));
    FAIL("the checkpoint was accepted");
  } catch (const keel::CheckpointError& e) {
    const std::string what = e.what();
    CHECK(e.problems().size() >= 5);
    CHECK(what.find("configuration 'model.type'") != std::string::npos);
    CHECK(what.find("holds keel_test::SmallNetImpl but this run uses checkpoint_test::OtherNetImpl") != std::string::npos);
  }
  CHECK(other.state_digest() == before);
}

TEST_CASE("shape, dtype, missing and unexpected tensors are each named") {
  auto model = std::make_shared<OtherNetImpl>();
  keel::ModelState state = keel::ModelState::capture(SmallNetImpl());
  const auto problems = state.check(*model);
  auto has = [&](const std::string& text) {
    for (const auto& p : problems)
      if (p.find(text) != std::string::npos) return true;
    return false;
  };
  CHECK(has("model parameter 'fc.weight' has shape [4, 96] in the checkpoint but [5, 96] in the model"));
  CHECK(has("unexpected model parameter 'bn.weight'"));
  CHECK(has("model parameter 'extra.weight' is missing from the checkpoint"));
  CHECK(has("unexpected model buffer 'bn.running_mean'"));

  SmallNetImpl doubled;
  doubled.to(torch::kFloat64);
  const auto dtype_problems = keel::ModelState::capture(SmallNetImpl()).check(doubled);
  REQUIRE(!dtype_problems.empty());
  CHECK(dtype_problems.front().find("has dtype float32 in the checkpoint but float64 in the model") != std::string::npos);
}

TEST_CASE("another optimizer type or a changed configuration is refused, naming the difference") {
  const auto dir = fresh_directory("config");
  auto trainer = make_trainer(dir);
  SyntheticImages data(64, 3);
  trainer.fit(data);
  const auto file = dir / keel::ckpt::step_file_name(6);

  keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::Adam>, keel::callbacks<keel::EarlyStopping>>
      adam(std::make_shared<SmallNetImpl>(), keel::TrainerOptions().max_steps(6).batch_size(8));
  const std::string adam_before = adam.state_digest();
  CHECK_THROWS_WITH_AS(adam.load_checkpoint(file),
                       doctest::Contains("section 'optimizer' holds keel::optim::AdamW but this run uses keel::optim::Adam"),
                       keel::CheckpointError);
  CHECK(adam.state_digest() == adam_before);

  auto other_lr = make_trainer(fresh_directory("config2"), 5e-3);
  CHECK_THROWS_WITH_AS(other_lr.load_checkpoint(file),
                       doctest::Contains("configuration 'optimizer.lr' is '0.001' in the checkpoint but '0.005' in this run"),
                       keel::CheckpointError);
}

TEST_CASE("resuming in process continues exactly") {
  SyntheticImages data(64, 3);
  const auto dir_a = fresh_directory("inproc-a");
  auto uninterrupted = make_trainer(dir_a);
  uninterrupted.fit(data);

  const auto dir_b = fresh_directory("inproc-b");
  {
    keel::seed_everything(1);
    AdamWTrainer first(std::make_shared<SmallNetImpl>(),
                       keel::TrainerOptions().max_steps(4).batch_size(8).checkpoint_dir(dir_b.string()),
                       torch::optim::AdamWOptions(1e-3));
    first.fit(data);
  }
  (void)torch::rand(100);  // disturb the global stream: the resume must restore it
  keel::seed_everything(999);
  AdamWTrainer second(std::make_shared<SmallNetImpl>(),
                      keel::TrainerOptions().max_steps(6).batch_size(8).checkpoint_dir(dir_b.string()).resume("auto"),
                      torch::optim::AdamWOptions(1e-3));
  second.fit(data);
  CHECK(second.loop().global_step == 6);
  CHECK(second.state_digest() == uninterrupted.state_digest());
  CHECK(read_bytes(dir_b / keel::ckpt::step_file_name(6)) == read_bytes(dir_a / keel::ckpt::step_file_name(6)));
}

TEST_CASE("rotation keeps the newest checkpoints and auto-resume falls back past a corrupt one") {
  const auto dir = fresh_directory("rotate");
  SyntheticImages data(64, 3);
  {
    keel::seed_everything(1);
    AdamWTrainer trainer(std::make_shared<SmallNetImpl>(),
                         keel::TrainerOptions().max_steps(6).batch_size(8).checkpoint_dir(dir.string())
                             .save_every_steps(1).keep_last(2),
                         torch::optim::AdamWOptions(1e-3));
    trainer.fit(data);
  }
  const auto files = keel::ckpt::list_checkpoints(dir);
  REQUIRE(files.size() == 2);
  CHECK(files[0].global_step == 6);
  CHECK(files[1].global_step == 5);

  auto bytes = read_bytes(files[0].path);
  bytes[bytes.size() / 3] ^= 0x01;
  write_bytes(files[0].path, bytes);
  auto trainer = make_trainer(dir);
  const auto resumed = trainer.resume_latest(dir);
  REQUIRE(resumed);
  CHECK(*resumed == files[1].path);
  CHECK(trainer.loop().global_step == 5);
}

TEST_CASE("auto-resume follows last.ckpt, the checkpoint written last, over higher steps of an abandoned run") {
  const auto dir = fresh_directory("branch");
  SyntheticImages data(64, 3);
  {
    keel::seed_everything(1);
    AdamWTrainer trainer(std::make_shared<SmallNetImpl>(),
                         keel::TrainerOptions().max_steps(6).batch_size(8).checkpoint_dir(dir.string())
                             .save_every_steps(2).keep_last(0),
                         torch::optim::AdamWOptions(1e-3));
    trainer.fit(data);
  }
  {
    // Restart from step 2 with a shorter run: it writes step 3 after steps 4 and 6 exist.
    keel::seed_everything(1);
    AdamWTrainer trainer(std::make_shared<SmallNetImpl>(),
                         keel::TrainerOptions().max_steps(3).batch_size(8).checkpoint_dir(dir.string())
                             .keep_last(0).resume((dir / keel::ckpt::step_file_name(2)).string()),
                         torch::optim::AdamWOptions(1e-3));
    trainer.fit(data);
  }
  CHECK(fs::read_symlink(dir / "last.ckpt") == keel::ckpt::step_file_name(3));
  auto trainer = make_trainer(dir);
  const auto resumed = trainer.resume_latest(dir);
  REQUIRE(resumed);
  CHECK(resumed->filename() == keel::ckpt::step_file_name(3));
  CHECK(trainer.loop().global_step == 3);
}

TEST_CASE("temporary files of a killed writer are removed when training takes the directory") {
  const auto dir = fresh_directory("stale");
  const auto stale = dir / ".step-000000004.ckpt.tmp.999999999";  // no such process
  write_bytes(stale, {'p', 'a', 'r', 't'});
  auto trainer = make_trainer(dir);
  SyntheticImages data(64, 3);
  trainer.fit(data);
  CHECK_FALSE(fs::exists(stale));
  for (const auto& entry : fs::directory_iterator(dir))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("two trainers cannot use one checkpoint directory at once") {
  const auto dir = fresh_directory("lock");
  SyntheticImages data(64, 3);
  auto first = make_trainer(dir);
  first.fit(data);  // holds the directory from now on
  auto second = make_trainer(dir);
  CHECK_THROWS_WITH_AS(second.fit(data), doctest::Contains("is training with checkpoint directory"), keel::ConfigError);
}

TEST_CASE("a failed write names the path and the reason, and leaves nothing behind") {
  const auto dir = fresh_directory("write-fail");
  const auto not_a_directory = dir / "file";
  write_bytes(not_a_directory, {'x'});
  auto trainer = make_trainer(dir);
  try {
    trainer.save_checkpoint(not_a_directory / "step.ckpt");
    FAIL("the write succeeded");
  } catch (const keel::ckpt::IoError& e) {
    const std::string what = e.what();
    CHECK(what.find((not_a_directory / ".step.ckpt.tmp.").string()) != std::string::npos);
    CHECK(what.find("Not a directory") != std::string::npos);
  }
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
}

using JsonTrainer = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                  keel::callbacks<keel::EarlyStopping>, keel::checkpoint<keel::format::Json>>;

JsonTrainer make_json_trainer(const fs::path& dir, std::int64_t max_steps) {
  keel::seed_everything(1);
  return JsonTrainer(std::make_shared<SmallNetImpl>(),
                     keel::TrainerOptions().max_epochs(10).max_steps(max_steps).batch_size(8).checkpoint_dir(dir.string())
                         .save_every_steps(3).resume("auto"),
                     torch::optim::AdamWOptions(1e-3), keel::EarlyStopping("val_loss", 2));
}

TEST_CASE("keel::format::Json: readable sections in keel's container, its own file names, exact resume, keel-ckpt") {
  SyntheticImages data(64, 3), validation(16, 4);
  const auto whole_dir = fresh_directory("json-whole");
  auto whole = make_json_trainer(whole_dir, 12);
  whole.fit(data, validation);

  // step-<N>.jckpt, last.jckpt; each section is JSON text, doubles and tensors included.
  const auto file = whole_dir / keel::ckpt::step_file_name(12, ".jckpt");
  REQUIRE(fs::exists(file));
  CHECK(fs::read_symlink(whole_dir / "last.jckpt") == keel::ckpt::step_file_name(12, ".jckpt"));
  CHECK(keel::ckpt::list_checkpoints(whole_dir, ".ckpt").empty());
  const auto container = keel::ckpt::read_container(file);
  CHECK(container.manifest.format == "keel::format::Json");
  const std::string loop(container.section(*container.manifest.find("loop")));
  CHECK(loop.find("\"global_step\": 12") != std::string::npos);
  const std::string model(container.section(*container.manifest.find("model")));
  CHECK(model.find("\"name\": \"conv.weight\"") != std::string::npos);
  CHECK(model.find("\"dtype\": \"float32\"") != std::string::npos);
  CHECK(keel::checkpoint_digest(container) == whole.state_digest());

  // Stopped at 6 (in a Trainer of its own) and resumed to 12: the same state.
  const auto split_dir = fresh_directory("json-split");
  { make_json_trainer(split_dir, 6).fit(data, validation); }
  auto resumed = make_json_trainer(split_dir, 12);
  resumed.fit(data, validation);
  CHECK(resumed.loop().global_step == 12);
  CHECK(resumed.state_digest() == whole.state_digest());
  CHECK(read_bytes(split_dir / keel::ckpt::step_file_name(12, ".jckpt")) != std::vector<char>{});

  // keel-ckpt reads it like a binary checkpoint.
  if (std::string(KEEL_CKPT_TOOL).empty()) {
    MESSAGE("keel-ckpt not built (KEEL_BUILD_TOOLS=OFF): its JSON reading is not checked");
  } else {
    const auto verify = keel_test::run({KEEL_CKPT_TOOL, "verify", file.string()});
    INFO(verify.output);
    CHECK(verify.exit_code == 0);
    const auto digest = keel_test::run({KEEL_CKPT_TOOL, "digest", file.string()});
    CHECK(digest.output == whole.state_digest() + "\n");
    const auto info = keel_test::run({KEEL_CKPT_TOOL, "info", file.string(), "--tensors"});
    INFO(info.output);
    CHECK(info.exit_code == 0);
    CHECK(info.output.find("model/conv.weight float32[6, 1, 3, 3]") != std::string::npos);
    const auto diff = keel_test::run({KEEL_CKPT_TOOL, "diff", file.string(),
                                      (split_dir / keel::ckpt::step_file_name(12, ".jckpt")).string()});
    INFO(diff.output);
    CHECK(diff.exit_code == 0);  // the resumed run's file holds the same state
  }
}

// ---- loads read the file piece by piece; large tensors straight into place ------------------

/// A model with tensors above ckpt::deferred_tensor_min_bytes (fc1's weight is 128 KiB, its Adam
/// moments too), so that loads leave them in the file until they are read into place.
struct WideNetImpl : torch::nn::Module {
  WideNetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(64, 512))), fc2(register_module("fc2", torch::nn::Linear(512, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return torch::nn::functional::cross_entropy(fc2(torch::relu(fc1(b.data.flatten(1)))), b.target);
  }
  BOOST_HANA_DEFINE_STRUCT(WideNetImpl, (torch::nn::Linear, fc1), (torch::nn::Linear, fc2));
};
/// At each on_save_checkpoint_end, how many checkpoints the directory holds (rotation has run
/// by then, with async_save too). No state of its own: the list is the test's.
struct CountAtSaveEnd {
  static inline std::vector<std::size_t>* counts = nullptr;
  void on_save_checkpoint_end(keel::Context& context) {
    if (counts) counts->push_back(keel::ckpt::list_checkpoints(fs::path(context.checkpoint_path()).parent_path()).size());
  }
};
using WideTrainer =
    keel::Trainer<keel::model<WideNetImpl>, keel::optimizer<keel::optim::AdamW>, keel::callbacks<CountAtSaveEnd>>;

WideTrainer make_wide(const fs::path& dir, std::int64_t max_steps) {
  keel::seed_everything(1);
  return WideTrainer(std::make_shared<WideNetImpl>(),
                     keel::TrainerOptions().max_steps(max_steps).batch_size(8).checkpoint_dir(dir.string()).save_every_steps(3),
                     torch::optim::AdamWOptions(1e-3));
}

/// The storage of every parameter and Adam moment, by name.
std::map<std::string, const void*> storages(WideTrainer& trainer) {
  std::map<std::string, const void*> out;
  for (const auto& p : trainer.model()->named_parameters()) {
    out["param." + p.key()] = p.value().data_ptr();
    // state_key is the key LibTorch's own optimizer filed the parameter's state under.
    const auto& state = trainer.optimizer().torch_optimizer().state();
    const auto found = state.find(keel::optim::state_key(p.value()));
    REQUIRE_MESSAGE(found != state.end(), "no optimizer state under the key of ", p.key());
    out["exp_avg." + p.key()] = static_cast<torch::optim::AdamWParamState&>(*found->second).exp_avg().data_ptr();
  }
  return out;
}

/// A numeric punctuation that groups digits by three (as en_US does), for the test below.
struct GroupingPunct : std::numpunct<char> {
  std::string do_grouping() const override { return "\3"; }
  char do_thousands_sep() const override { return ','; }
};

TEST_CASE("the optimizer's state is found under LibTorch's key whatever the global locale") {
  // LibTorch 1.x files a parameter's state under its TensorImpl's address as an ostringstream
  // prints it, in the global locale, which may group the digits; keel's key must be the same.
  SyntheticImages data(16, 3);
  keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>> trainer(
      std::make_shared<SmallNetImpl>(), keel::TrainerOptions().max_steps(1).batch_size(8),
      torch::optim::AdamWOptions(1e-3));
  const std::size_t parameters = trainer.model()->parameters().size();
  struct RestoreLocale {
    std::locale previous = std::locale::global(std::locale(std::locale::classic(), new GroupingPunct));
    ~RestoreLocale() { std::locale::global(previous); }
  } grouping;
  trainer.fit(data);  // (LibTorch's optimizer files each parameter's state in this locale)
  CHECK(trainer.optimizer().state().params.size() == parameters);
}

TEST_CASE("a load reads large tensors straight into the live ones, and the resume is exact") {
  SyntheticImages data(96, 3);
  const auto dir = fresh_directory("wide");
  auto uninterrupted = make_wide(dir, 6);
  uninterrupted.fit(data);  // saves steps 3 and 6
  const auto step3 = dir / keel::ckpt::step_file_name(3);
  {
    const auto container = keel::ckpt::read_container(step3);
    const auto* model = container.manifest.find("model");
    REQUIRE(model != nullptr);
    keel::ModelState staged;
    keel::ckpt::parse_section<keel::format::Binary>(container, *model, staged, /*defer_tensors=*/true);
    int deferred = 0;
    for (const auto& t : staged.parameters) deferred += keel::ckpt::is_deferred(t.tensor);
    CHECK(deferred == 1);  // fc1.weight only: the others are under the threshold
  }

  // Into a trained trainer: the parameters keep their memory (the values are copied in), and
  // so does the large moment (read into place); small moments become the staged tensors.
  const auto other = fresh_directory("wide-other");
  auto resumed = make_wide(other, 5);
  resumed.fit(data);
  const auto before = storages(resumed);
  REQUIRE(before.size() == 8);
  resumed.load_checkpoint(step3);
  auto after = storages(resumed);
  for (const char* kept : {"param.fc1.weight", "param.fc1.bias", "param.fc2.weight", "param.fc2.bias", "exp_avg.fc1.weight"}) {
    CAPTURE(kept);
    CHECK(after.at(kept) == before.at(kept));
  }
  CHECK(after.at("exp_avg.fc2.weight") != before.at("exp_avg.fc2.weight"));
  CHECK(resumed.loop().global_step == 3);

  // The state is exactly the one saved: continuing gives the uninterrupted run's step 6.
  auto fresh = make_wide(fresh_directory("wide-fresh"), 6);
  fresh.load_checkpoint(step3);  // no optimizer state yet: the moments get memory of their own
  fresh.fit(data);
  CHECK(fresh.state_digest() == uninterrupted.state_digest());
  resumed.load_checkpoint(dir / keel::ckpt::step_file_name(6));
  CHECK(resumed.state_digest() == uninterrupted.state_digest());
}

TEST_CASE("a deferred tensor keeps reading the file it was checked in, even once that name holds another file") {
  SyntheticImages data(96, 3);
  const auto dir = fresh_directory("wide-renamed");
  auto trainer = make_wide(dir, 6);
  trainer.fit(data);
  const auto step3 = dir / keel::ckpt::step_file_name(3), step6 = dir / keel::ckpt::step_file_name(6);
  const auto container = keel::ckpt::read_container(step3);
  const auto& model = *container.manifest.find("model");
  keel::ModelState expected, staged;
  keel::ckpt::parse_section<keel::format::Binary>(container, model, expected);  // read in full
  keel::ckpt::parse_section<keel::format::Binary>(container, model, staged, true);
  fs::rename(step6, step3);  // the name now holds step 6's checkpoint; the open file is still step 3's
  const auto renamed = keel::ckpt::read_container(step3);
  keel::ModelState later;
  keel::ckpt::parse_section<keel::format::Binary>(renamed, *renamed.manifest.find("model"), later);
  REQUIRE(staged.parameters.size() == expected.parameters.size());
  for (std::size_t i = 0; i < staged.parameters.size(); ++i) {
    CAPTURE(staged.parameters[i].name);
    auto handle = staged.parameters[i].tensor;
    keel::ckpt::materialize(handle);
    CHECK_FALSE(keel::ckpt::is_deferred(staged.parameters[i].tensor));  // every handle of it sees the bytes
    CHECK(keel::bitwise_equal(staged.parameters[i].tensor, expected.parameters[i].tensor));
    if (staged.parameters[i].name == "fc1.weight")
      CHECK_FALSE(keel::bitwise_equal(staged.parameters[i].tensor, later.parameters[i].tensor));
  }
  // copy_into reads a placeholder into tensors of every layout: contiguous, or not.
  keel::ModelState again;
  keel::ckpt::parse_section<keel::format::Binary>(container, *container.manifest.find("model"), again, true);
  const auto& placeholder = again.parameters[0].tensor;  // fc1.weight, [512, 64]
  REQUIRE(keel::ckpt::is_deferred(placeholder));
  auto transposed = torch::zeros({64, 512}).t();
  keel::ckpt::copy_into(transposed, placeholder);
  CHECK(keel::bitwise_equal(transposed.contiguous(), expected.parameters[0].tensor));
}

TEST_CASE("a checkpoint changed on disk between the checks and the reads") {
  SyntheticImages data(96, 3);
  const auto dir = fresh_directory("wide-changed");
  auto trainer = make_wide(dir, 3);
  trainer.fit(data);
  const auto file = dir / keel::ckpt::step_file_name(3);
  const auto container = keel::ckpt::read_container(file);
  CHECK(container.source->unchanged());
  keel::ModelState staged;
  keel::ckpt::parse_section<keel::format::Binary>(container, *container.manifest.find("model"), staged, true);
  fs::resize_file(file, 100);  // rewritten in place by someone else
  CHECK_FALSE(container.source->unchanged());
  auto weight = torch::zeros({512, 64});
  CHECK_THROWS_WITH_AS(keel::ckpt::copy_into(weight, staged.parameters[0].tensor),
                       doctest::Contains(doctest::String(("cannot read '" + file.string() + "'").c_str())), keel::ckpt::IoError);
}

/// A plain model member whose assignment from a checkpoint truncates that checkpoint (what
/// another program writing it could do): the load fails after its checks, midway through
/// reading the tensors into place.
struct Saboteur {
  static inline fs::path target;
  std::int64_t value = 0;
  Saboteur() = default;
  Saboteur(const Saboteur&) = default;
  Saboteur& operator=(const Saboteur&) = default;
  Saboteur(Saboteur&&) = default;
  Saboteur& operator=(Saboteur&& other) {
    value = other.value;
    if (!target.empty()) fs::resize_file(target, 0);
    return *this;
  }
  template <class Archive>
  void serialize(Archive& archive) {
    archive(value);
  }
};
struct SabotagedNetImpl : torch::nn::Module {
  SabotagedNetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(64, 512))), fc2(register_module("fc2", torch::nn::Linear(512, 4))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    return torch::nn::functional::cross_entropy(fc2(torch::relu(fc1(b.data.flatten(1)))), b.target);
  }
  BOOST_HANA_DEFINE_STRUCT(SabotagedNetImpl, (torch::nn::Linear, fc1), (torch::nn::Linear, fc2), (Saboteur, saboteur));
};

TEST_CASE("a load that fails after its checks says so, and the trainer refuses to train or save until a load succeeds") {
  using Trainer = keel::Trainer<keel::model<SabotagedNetImpl>, keel::optimizer<keel::optim::AdamW>>;
  SyntheticImages data(96, 3);
  const auto dir = fresh_directory("sabotaged");
  auto make = [&](const fs::path& checkpoint_dir, std::uint64_t seed) {
    keel::seed_everything(seed);
    return Trainer(std::make_shared<SabotagedNetImpl>(),
                   keel::TrainerOptions().max_steps(3).batch_size(8).checkpoint_dir(checkpoint_dir.string()).resume("never"),
                   torch::optim::AdamWOptions(1e-3));
  };
  auto source = make(dir, 1);
  source.fit(data);
  const auto file = dir / keel::ckpt::step_file_name(3);
  const auto copy = dir / "copy.ckpt";
  fs::copy_file(file, copy);

  auto trainer = make(fresh_directory("sabotaged-target"), 2);  // other initial weights
  trainer.fit(data);
  REQUIRE(trainer.state_digest() != source.state_digest());
  Saboteur::target = file;  // the model's members commit before the optimizer's moments are read
  CHECK_THROWS_WITH_AS(trainer.load_checkpoint(file), doctest::Contains("could not be applied to the end after every check had passed"),
                       keel::IncompleteLoadError);
  Saboteur::target.clear();
  CHECK_THROWS_WITH_AS(trainer.save_checkpoint(dir / "partial.ckpt"), doctest::Contains("load a checkpoint again"),
                       keel::IncompleteLoadError);
  CHECK_FALSE(fs::exists(dir / "partial.ckpt"));
  CHECK_THROWS_AS(trainer.state_digest(), keel::IncompleteLoadError);
  CHECK_THROWS_AS(trainer.fit(data), keel::IncompleteLoadError);

  trainer.load_checkpoint(copy);  // a load that succeeds makes the state whole again
  CHECK(trainer.state_digest() == source.state_digest());
}

TEST_CASE("async_save writes the same files as a synchronous save, all committed when fit returns") {
  SyntheticImages data(96, 3);
  auto train = [&](const fs::path& dir, bool async, std::int64_t steps, const std::string& resume,
                   std::int64_t keep_last = 0) {
    keel::seed_everything(1);
    WideTrainer trainer(std::make_shared<WideNetImpl>(),
                        keel::TrainerOptions()
                            .max_steps(steps)
                            .batch_size(8)
                            .checkpoint_dir(dir.string())
                            .save_every_steps(2)
                            .keep_last(keep_last)
                            .async_save(async)
                            .resume(resume),
                        torch::optim::AdamWOptions(1e-3));
    trainer.fit(data);
    return trainer.state_digest();
  };
  const auto sync_dir = fresh_directory("sync-saves"), async_dir = fresh_directory("async-saves");
  const auto reference = train(sync_dir, false, 9, "auto");
  CHECK(train(async_dir, true, 9, "auto") == reference);
  const auto files = keel::ckpt::list_checkpoints(async_dir);
  REQUIRE(files.size() == 5);  // steps 2, 4, 6, 8 and the end, 9
  for (const auto& file : files) {
    CAPTURE(file.path);
    CHECK(read_bytes(file.path) == read_bytes(sync_dir / file.path.filename()));
  }
  CHECK(fs::read_symlink(async_dir / "last.ckpt") == fs::read_symlink(sync_dir / "last.ckpt"));
  for (const auto& entry : fs::directory_iterator(async_dir))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);

  // Resumed with async saves from a checkpoint an async run wrote: the same end.
  fs::remove(async_dir / keel::ckpt::step_file_name(9));
  fs::remove(async_dir / keel::ckpt::step_file_name(8));
  keel::ckpt::point_link_atomically(async_dir / "last.ckpt", keel::ckpt::step_file_name(6));
  CHECK(train(async_dir, true, 9, "auto") == reference);
  CHECK(read_bytes(async_dir / keel::ckpt::step_file_name(9)) == read_bytes(sync_dir / keel::ckpt::step_file_name(9)));

  // Rotation (on the writing thread with async_save) leaves the same files, and has run when
  // each save ends.
  for (const bool async : {false, true}) {
    CAPTURE(async);
    const auto dir = fresh_directory(async ? "async-rotated" : "sync-rotated");
    std::vector<std::size_t> counts;
    CountAtSaveEnd::counts = &counts;
    CHECK(train(dir, async, 9, "auto", 2) == reference);
    CountAtSaveEnd::counts = nullptr;
    CHECK(counts == std::vector<std::size_t>{1, 2, 2, 2, 2});  // saves at steps 2, 4, 6, 8, 9
    const auto kept = keel::ckpt::list_checkpoints(dir);
    REQUIRE(kept.size() == 2);
    CHECK(kept[0].global_step == 9);
    CHECK(kept[1].global_step == 8);
    CHECK(fs::read_symlink(dir / "last.ckpt") == keel::ckpt::step_file_name(9));
  }
}

TEST_CASE("the writing thread of async_save runs one job at a time, keeps its exception, and is waited for") {
  const auto caller = std::this_thread::get_id();
  std::vector<std::thread::id> ran_on;
  bool slow_job_done = false;
  {
    keel::loop::BackgroundSave background;
    CHECK_FALSE(background.in_flight());
    CHECK(background.collect() == nullptr);  // nothing in flight: nothing to wait for
    for (int i = 0; i < 3; ++i) {
      background.start([&] { ran_on.push_back(std::this_thread::get_id()); });
      CHECK(background.in_flight());
      CHECK(background.collect() == nullptr);
      CHECK_FALSE(background.in_flight());
    }
    background.start([] { throw std::runtime_error("disk gone"); });
    const std::exception_ptr error = background.collect();
    REQUIRE(error != nullptr);
    CHECK_THROWS_WITH(std::rethrow_exception(error), "disk gone");
    background.start([] {});
    CHECK(background.collect() == nullptr);  // the next job starts without the last one's error
    background.start([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      slow_job_done = true;
    });
  }  // not collected: the destructor waits for it
  CHECK(slow_job_done);
  REQUIRE(ran_on.size() == 3);
  CHECK(ran_on[0] != caller);
  CHECK(ran_on[1] == ran_on[0]);  // one thread, kept between jobs
  CHECK(ran_on[2] == ran_on[0]);
}

/// Turns the checkpoint directory into a file right after step 2 (before its save) and takes
/// the file away when the save of step 4 begins (after the save of step 2 was collected, with
/// async_save too). No state of its own: the directory is the test's.
struct DirectoryBecomesFile {
  static inline const fs::path* dir = nullptr;
  void on_optimizer_step_end(keel::Context& context) {
    if (!dir || context.global_step() != 2) return;
    fs::remove_all(*dir);
    std::ofstream(*dir) << "not a directory";
  }
  void on_save_checkpoint_start(keel::Context& context) {
    if (dir && context.global_step() == 4) fs::remove(*dir);
  }
};

TEST_CASE("a checkpoint directory that cannot be made fails that save only, under continue_on_save_error") {
  using Trainer =
      keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>, keel::callbacks<DirectoryBecomesFile>>;
  SyntheticImages data(96, 3);
  for (const bool async : {false, true}) {
    for (const bool go_on : {true, false}) {
      CAPTURE(async);
      CAPTURE(go_on);
      const auto dir = fresh_directory(std::string("dir-becomes-file-") + (async ? "async" : "sync"));
      DirectoryBecomesFile::dir = &dir;
      keel::seed_everything(1);
      Trainer trainer(std::make_shared<SmallNetImpl>(),
                      keel::TrainerOptions()
                          .max_steps(6)
                          .batch_size(8)
                          .checkpoint_dir(dir.string())
                          .save_every_steps(2)
                          .async_save(async)
                          .continue_on_save_error(go_on),
                      torch::optim::AdamWOptions(1e-3));
      if (go_on) {
        trainer.fit(data);  // the save of step 2 fails; the directory is made again for step 4
        CHECK(trainer.failed_saves() == 1);
        const auto files = keel::ckpt::list_checkpoints(dir);
        REQUIRE(files.size() == 2);
        CHECK(files[0].global_step == 6);
        CHECK(files[1].global_step == 4);
        CHECK(fs::read_symlink(dir / "last.ckpt") == keel::ckpt::step_file_name(6));
      } else {
        // Synchronous: thrown by the save of step 2; async: when it is collected, at step 4.
        CHECK_THROWS_WITH_AS(trainer.fit(data), doctest::Contains("create checkpoint directory"), keel::ckpt::IoError);
        CHECK(fs::is_regular_file(dir));
      }
      DirectoryBecomesFile::dir = nullptr;
    }
  }
}

/// A value whose save writes a tensor through an archive of its own, on a stream of its own,
/// while keel's archive of the section is writing it: that archive's tensor must stay whole.
struct OwnArchive {
  const torch::Tensor* tensor;
  std::string* bytes;
  template <class Archive>
  void save(Archive& archive) const {
    std::ostringstream own;
    {
      cereal::PortableBinaryOutputArchive own_archive(own);
      own_archive(*tensor);
    }
    *bytes = own.str();
    archive(*tensor);
  }
};

TEST_CASE("a snapshot copies its archives' large tensors, never a user's own archive's, and writes the state it took") {
  const auto dir = fresh_directory("snapshot-capture");
  auto big = torch::randn({256, 128});  // 128 KiB: copied
  auto other = torch::randn({3, 200, 100}).to(torch::kFloat64).transpose(0, 2);  // 480 KB, not contiguous
  const auto small = torch::randn({8});  // serialized inline
  std::string user_bytes;
  auto write_sections = [&](keel::ckpt::SectionWriter& writer) {
    writer.section("portable", "test", 1, [&](std::ostream& out) {
      cereal::PortableBinaryOutputArchive archive(out);
      keel::ckpt::adopt_archive(out, archive);  // as the section writers of keel do
      archive(small, big, OwnArchive{&big, &user_bytes}, small);
    });
    writer.section("plain", "test", 1, [&](std::ostream& out) {
      cereal::BinaryOutputArchive archive(out);
      keel::ckpt::adopt_archive(out, archive);
      archive(other, small, big);
    });
    writer.section("not adopted", "test", 1, [&](std::ostream& out) {
      cereal::PortableBinaryOutputArchive archive(out);
      archive(big);
    });
  };
  keel::ckpt::write_atomically(dir / "direct.ckpt", [&](keel::ckpt::HashingFileSink& sink) {
    keel::ckpt::ContainerWriter writer(sink, "test", 1);
    write_sections(writer);
    writer.finish({}, {{"fact", "1"}});
  });
  const std::string direct_user_bytes = user_bytes;
  CHECK(user_bytes.size() > 128 * 1024);

  keel::ckpt::SectionSnapshot snapshot;
  const void* first_memory = nullptr;
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    snapshot.clear();
    write_sections(snapshot);
    snapshot.finish({}, {{"fact", "1"}});
    CHECK(snapshot.captured() == 4);  // big twice in "portable", other and big in "plain"
    CHECK(user_bytes == direct_user_bytes);  // the user's archive wrote its tensor whole
    const auto copy = snapshot.copy_of(big);
    REQUIRE(copy.defined());
    CHECK(keel::bitwise_equal(copy, big));
    CHECK(copy.data_ptr() != big.data_ptr());
    CHECK(keel::bitwise_equal(snapshot.copy_of(other), other));
    CHECK_FALSE(snapshot.copy_of(small).defined());
    CHECK_FALSE(snapshot.copy_of(big.view({128, 256})).defined());  // a view is a tensor of its own
    if (round == 0) first_memory = copy.data_ptr();
    CHECK(copy.data_ptr() == first_memory);  // the second snapshot reuses the first one's memory

    const auto taken = big.clone();
    big.add_(1);  // training goes on while the file is written
    snapshot.write_file(dir / "snapshot.ckpt", "test", 1);
    big.copy_(taken);
    CHECK(read_bytes(dir / "snapshot.ckpt") == read_bytes(dir / "direct.ckpt"));
  }

  // A snapshot whose taking failed is never written.
  snapshot.clear();
  CHECK_THROWS_AS(snapshot.section("x", "test", 1, [&](std::ostream& out) {
    cereal::PortableBinaryOutputArchive archive(out);
    keel::ckpt::adopt_archive(out, archive);
    archive(big);
    throw std::runtime_error("failed while taking it");
  }), std::runtime_error);
  CHECK_THROWS_AS(snapshot.write_file(dir / "failed.ckpt", "test", 1), std::logic_error);
  CHECK_FALSE(fs::exists(dir / "failed.ckpt"));
}

}  // namespace checkpoint_test
