// A callback that holds data must say how its state is saved. Built as is, it does (a cereal
// serialize); with KEEL_COMPILE_FAIL it does not, and the Trainer must refuse to compile.
#include "net.hpp"

struct CountSteps {
  long steps = 0;
  void on_optimizer_step_end(keel::Context&) { ++steps; }
#ifndef KEEL_COMPILE_FAIL
  template <class Archive>
  void serialize(Archive& archive) {
    archive(steps);
  }
#endif
};

using T = keel::Trainer<keel::model<Net>, keel::callbacks<CountSteps>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
