// Hook detection (including near misses) and dispatch: every callback gets every event, in
// declaration order, whatever the others do.
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace hooks_test {

struct Exact {
  void on_fit_start(keel::Context&) {}
};
struct ConstHook {
  void on_fit_start(keel::Context&) const {}
};
struct ConstContext {
  void on_fit_start(const keel::Context&) {}
};
struct GenericHook {
  template <class C>
  void on_fit_start(C&) {}
};
struct NoArgument {
  void on_fit_start() {}
};
struct ReturnsBool {
  bool on_fit_start(keel::Context&) { return true; }
};
struct DataMember {
  int on_fit_start = 0;
};
struct ByValue {  // Context is not copyable, so this cannot be called
  void on_fit_start(keel::Context) {}
};
struct Nothing {};

using namespace keel::hooks;
static_assert(names_on_fit_start<Exact> && calls_on_fit_start<Exact>);
static_assert(calls_on_fit_start<ConstHook> && calls_on_fit_start<ConstContext> && calls_on_fit_start<GenericHook>);
static_assert(names_on_fit_start<NoArgument> && !calls_on_fit_start<NoArgument>);
static_assert(names_on_fit_start<ReturnsBool> && !calls_on_fit_start<ReturnsBool>);
static_assert(names_on_fit_start<DataMember> && !calls_on_fit_start<DataMember>);
static_assert(names_on_fit_start<ByValue> && !calls_on_fit_start<ByValue>);
static_assert(!names_on_fit_start<Nothing> && !calls_on_fit_start<Nothing>);
static_assert(!names_on_train_epoch_end<Exact>);
static_assert(check_hooks<Exact>() && check_hooks<GenericHook>() && check_hooks<Nothing>());

std::vector<std::string>& journal() {
  static std::vector<std::string> events;
  return events;
}

/// Records every event it gets, tagged with its name.
template <char Tag>
struct Recorder {
  template <class Archive>
  void serialize(Archive&) {}
#define KEEL_TEST_RECORD(hook) \
  void hook(keel::Context&) { journal().push_back(std::string(1, Tag) + ":" #hook); }
  KEEL_HOOKS(KEEL_TEST_RECORD)
#undef KEEL_TEST_RECORD
};

/// Asks to stop at the first optimizer step: later callbacks must still get that event.
struct StopAtFirstStep {
  void on_optimizer_step_end(keel::Context& ctx) { ctx.request_stop(); }
};

TEST_CASE("every callback receives every event, in declaration order") {
  journal().clear();
  keel_test::SyntheticImages data(32, 1);
  keel::seed_everything(0);
  keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::callbacks<Recorder<'a'>, StopAtFirstStep, Recorder<'b'>>>
      trainer(std::make_shared<keel_test::SmallNetImpl>(), keel::TrainerOptions().max_epochs(1).batch_size(8));
  trainer.fit(data);

  const auto& events = journal();
  REQUIRE(events.size() % 2 == 0);
  for (std::size_t i = 0; i < events.size(); i += 2) {
    CHECK(events[i][0] == 'a');
    CHECK(events[i + 1][0] == 'b');
    CHECK(events[i].substr(1) == events[i + 1].substr(1));
  }
  std::vector<std::string> a_events;
  for (const auto& e : events)
    if (e[0] == 'a') a_events.push_back(e.substr(2));
  const std::vector<std::string> expected = {"on_fit_start",         "on_train_epoch_start",
                                             "on_train_batch_start", "on_train_batch_end",
                                             "on_optimizer_step_start", "on_optimizer_step_end",
                                             "on_fit_end"};
  CHECK(a_events == expected);  // the stop request ends training after the first step
  CHECK(trainer.loop().global_step == 1);
  CHECK(trainer.loop().stop_requested);
}

TEST_CASE("on_exception reaches every callback and the exception still propagates") {
  journal().clear();
  struct Thrower {
    void on_train_batch_end(keel::Context&) { throw std::runtime_error("boom"); }
  };
  keel_test::SyntheticImages data(16, 1);
  keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::callbacks<Thrower, Recorder<'z'>>> trainer(
      std::make_shared<keel_test::SmallNetImpl>(), keel::TrainerOptions().max_epochs(1).batch_size(8));
  CHECK_THROWS_WITH(trainer.fit(data), "boom");
  REQUIRE(!journal().empty());
  CHECK(journal().back() == "z:on_exception");
}

}  // namespace hooks_test
