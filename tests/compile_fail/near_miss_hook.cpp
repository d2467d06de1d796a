// A hook with a near-miss signature (no Context parameter) must not be silently ignored.
#include <keel/keel.hpp>
#include <torch/torch.h>

struct Net : torch::nn::Module {
  Net() : fc(register_module("fc", torch::nn::Linear(2, 2))) {}
  torch::Tensor training_step(const keel::data::Example& b) { return fc(b.data).sum(); }
  torch::nn::Linear fc;
};

struct Announcer {
#ifdef KEEL_COMPILE_FAIL
  void on_train_epoch_end() {}
#else
  void on_train_epoch_end(keel::Context&) {}
#endif
};

using T = keel::Trainer<keel::model<Net>, keel::callbacks<Announcer>>;
void instantiate(T& trainer) { (void)trainer.state_digest(); }
