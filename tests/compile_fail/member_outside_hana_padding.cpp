// A member outside BOOST_HANA_DEFINE_STRUCT that hides in tail padding: sizeof is the same with
// or without it (double + int pads to 16 bytes either way), so only the count of fields that
// brace initialization accepts exposes it. The Trainer must refuse to compile.
#include "net.hpp"

struct Tracker {
  BOOST_HANA_DEFINE_STRUCT(Tracker, (double, best), (int, wait));
#ifdef KEEL_COMPILE_FAIL
  int hidden_in_padding;
#endif
  void on_validation_end(keel::Context&) { ++wait; }
};
static_assert(sizeof(Tracker) == 16, "the test relies on the hidden member fitting in padding");

using T = keel::Trainer<keel::model<Net>, keel::callbacks<Tracker>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
