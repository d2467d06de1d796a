// A reflected callback with a member declared outside BOOST_HANA_DEFINE_STRUCT: the reflected
// members no longer account for sizeof, and the Trainer must refuse to compile.
#include <keel/keel.hpp>
#include <torch/torch.h>

struct Net : torch::nn::Module {
  Net() : fc(register_module("fc", torch::nn::Linear(2, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data).sum(); }
  torch::nn::Linear fc;
};

struct Tracker {
  BOOST_HANA_DEFINE_STRUCT(Tracker, (double, best), (long, wait));
#ifdef KEEL_COMPILE_FAIL
  long hidden_counter = 0;  // not reflected, so it would never be saved
#endif
  void on_validation_end(keel::Context&) { ++wait; }
};

using T = keel::Trainer<keel::model<Net>, keel::callbacks<Tracker>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
