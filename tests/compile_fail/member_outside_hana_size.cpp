// A reflected callback with a member declared outside BOOST_HANA_DEFINE_STRUCT: the reflected
// members no longer account for sizeof, and the Trainer must refuse to compile.
#include "net.hpp"

struct Tracker {
  BOOST_HANA_DEFINE_STRUCT(Tracker, (double, best), (long, wait));
#ifdef KEEL_COMPILE_FAIL
  long hidden_counter = 0;  // not reflected, so it would never be saved
#endif
  void on_validation_end(keel::Context&) { ++wait; }
};

using T = keel::Trainer<keel::model<Net>, keel::callbacks<Tracker>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
