// The compile-time guarantee, one case per rule and role (keel/state_check.hpp,
// keel/model_check.hpp, keel/hooks.hpp). Built as is, every case is in its accepted
// form. Built with KEEL_COMPILE_FAIL=<n>, case n takes its refused form and the Trainer must not
// compile, with the message expect_failure.py expects and an instantiation trace that names the
// user's type. KEEL_COMPILE_FAIL=-1 refuses every case at once: the test builds that (one compile
// instead of one per case; each case's refused type is its own, so one refusal cannot hide
// another) and finds each case's message with its user's type in the same diagnostic.
#include "net.hpp"

#include <cereal/types/vector.hpp>

#ifndef KEEL_COMPILE_FAIL
#define KEEL_COMPILE_FAIL 0
#endif
#define KEEL_BREAK(n) (KEEL_COMPILE_FAIL == n || KEEL_COMPILE_FAIL == -1)

// 1. The model: a plain data member that influences forward must be declared.
struct CountingNet : torch::nn::Module {
  CountingNet() : fc(register_module("fc", torch::nn::Linear(2, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) {
    ++calls;
    return fc(b.data).sum() * static_cast<double>(calls);
  }
#if KEEL_BREAK(1)
  torch::nn::Linear fc;
  std::int64_t calls = 0;
#else
  BOOST_HANA_DEFINE_STRUCT(CountingNet, (torch::nn::Linear, fc), (std::int64_t, calls));
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<CountingNet>>) > 0);

// 2. The model: a member outside the declaration.
struct RunningNet : torch::nn::Module {
  RunningNet() : fc(register_module("fc", torch::nn::Linear(2, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data).sum() * running; }
  BOOST_HANA_DEFINE_STRUCT(RunningNet, (torch::nn::Linear, fc), (double, running));
#if KEEL_BREAK(2)
  double running_square = 0;
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<RunningNet>>) > 0);

// 3. The optimizer policy: Lookahead's slow weights and step counter, on top of LibTorch's SGD.
struct Lookahead : keel::optim::TorchOptimizer<keel::optim::SGDTraits> {
  static constexpr const char* keel_name = "Lookahead";
  using TorchOptimizer::TorchOptimizer;
#if KEEL_BREAK(3)
  std::vector<torch::Tensor> slow;
  std::int64_t fast_steps = 0;
#else
  BOOST_HANA_DEFINE_STRUCT(Lookahead, (std::vector<torch::Tensor>, slow), (std::int64_t, fast_steps));
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::optimizer<Lookahead>>) > 0);

// 4. The scheduler: keel's SchedulerBase serializes its own state; a derived class's member
// is not part of it.
class WarmRestarts : public keel::sched::SchedulerBase<WarmRestarts> {
 public:
  struct Options {};
  WarmRestarts(torch::optim::Optimizer& optimizer, Options) : SchedulerBase(optimizer) {}
  double factor(std::int64_t step) const { return 1.0 / static_cast<double>(1 + (step + restarts) % 10); }
  void describe(keel::Fingerprint& f, const std::string& prefix) const { f.add(prefix + "type", "WarmRestarts"); }
  std::int64_t restarts = 0;
#if !KEEL_BREAK(4)
  template <class Archive>
  void serialize(Archive& archive) {
    SchedulerBase::serialize(archive);
    archive(cereal::make_nvp("restarts", restarts));
  }
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::scheduler<WarmRestarts>>) > 0);

// 5. A callback that inherits a base's declaration and adds a member in the base's tail
// padding: sizeof does not change (the base has a constructor, so its padding is reused).
struct BaseTracker {
  BaseTracker() {}
  BOOST_HANA_DEFINE_STRUCT(BaseTracker, (double, best), (int, wait));
};
struct FlaggingTracker : BaseTracker {
#if KEEL_BREAK(5)
  char flag = 0;
#endif
  void on_validation_end(keel::Context&) { ++wait; }
};
static_assert(sizeof(FlaggingTracker) == sizeof(BaseTracker), "the case relies on the tail padding");
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::callbacks<FlaggingTracker>>) > 0);

// 6. A non-aggregate (it has a constructor) with a bool after an int, in padding.
struct Averager {
  Averager() {}
  BOOST_HANA_DEFINE_STRUCT(Averager, (double, total), (int, count));
#if KEEL_BREAK(6)
  bool reset_pending = false;
#endif
  void on_train_batch_end(keel::Context&) { ++count; }
};
static_assert(sizeof(Averager) == 16, "the case relies on the padding");
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::callbacks<Averager>>) > 0);

// 7. A final callback with a near-miss hook.
struct Announcer final {
#if KEEL_BREAK(7)
  void on_train_epoch_end() {}
#else
  void on_train_epoch_end(keel::Context&) {}
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::callbacks<Announcer>>) > 0);

// 8. A final non-aggregate whose declared members leave tail padding cannot be measured.
struct
#if KEEL_BREAK(8)
    Sealed final
#else
    Sealed
#endif
{
  Sealed() {}
  BOOST_HANA_DEFINE_STRUCT(Sealed, (double, best), (int, wait));
  void on_validation_end(keel::Context&) { ++wait; }
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::callbacks<Sealed>>) > 0);

// 9. A checkpoint format without an extension.
struct TextFormat {
  static constexpr const char* keel_name = "TextFormat";
  static constexpr std::uint32_t format_id = 7;
#if !KEEL_BREAK(9)
  static constexpr const char* extension = ".txtckpt";
#endif
  using output_archive = cereal::PortableBinaryOutputArchive;
  using input_archive = keel::ckpt::BoundedInputArchive;
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::checkpoint<TextFormat>>) > 0);

// 10. A checkpoint format with data.
struct CountingFormat : keel::format::Binary {
#if KEEL_BREAK(10)
  int files_written = 0;
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::checkpoint<CountingFormat>>) > 0);

// 11. A free serialize written for a base class; the derived callback adds a member.
struct BaseStats {
  std::int64_t seen = 0;
};
template <class Archive>
void serialize(Archive& archive, BaseStats& stats) {
  archive(cereal::make_nvp("seen", stats.seen));
}
struct Stats : BaseStats {
  double mean = 0;
  void on_train_batch_end(keel::Context&) { ++seen; }
#if !KEEL_BREAK(11)
  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("seen", seen), cereal::make_nvp("mean", mean));
  }
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::callbacks<Stats>>) > 0);

// 12. A role given twice.
using TwoSchedulers = keel::Trainer<keel::model<Net>, keel::scheduler<keel::sched::StepDecay>
#if KEEL_BREAK(12)
                                    , keel::scheduler<keel::sched::CosineWarmup>
#endif
                                    >;
static_assert(sizeof(TwoSchedulers) > 0);

// 13. A constructor argument of the wrong options type (the Trainer's optimizer is AdamW).
void construct_with_options() {
  keel::Trainer<keel::model<Net>> trainer(
#if KEEL_BREAK(13)
      torch::optim::SGDOptions(0.1)
#else
      torch::optim::AdamWOptions(0.1)
#endif
  );
}

// 14. A training_step that returns something other than a tensor.
struct LossAndCount {
  torch::Tensor loss;
  std::int64_t count;
};
struct PairNet : torch::nn::Module {
  PairNet() : fc(register_module("fc", torch::nn::Linear(2, 2))) {}
#if KEEL_BREAK(14)
  LossAndCount training_step(const keel::data::Example& b) { return {fc(b.data).sum(), 1}; }
#else
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data).sum(); }
#endif
  BOOST_HANA_DEFINE_STRUCT(PairNet, (torch::nn::Linear, fc));
};
struct Points {
  std::size_t size() const { return 4; }
  keel::data::Example get_batch(const std::vector<std::int64_t>& i) const {
    return {torch::zeros({static_cast<std::int64_t>(i.size()), 2}), torch::zeros({static_cast<std::int64_t>(i.size())})};
  }
};
void fit_pair_net(keel::Trainer<keel::model<PairNet>>& trainer, Points& points) { trainer.fit(points); }

// 15. The model: a declared plain member that cereal cannot save.
struct Histogram {
  std::int64_t bins[4];
};
struct BinningNet : torch::nn::Module {
  BinningNet() : fc(register_module("fc", torch::nn::Linear(2, 2))), counts() {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data).sum(); }
#if KEEL_BREAK(15)
  BOOST_HANA_DEFINE_STRUCT(BinningNet, (torch::nn::Linear, fc), (Histogram, counts));
#else
  BOOST_HANA_DEFINE_STRUCT(BinningNet, (torch::nn::Linear, fc), (std::vector<std::int64_t>, counts));
#endif
};
static_assert(sizeof(keel::Trainer<keel::model<BinningNet>>) > 0);

// 16. Declared members listed from two classes (a base's and the derived class's).
struct BaseCounter {
  std::int64_t seen = 0;
};
struct TwoLevelCounter : BaseCounter {
  double mean = 0;
  void on_train_batch_end(keel::Context&) { ++seen; }
#if !KEEL_BREAK(16)
  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("seen", seen), cereal::make_nvp("mean", mean));
  }
#endif
};
#if KEEL_BREAK(16)
BOOST_HANA_ADAPT_STRUCT(TwoLevelCounter, seen, mean);
#endif
static_assert(sizeof(keel::Trainer<keel::model<Net>, keel::callbacks<TwoLevelCounter>>) > 0);

// 17. A submodule class of the user's with a plain member: keel saves plain members of the model
// class itself only.
struct ScalerImpl : torch::nn::Module {
  ScalerImpl() : weight(register_parameter("weight", torch::ones({2}))) {}
  torch::Tensor forward(const torch::Tensor& x) { return x * weight; }
#if KEEL_BREAK(17)
  BOOST_HANA_DEFINE_STRUCT(ScalerImpl, (torch::Tensor, weight), (std::int64_t, calls));
#else
  BOOST_HANA_DEFINE_STRUCT(ScalerImpl, (torch::Tensor, weight));
#endif
};
TORCH_MODULE(Scaler);
struct ScaledNet : torch::nn::Module {
  ScaledNet() : fc(register_module("fc", torch::nn::Linear(2, 2))), scaler(register_module("scaler", Scaler())) {}
  torch::Tensor training_step(const keel::data::Example& b) { return scaler(fc(b.data)).sum(); }
  BOOST_HANA_DEFINE_STRUCT(ScaledNet, (torch::nn::Linear, fc), (Scaler, scaler));
};
static_assert(sizeof(keel::Trainer<keel::model<ScaledNet>>) > 0);

// 18. A callback that holds data must say how its state is saved (here: a cereal serialize).
struct CountSteps {
  long steps = 0;
  void on_optimizer_step_end(keel::Context&) { ++steps; }
#if !KEEL_BREAK(18)
  template <class Archive>
  void serialize(Archive& archive) {
    archive(steps);
  }
#endif
};
void digest_of_counting(keel::Trainer<keel::model<Net>, keel::callbacks<CountSteps>>& trainer) {
  (void)trainer.state_digest();
}

// 19. A reflected callback with a member outside BOOST_HANA_DEFINE_STRUCT: the declared members
// no longer account for sizeof.
struct SizeTracker {
  BOOST_HANA_DEFINE_STRUCT(SizeTracker, (double, best), (long, wait));
#if KEEL_BREAK(19)
  long hidden_counter = 0;  // not declared, so it would never be saved
#endif
  void on_validation_end(keel::Context&) { ++wait; }
};
void digest_of_size_tracker(keel::Trainer<keel::model<Net>, keel::callbacks<SizeTracker>>& trainer) {
  (void)trainer.state_digest();
}

// 20. A member outside BOOST_HANA_DEFINE_STRUCT hidden in an aggregate's tail padding: sizeof
// is the same with or without it (double + int pads to 16 bytes either way), so only the count
// of fields that brace initialization accepts exposes it.
struct PaddingTracker {
  BOOST_HANA_DEFINE_STRUCT(PaddingTracker, (double, best), (int, wait));
#if KEEL_BREAK(20)
  int hidden_in_padding;
#endif
  void on_validation_end(keel::Context&) { ++wait; }
};
static_assert(sizeof(PaddingTracker) == 16, "the case relies on the hidden member fitting in padding");
void digest_of_padding_tracker(keel::Trainer<keel::model<Net>, keel::callbacks<PaddingTracker>>& trainer) {
  (void)trainer.state_digest();
}

// 21. A hook with a near-miss signature (no Context parameter) must not be silently ignored.
struct EpochAnnouncer {
#if KEEL_BREAK(21)
  void on_train_epoch_end() {}
#else
  void on_train_epoch_end(keel::Context&) {}
#endif
};
void digest_of_announcer(keel::Trainer<keel::model<Net>, keel::callbacks<EpochAnnouncer>>& trainer) {
  (void)trainer.state_digest();
}

// 22. A hook that returns a value (as if returning true would stop training) is a near miss
// too: keel's hooks return void and stop through Context::request_stop().
struct Stopper {
#if KEEL_BREAK(22)
  bool on_optimizer_step_end(keel::Context&) { return true; }
#else
  void on_optimizer_step_end(keel::Context& ctx) { ctx.request_stop(); }
#endif
};
void digest_of_stopper(keel::Trainer<keel::model<Net>, keel::callbacks<Stopper>>& trainer) {
  (void)trainer.state_digest();
}
