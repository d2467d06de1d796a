// A hook with a near-miss signature (no Context parameter) must not be silently ignored.
#include "net.hpp"

struct Announcer {
#ifdef KEEL_COMPILE_FAIL
  void on_train_epoch_end() {}
#else
  void on_train_epoch_end(keel::Context&) {}
#endif
};

using T = keel::Trainer<keel::model<Net>, keel::callbacks<Announcer>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
