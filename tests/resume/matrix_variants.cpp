// The exactness matrix's Trainer compositions (tests/unit/test_process_resume.cpp, "exactness
// matrix"): every optimizer keel ships, a scheduler of every family, the stateful callbacks.
// The loop features (bf16, clipping, validation every N steps) are flags of the driver, so
// each composition runs with them without another Trainer type to compile. A translation unit
// of its own, so that it compiles beside resume_driver.cpp.
#include "driver.hpp"

#include <cmath>

namespace resume_driver {

int dispatch_matrix(const Flags& flags) {
  using Model = keel::model<SmallNetImpl>;
  namespace sched = keel::sched;
  if (flags.variant == "rmsprop_plateau") {  // decisions on validation metrics
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::RMSprop>, keel::scheduler<sched::ReduceLROnPlateau>,
                            keel::callbacks<keel::EarlyStopping, KillSwitch>>;
    return run<T>(flags, torch::optim::RMSpropOptions(2e-3).momentum(0.9).centered(true),
                  sched::ReduceLROnPlateauOptions("val_loss").patience(1).factor(0.5).threshold(0.02),
                  keel::EarlyStopping("val_loss", 5, keel::EarlyStopping::Mode::min, 0.01));
  }
  if (flags.variant == "adagrad_onecycle") {
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::Adagrad>, keel::scheduler<sched::OneCycleLR>,
                            keel::callbacks<EpochLossMean, KillSwitch>>;
    return run<T>(flags, torch::optim::AdagradOptions(0.05).lr_decay(1e-3),
                  sched::OneCycleLROptions(flags.total_steps).pct_start(0.25));
  }
  if (flags.variant == "sgd_sequential") {  // warm-up, then cosine with restarts
    using Warmup = sched::Sequential<sched::LinearLR, sched::CosineAnnealingWarmRestarts>;
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::SGD>, keel::scheduler<Warmup>,
                            keel::callbacks<RandomProbe, KillSwitch>>;
    RandomProbe probe{std::mt19937_64(flags.seed), 0, 0.0};
    return run<T>(flags, torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(1e-4),
                  Warmup::Options(sched::LinearLROptions(0.1, 1.0, 5),
                                  sched::CosineAnnealingWarmRestartsOptions(7).T_mult(2).eta_min(1e-4), 5),
                  probe);
  }
  if (flags.variant == "adam_multistep_epoch") {  // a scheduler stepped per epoch
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::Adam>, keel::scheduler<sched::MultiStepLR>,
                            keel::callbacks<KillSwitch>>;
    return run<T>(flags, torch::optim::AdamOptions(3e-3),
                  sched::MultiStepLROptions({2, 4}, 0.5).interval(sched::Interval::epoch));
  }
  if (flags.variant == "adamw_lambda") {
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::AdamW>, keel::scheduler<sched::LambdaLR>,
                            keel::callbacks<keel::EarlyStopping, EpochLossMean, KillSwitch>>;
    return run<T>(flags, torch::optim::AdamWOptions(3e-3).weight_decay(0.05),
                  sched::LambdaLROptions("inverse_sqrt", [](std::int64_t s) { return 1.0 / std::sqrt(1.0 + static_cast<double>(s)); }),
                  keel::EarlyStopping("val_accuracy", 6, keel::EarlyStopping::Mode::max));
  }
  if (flags.variant == "sgd_ema") {  // the average of the weights, validated on (with --keep-best: top-k)
    using T = keel::Trainer<Model, keel::optimizer<keel::optim::SGD>, keel::scheduler<sched::ExponentialLR>,
                            keel::callbacks<keel::EMA, keel::EarlyStopping, KillSwitch>>;
    return run<T>(flags, torch::optim::SGDOptions(0.05).momentum(0.9), sched::ExponentialLROptions(0.98), keel::EMA(0.9),
                  keel::EarlyStopping("val_loss", 8));
  }
  return -1;
}

}  // namespace resume_driver
