// Compile-time subject: bench/compile_time_trainer.cpp's Trainer and a second Trainer type
// (other optimizer, scheduler, callbacks and checkpoint format) in the same TU. Its time less
// the one-Trainer TU's is what one more Trainer type costs (see bench/compile_time.sh).
#include "compile_time_subject.hpp"

struct CountSteps {
  BOOST_HANA_DEFINE_STRUCT(CountSteps, (std::int64_t, steps));
  void on_optimizer_step_end(keel::Context&) { ++steps; }
};

int main() {
  using Second = keel::Trainer<keel::model<NetImpl>, keel::optimizer<keel::optim::SGD>,
                               keel::scheduler<keel::sched::StepLR>, keel::callbacks<CountSteps, keel::EMA>,
                               keel::checkpoint<keel::format::Json>>;
  Data data;
  Second trainer(keel::TrainerOptions().max_epochs(1).batch_size(4), torch::optim::SGDOptions(0.1),
                 keel::sched::StepLROptions(2));
  trainer.fit(data, data);
  return train_and_digest() + (trainer.state_digest().empty() ? 1 : 0);
}
