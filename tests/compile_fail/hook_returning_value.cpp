// A hook that returns a value (as if returning true would stop training) is a near miss too:
// keel's hooks return void and stop through Context::request_stop().
#include "net.hpp"

struct Stopper {
#ifdef KEEL_COMPILE_FAIL
  bool on_optimizer_step_end(keel::Context&) { return true; }
#else
  void on_optimizer_step_end(keel::Context& ctx) { ctx.request_stop(); }
#endif
};

using T = keel::Trainer<keel::model<Net>, keel::callbacks<Stopper>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
