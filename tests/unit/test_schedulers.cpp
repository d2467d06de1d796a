// keel's schedulers against PyTorch's: every case of tests/fixtures/schedulers/pytorch_lr.txt
// (written by generate.py with Debian's python3-torch) drives the keel scheduler of the same
// name and arguments on an optimizer with two param groups, and each group's learning rate
// before every step must equal PyTorch's to 1e-12 relative. Also: the epoch interval, a
// plateau scheduler's history surviving a save and load, and the refusals of bad options.
#include <keel/keel.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <cereal/archives/binary.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace schedulers_test {

using namespace keel::sched;

// An SGD optimizer with two param groups, as generate.py makes it.
struct TwoGroups {
  torch::Tensor a = torch::zeros({1}, torch::requires_grad());
  torch::Tensor b = torch::zeros({1}, torch::requires_grad());
  std::unique_ptr<torch::optim::SGD> optimizer;
  explicit TwoGroups(double lr_a = 0.1, double lr_b = 0.02) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{a}, std::make_unique<torch::optim::SGDOptions>(lr_a));
    groups.emplace_back(std::vector<torch::Tensor>{b}, std::make_unique<torch::optim::SGDOptions>(lr_b));
    optimizer = std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(lr_a));
  }
  std::vector<double> lrs() const {
    std::vector<double> out;
    for (const auto& group : optimizer->param_groups()) out.push_back(group.options().get_lr());
    return out;
  }
};

// A case's arguments: "key=value" words; a value may be "Name(key=value,...)".
struct Args {
  std::map<std::string, std::string> values;
  static Args parse(const std::string& text, char separator) {
    Args out;
    std::string word;
    int depth = 0;
    auto flush = [&] {
      if (word.empty()) return;
      const auto eq = word.find('=');
      REQUIRE_MESSAGE(eq != std::string::npos, "fixture argument without '=': " << word);
      out.values[word.substr(0, eq)] = word.substr(eq + 1);
      word.clear();
    };
    for (const char c : text) {
      if (c == '(') ++depth;
      if (c == ')') --depth;
      if (c == separator && depth == 0) {
        flush();
      } else {
        word += c;
      }
    }
    flush();
    return out;
  }
  const std::string& text(const std::string& key) const {
    const auto found = values.find(key);
    REQUIRE_MESSAGE(found != values.end(), "fixture case lacks the argument " << key);
    return found->second;
  }
  double real(const std::string& key) const { return std::stod(text(key)); }
  std::int64_t integer(const std::string& key) const { return std::stoll(text(key)); }
  std::vector<std::int64_t> integers(const std::string& key) const {
    std::vector<std::int64_t> out;
    std::stringstream in(text(key));
    std::string item;
    while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
    return out;
  }
  // "Name(k=v,...)" -> Name and its arguments
  static std::pair<std::string, Args> call(const std::string& text) {
    const auto open = text.find('(');
    REQUIRE(open != std::string::npos);
    REQUIRE(text.back() == ')');
    return {text.substr(0, open), parse(text.substr(open + 1, text.size() - open - 2), ',')};
  }
};

StepLROptions step_lr(const Args& a) { return StepLROptions(a.integer("step_size"), a.real("gamma")); }
ExponentialLROptions exponential_lr(const Args& a) { return ExponentialLROptions(a.real("gamma")); }
LinearLROptions linear_lr(const Args& a) {
  return LinearLROptions(a.real("start_factor"), a.real("end_factor"), a.integer("total_iters"));
}
CosineAnnealingLROptions cosine_annealing_lr(const Args& a) {
  return CosineAnnealingLROptions(a.integer("T_max")).eta_min(a.real("eta_min"));
}

// The functions generate.py's LambdaLR cases use, by the same names.
std::function<double(std::int64_t)> lambda_named(const std::string& name) {
  if (name == "power_0.98") return [](std::int64_t s) { return std::pow(0.98, static_cast<double>(s)); };
  if (name == "inverse_0.1") return [](std::int64_t s) { return 1.0 / (1.0 + 0.1 * static_cast<double>(s)); };
  FAIL("no C++ function for the LambdaLR case " << name);
  return {};
}

// Steps the scheduler like generate.py: record the rates, then step (with the case's metric).
using Run = std::function<std::vector<std::vector<double>>(TwoGroups&, std::size_t steps, const std::vector<double>& metrics)>;

template <class S>
Run stepping(typename S::Options options) {
  return [options](TwoGroups& groups, std::size_t steps, const std::vector<double>& metrics) {
    S scheduler(*groups.optimizer, options);
    std::vector<std::vector<double>> out;
    for (std::size_t i = 0; i < steps; ++i) {
      out.push_back(groups.lrs());
      if constexpr (std::is_same_v<S, ReduceLROnPlateau>) {
        scheduler.step(metrics.at(i));
      } else {
        scheduler.step();
      }
    }
    return out;
  };
}

Run keel_scheduler(const std::string& name, const Args& a) {
  if (name == "StepLR") return stepping<StepLR>(step_lr(a));
  if (name == "MultiStepLR") return stepping<MultiStepLR>(MultiStepLROptions(a.integers("milestones"), a.real("gamma")));
  if (name == "ExponentialLR") return stepping<ExponentialLR>(exponential_lr(a));
  if (name == "CosineAnnealingLR") return stepping<CosineAnnealingLR>(cosine_annealing_lr(a));
  if (name == "CosineAnnealingWarmRestarts")
    return stepping<CosineAnnealingWarmRestarts>(
        CosineAnnealingWarmRestartsOptions(a.integer("T_0")).T_mult(a.integer("T_mult")).eta_min(a.real("eta_min")));
  if (name == "LinearLR") return stepping<LinearLR>(linear_lr(a));
  if (name == "CosineWarmup") return stepping<CosineWarmup>(CosineWarmupOptions(a.integer("warmup_steps"), a.integer("total_steps")));
  if (name == "OneCycleLR")
    return stepping<OneCycleLR>(OneCycleLROptions(a.integer("total_steps"))
                                    .pct_start(a.real("pct_start"))
                                    .anneal_strategy(a.text("anneal_strategy") == "cos" ? Anneal::cos : Anneal::linear)
                                    .div_factor(a.real("div_factor"))
                                    .final_div_factor(a.real("final_div_factor"))
                                    .three_phase(a.integer("three_phase") != 0));
  if (name == "ReduceLROnPlateau")
    return stepping<ReduceLROnPlateau>(
        ReduceLROnPlateauOptions("val_metric")
            .mode(a.text("mode") == "min" ? keel::MonitorMode::min : keel::MonitorMode::max)
            .factor(a.real("factor"))
            .patience(a.integer("patience"))
            .threshold(a.real("threshold"))
            .threshold_mode(a.text("threshold_mode") == "rel" ? ThresholdMode::rel : ThresholdMode::abs)
            .cooldown(a.integer("cooldown"))
            .min_lr(a.real("min_lr"))
            .eps(a.real("eps")));
  if (name == "LambdaLR") return stepping<LambdaLR>(LambdaLROptions(a.text("function"), lambda_named(a.text("function"))));
  if (name == "SequentialLR") {
    const auto [first, first_args] = Args::call(a.text("first"));
    const auto [then, then_args] = Args::call(a.text("then"));
    const auto milestone = a.integer("milestone");
    if (first == "LinearLR" && then == "ExponentialLR")
      return stepping<Sequential<LinearLR, ExponentialLR>>({linear_lr(first_args), exponential_lr(then_args), milestone});
    if (first == "StepLR" && then == "CosineAnnealingLR")
      return stepping<Sequential<StepLR, CosineAnnealingLR>>({step_lr(first_args), cosine_annealing_lr(then_args), milestone});
    FAIL("no C++ mapping for SequentialLR of " << first << " then " << then);
  }
  FAIL("no keel scheduler for the fixture case " << name);
  return {};
}

struct Case {
  std::string line;  // "case Name args..."
  std::vector<double> metrics;
  std::vector<std::vector<double>> lrs;
};

std::vector<Case> read_fixture() {
  std::ifstream in(std::string(KEEL_FIXTURES) + "/schedulers/pytorch_lr.txt");
  REQUIRE_MESSAGE(in, "cannot read the fixture; regenerate it with tests/fixtures/schedulers/generate.py");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string first;
    words >> first;
    if (first == "case") {
      cases.push_back(Case{line.substr(5), {}, {}});
    } else if (first == "metrics") {
      double v;
      while (words >> v) cases.back().metrics.push_back(v);
    } else if (first != "end") {
      std::vector<double> row{std::stod(first)};
      double v;
      while (words >> v) row.push_back(v);
      cases.back().lrs.push_back(row);
    }
  }
  return cases;
}

TEST_CASE("every keel scheduler follows PyTorch's scheduler of the same name to 1e-12") {
  const auto cases = read_fixture();
  std::map<std::string, int> per_scheduler;
  double worst = 0.0;  // the largest relative difference seen (printed with -s)
  for (const auto& c : cases) {
    CAPTURE(c.line);
    const auto space = c.line.find(' ');
    const std::string name = c.line.substr(0, space);
    ++per_scheduler[name];
    TwoGroups groups;
    const auto run = keel_scheduler(name, Args::parse(c.line.substr(space + 1), ' '));
    const auto ours = run(groups, c.lrs.size(), c.metrics);
    REQUIRE(ours.size() == c.lrs.size());
    int mismatches = 0;
    for (std::size_t step = 0; step < ours.size(); ++step) {
      REQUIRE(ours[step].size() == c.lrs[step].size());
      for (std::size_t g = 0; g < ours[step].size(); ++g) {
        const double expected = c.lrs[step][g];
        if (expected != 0.0) worst = std::max(worst, std::abs(ours[step][g] - expected) / std::abs(expected));
        if (!(std::abs(ours[step][g] - expected) <= 1e-12 * std::abs(expected)) && mismatches++ < 3)  // NaN fails
          FAIL_CHECK("step " << step << " group " << g << ": keel " << ours[step][g] << ", PyTorch " << expected);
      }
    }
    CHECK(mismatches == 0);
  }
  // The bar: every scheduler family, two argument sets each, a few hundred steps.
  for (const char* name : {"StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
                           "LinearLR", "CosineWarmup", "OneCycleLR", "ReduceLROnPlateau", "LambdaLR", "SequentialLR"}) {
    CAPTURE(name);
    CHECK(per_scheduler[name] >= 2);
  }
  MESSAGE("largest relative difference from PyTorch over " << cases.size() << " cases: " << worst);
  REQUIRE(!cases.empty());
  CHECK(cases.front().lrs.size() >= 200);
}

TEST_CASE("a scheduler of the epoch interval advances at epoch ends, not optimizer steps") {
  TwoGroups groups;
  StepLR scheduler(*groups.optimizer, StepLROptions(2, 0.5).interval(Interval::epoch));
  for (int i = 0; i < 5; ++i) scheduler.step();  // optimizer steps: nothing moves
  CHECK(scheduler.steps() == 0);
  CHECK(groups.lrs() == std::vector<double>{0.1, 0.02});
  scheduler.on_epoch_end();
  CHECK(groups.lrs() == std::vector<double>{0.1, 0.02});
  scheduler.on_epoch_end();
  CHECK(scheduler.steps() == 2);
  CHECK(groups.lrs() == std::vector<double>{0.1 * 0.5, 0.02 * 0.5});
  keel::Fingerprint fingerprint;
  scheduler.describe(fingerprint, "scheduler.");
  CHECK(std::find(fingerprint.entries().begin(), fingerprint.entries().end(),
                  keel::Fingerprint::Entry{"scheduler.interval", "epoch"}) != fingerprint.entries().end());

  TwoGroups per_step;
  StepLR by_step(*per_step.optimizer, StepLROptions(2, 0.5));
  by_step.on_epoch_end();  // a scheduler of the step interval ignores epoch ends
  by_step.step();
  by_step.step();
  CHECK(by_step.steps() == 2);
  CHECK(per_step.lrs() == std::vector<double>{0.1 * 0.5, 0.02 * 0.5});
}

TEST_CASE("ReduceLROnPlateau's history survives a save and load: the next reduction comes at the same validation") {
  const auto options = ReduceLROnPlateauOptions("val_loss").factor(0.5).patience(2).cooldown(1);
  const std::vector<double> metrics{1.0, 0.9, 0.95, 0.95, 0.95, 0.94, 0.96, 0.97, 0.97, 0.97, 0.5, 0.6, 0.6, 0.6};
  TwoGroups straight_groups;
  ReduceLROnPlateau straight(*straight_groups.optimizer, options);
  std::vector<std::vector<double>> expected;
  for (const double m : metrics) {
    straight.on_validation_end({{"val_loss", m}});
    expected.push_back(straight_groups.lrs());
  }
  CHECK(expected.back()[0] < 0.1);  // it reduced

  for (std::size_t cut = 1; cut < metrics.size(); ++cut) {
    CAPTURE(cut);
    std::stringstream bytes;
    {
      TwoGroups groups;
      ReduceLROnPlateau before(*groups.optimizer, options);
      for (std::size_t i = 0; i < cut; ++i) before.on_validation_end({{"val_loss", metrics[i]}});
      cereal::BinaryOutputArchive out(bytes);
      out(before);
    }
    TwoGroups groups;
    ReduceLROnPlateau after(*groups.optimizer, options);
    cereal::BinaryInputArchive in(bytes);
    in(after);
    // (a Trainer restores the optimizer's rates from the optimizer's own section)
    for (std::size_t g = 0; g < 2; ++g) groups.optimizer->param_groups()[g].options().set_lr(after.lrs()[g]);
    for (std::size_t i = cut; i < metrics.size(); ++i) {
      after.on_validation_end({{"val_loss", metrics[i]}});
      CHECK(groups.lrs() == expected[i]);
    }
  }
}

TEST_CASE("scheduler options that cannot work are refused with the value and the rule") {
  TwoGroups groups;
  auto& optimizer = *groups.optimizer;
  CHECK_THROWS_WITH_AS(StepLR(optimizer, StepLROptions(0)), doctest::Contains("step_size must be positive, got 0"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS(MultiStepLR(optimizer, MultiStepLROptions({})), doctest::Contains("milestones is empty"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS(ExponentialLR(optimizer, ExponentialLROptions(-1.0)), doctest::Contains("gamma must be >= 0"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS(CosineAnnealingWarmRestarts(optimizer, CosineAnnealingWarmRestartsOptions(10).T_mult(0)),
                       doctest::Contains("T_mult must be an integer >= 1, got 0"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(LinearLR(optimizer, LinearLROptions(0.0, 1.0, 10)), doctest::Contains("start_factor must be in (0, 1]"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS(OneCycleLR(optimizer, OneCycleLROptions(10).pct_start(0.05)),
                       doctest::Contains("leaves a phase without steps"), keel::ConfigError);
  CHECK_THROWS_WITH_AS(ReduceLROnPlateau(optimizer, ReduceLROnPlateauOptions().factor(1.0)),
                       doctest::Contains("factor must be in (0, 1), got 1"), keel::ConfigError);
  ReduceLROnPlateau plateau(optimizer, ReduceLROnPlateauOptions("val_acc"));
  CHECK_THROWS_WITH_AS(plateau.on_validation_end({{"val_loss", 1.0}}),
                       doctest::Contains("monitored metric 'val_acc' is not among the validation metrics"),
                       keel::ConfigError);
  CHECK_THROWS_WITH_AS((Sequential<LinearLR, ExponentialLR>(optimizer, {LinearLROptions(0.5, 1.0, 4), ExponentialLROptions(0.9), 0})),
                       doctest::Contains("milestone must be positive"), keel::ConfigError);
}

}  // namespace schedulers_test
