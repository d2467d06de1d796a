// keel-ckpt against real checkpoints: info, verify, digest, diff, and an export that Python's
// torch.load reads with the very same values.
#include "support/process.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace keel_ckpt_test {

using keel_test::run;
using keel_test::value_of;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-tool-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// Trains the driver for `steps` steps into `dir`; returns the printed state digest.
std::string train(const fs::path& dir, int steps, const std::string& variant = "adamw_cosine") {
  const auto result = run({KEEL_RESUME_DRIVER, "--variant", variant, "--ckpt-dir", dir.string(), "--max-steps",
                           std::to_string(steps), "--epochs", "10", "--save-every-steps", "5"});
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  return value_of(result.output, "state_digest").value_or("");
}

keel_test::ProcessResult tool(std::vector<std::string> args) {
  args.insert(args.begin(), KEEL_CKPT_TOOL);
  return run(args);
}

TEST_CASE("keel-ckpt info, verify and digest describe a real checkpoint") {
  const auto dir = fresh_directory("info");
  const std::string digest = train(dir, 10);
  const auto file = (dir / keel::ckpt::step_file_name(10)).string();

  const auto info = tool({"info", file, "--tensors"});
  CHECK(info.exit_code == 0);
  CHECK(info.output.find("global step 10") != std::string::npos);
  CHECK(info.output.find("optimizer      keel::optim::AdamW") != std::string::npos);
  CHECK(info.output.find("optimizer.lr = 0.003") != std::string::npos);
  CHECK(info.output.find("model/bn.running_mean float32[6]") != std::string::npos);
  CHECK(info.output.find("optimizer/fc.weight/exp_avg float32[4, 96]") != std::string::npos);
  CHECK(info.output.find("state digest:      " + digest) != std::string::npos);

  const auto verify = tool({"verify", file});
  CHECK(verify.exit_code == 0);
  CHECK(verify.output.find("ok: ") == 0);

  const auto printed = tool({"digest", file});
  CHECK(printed.exit_code == 0);
  CHECK(printed.output == digest + "\n");
}

TEST_CASE("keel-ckpt verify fails with the reason on a damaged file") {
  const auto dir = fresh_directory("verify");
  train(dir, 5);
  const auto file = dir / keel::ckpt::step_file_name(5);
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes[bytes.size() / 2] ^= 0x40;
  const auto damaged = dir / "damaged.ckpt";
  std::ofstream(damaged, std::ios::binary) << bytes;
  const auto result = tool({"verify", damaged.string()});
  CHECK(result.exit_code == 1);
  CHECK(result.output.find("checksum") != std::string::npos);

  const auto missing = tool({"verify", (dir / "nope.ckpt").string()});
  CHECK(missing.exit_code == 1);
  CHECK(missing.output.find("No such file or directory") != std::string::npos);
}

TEST_CASE("keel-ckpt diff names the differing sections and tensors") {
  const auto dir = fresh_directory("diff");
  train(dir, 10);
  const auto at5 = (dir / keel::ckpt::step_file_name(5)).string();
  const auto at10 = (dir / keel::ckpt::step_file_name(10)).string();
  const auto same = tool({"diff", at10, at10});
  CHECK(same.exit_code == 0);
  CHECK(same.output.find("identical state") != std::string::npos);
  const auto different = tool({"diff", at5, at10});
  CHECK(different.exit_code == 1);
  CHECK(different.output.find("section model: differs") != std::string::npos);
  CHECK(different.output.find("tensor model/fc.weight: max |a - b| = ") != std::string::npos);
  CHECK(different.output.find("tensor optimizer/conv.weight/exp_avg_sq: max |a - b| = ") != std::string::npos);
  // the probe's engine
  CHECK(different.output.find("section callback.(anonymous namespace)::RandomProbe: differs") != std::string::npos);
}

/// Compares print_export.py's lines (`<key> <dtype> <shape> <values...>`) with `expected`, value
/// for value; every expected tensor must appear once.
void check_printed_export(const std::string& printed, const std::map<std::string, torch::Tensor>& expected) {
  std::istringstream lines(printed);
  std::string line;
  std::size_t seen = 0;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string key, dtype, shape;
    fields >> key >> dtype >> shape;
    CAPTURE(key);
    auto found = expected.find(key);
    REQUIRE(found != expected.end());
    const auto values = found->second.to(torch::kFloat64).reshape(-1).contiguous();
    const double* want = values.data_ptr<double>();
    std::string text;
    std::int64_t i = 0;
    while (fields >> text) {
      REQUIRE(i < values.numel());
      CHECK(std::strtod(text.c_str(), nullptr) == want[i]);  // exact: float32 values are doubles exactly
      ++i;
    }
    CHECK(i == values.numel());
    CHECK(dtype == keel::dtype_name(found->second.scalar_type()));
    ++seen;
  }
  CHECK(seen == expected.size());
}

TEST_CASE("keel-ckpt export writes what Python's torch.load reads, value for value") {
  REQUIRE_MESSAGE(fs::exists("/usr/bin/python3"), "Debian's python3 is missing: apt-get install python3-torch");
  const auto dir = fresh_directory("export");
  train(dir, 10, "sgd_step");
  const auto file = dir / keel::ckpt::step_file_name(10);
  const auto out = dir / "model.pt";
  const auto exported = tool({"export", file.string(), out.string(), "--optimizer"});
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);

  const auto loaded = run({"/usr/bin/python3", KEEL_PRINT_EXPORT_SCRIPT, out.string()});
  INFO(loaded.output);
  REQUIRE(loaded.exit_code == 0);

  // The same tensors, read from the checkpoint by keel.
  const auto container = keel::ckpt::read_container(file);
  keel::ModelState model;
  keel::ckpt::parse_section<keel::format::Binary>(container, *container.manifest.find("model"), model);
  keel::optim::OptimizerState optimizer;
  keel::ckpt::parse_section<keel::format::Binary>(container, *container.manifest.find("optimizer"), optimizer);
  std::map<std::string, torch::Tensor> expected;
  for (const auto& t : model.parameters) expected["model/" + t.name] = t.tensor;
  for (const auto& t : model.buffers) expected["model/" + t.name] = t.tensor;
  for (const auto& p : optimizer.params) {
    expected["optimizer/" + p.name + ".step"] = torch::tensor(p.step);
    for (const auto& [name, tensor] : p.tensors)
      if (tensor.defined()) expected["optimizer/" + p.name + "." + name] = tensor;
  }

  check_printed_export(loaded.output, expected);
}

TEST_CASE("keel-ckpt export --ema writes keel::EMA's average of the weights") {
  REQUIRE_MESSAGE(fs::exists("/usr/bin/python3"), "Debian's python3 is missing: apt-get install python3-torch");
  const auto dir = fresh_directory("export-ema");
  train(dir, 10, "sgd_ema");
  const auto file = dir / keel::ckpt::step_file_name(10);
  const auto out = dir / "average.pt";
  const auto exported = tool({"export", file.string(), out.string(), "--ema"});
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);
  CHECK(exported.output.find("averaged model tensors (keel::EMA)") != std::string::npos);
  const auto loaded = run({"/usr/bin/python3", KEEL_PRINT_EXPORT_SCRIPT, out.string()});
  INFO(loaded.output);
  REQUIRE(loaded.exit_code == 0);

  // The average as keel reads it, which is not the weights.
  const auto container = keel::ckpt::read_container(file);
  keel::EMA ema;
  keel::ckpt::parse_section<keel::format::Binary>(container, *container.manifest.find("callback.keel::EMA"), ema);
  keel::ModelState model;
  keel::ckpt::parse_section<keel::format::Binary>(container, *container.manifest.find("model"), model);
  std::map<std::string, torch::Tensor> expected;
  for (const auto& t : ema.average().parameters) expected[t.name] = t.tensor;
  for (const auto& t : ema.average().buffers) expected[t.name] = t.tensor;
  REQUIRE(ema.updates() == 10);
  CHECK_FALSE(torch::equal(ema.average().parameters.at(0).tensor, model.parameters.at(0).tensor));
  check_printed_export(loaded.output, expected);

  // A checkpoint without keel::EMA: refused with the reason.
  const auto plain_dir = fresh_directory("export-no-ema");
  train(plain_dir, 5, "sgd_step");
  const auto refused = tool({"export", (plain_dir / keel::ckpt::step_file_name(5)).string(), out.string(), "--ema"});
  CHECK(refused.exit_code == 2);
  CHECK(refused.output.find("has no section 'callback.keel::EMA' (it was trained without keel::EMA)") != std::string::npos);
}

}  // namespace keel_ckpt_test
