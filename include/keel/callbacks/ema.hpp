#pragma once
// keel::EMA: an exponential moving average of the model's weights (Polyak averaging, timm's
// ModelEmaV2, Lightning's EMA callbacks): after every `every_n_steps` optimizer steps,
//   average = decay * average + (1 - decay) * weights
// for every floating-point parameter and buffer (BatchNorm's running statistics included);
// integer buffers (BatchNorm's batch counter) are copied.
//
// The average is the callback's saved state, so a resumed run averages on exactly. Validation
// runs on the averaged weights by default (the live weights are put back afterwards, bit for
// bit, and before any checkpoint); `keel-ckpt export --ema FILE OUT.pt` writes the average
// instead of the live weights, and apply_to() copies it into a module of your own.

#include <keel/context.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/model_state.hpp>

#include <cereal/cereal.hpp>

#include <cstdint>
#include <string>
#include <utility>

namespace keel {

class EMA {
 public:
  static constexpr const char* keel_name = "keel::EMA";

  /// `decay` in [0, 1): the weight of the old average (0.999 averages over about 1000 updates).
  explicit EMA(double decay = 0.999, std::int64_t every_n_steps = 1, bool validate_with_average = true)
      : decay_(decay), every_(every_n_steps), validate_with_average_(validate_with_average) {
    if (!(decay_ >= 0.0 && decay_ < 1.0))
      throw ConfigError("keel::EMA: decay must be in [0, 1), got " + std::to_string(decay_) + " (e.g. 0.999)");
    if (every_ <= 0) throw ConfigError("keel::EMA: every_n_steps must be positive, got " + std::to_string(every_));
  }

  /// The average starts as a copy of the weights the fit starts from; a resumed one must fit
  /// the model by name, shape and dtype.
  void on_fit_start(Context& ctx) {
    torch::nn::Module& model = ctx.model();
    if (average_.parameters.empty() && average_.buffers.empty()) {
      average_ = copy_of(ModelState::capture(model));
      return;
    }
    const auto differences = average_.check(model);
    if (!differences.empty())
      throw ConfigError("keel::EMA: the saved average does not fit the model: " + differences.front() +
                        (differences.size() > 1 ? " (and " + std::to_string(differences.size() - 1) + " more)" : ""));
    align_to(model);
  }

  void on_optimizer_step_end(Context& ctx) {
    if (ctx.global_step() % every_ != 0) return;
    torch::NoGradGuard no_grad;
    const ModelState live = ModelState::capture(ctx.model());
    blend(average_.parameters, live.parameters);
    blend(average_.buffers, live.buffers);
    ++updates_;
  }

  // Validation on the average: swapped in before the first validation batch and out after the
  // last, before anything (a checkpoint, keep_best) reads the weights again.
  void on_validation_start(Context& ctx) {
    if (validate_with_average_) swap_in(ctx.model());
  }
  void on_validation_end(Context& ctx) { swap_out(ctx.model()); }
  void on_exception(Context& ctx) { swap_out(ctx.model()); }

  /// Copies the average into `module` (same parameter and buffer names, shapes and dtypes).
  void apply_to(torch::nn::Module& module) const {
    const auto differences = average_.check(module);
    if (!differences.empty())
      throw ConfigError("keel::EMA::apply_to: the average does not fit this module: " + differences.front());
    average_.apply(module);
  }
  /// The averaged parameters and buffers, by name.
  const ModelState& average() const noexcept { return average_; }
  /// Updates so far.
  std::int64_t updates() const noexcept { return updates_; }
  double decay() const noexcept { return decay_; }

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    fingerprint.add(prefix + "decay", decay_);
    fingerprint.add(prefix + "every_n_steps", every_);
    fingerprint.add(prefix + "validate_with_average", validate_with_average_);
  }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(cereal::make_nvp("updates", updates_), cereal::make_nvp("average", average_));
  }

 private:
  static ModelState copy_of(const ModelState& state) {
    ModelState out;
    for (const auto& t : state.parameters) out.parameters.push_back({t.name, t.tensor.detach().clone()});
    for (const auto& t : state.buffers) out.buffers.push_back({t.name, t.tensor.detach().clone()});
    return out;
  }

  void blend(std::vector<NamedTensor>& average, const std::vector<NamedTensor>& live) const {
    for (std::size_t i = 0; i < average.size(); ++i) {
      torch::Tensor& a = average[i].tensor;
      const torch::Tensor& w = live[i].tensor;
      if (!a.defined()) continue;
      if (a.is_floating_point())
        a.mul_(decay_).add_(w.detach(), 1.0 - decay_);
      else
        a.copy_(w);
    }
  }

  /// Puts a loaded average in the model's order (blend pairs tensors by position) and on its
  /// device (a checkpoint is read onto the CPU).
  void align_to(const torch::nn::Module& model) {
    const ModelState live = ModelState::capture(model);
    auto align = [](std::vector<NamedTensor>& average, const std::vector<NamedTensor>& weights) {
      std::vector<NamedTensor> aligned;
      for (const auto& w : weights)
        for (auto& a : average)
          if (a.name == w.name) {
            const bool move = a.tensor.defined() && w.tensor.defined() && a.tensor.device() != w.tensor.device();
            aligned.push_back({a.name, move ? a.tensor.to(w.tensor.device()) : a.tensor});
            break;
          }
      average = std::move(aligned);
    };
    align(average_.parameters, live.parameters);
    align(average_.buffers, live.buffers);
  }

  void swap_in(torch::nn::Module& model) {
    if (!live_weights_.parameters.empty() || !live_weights_.buffers.empty()) return;
    live_weights_ = copy_of(ModelState::capture(model));
    average_.apply(model);
  }
  void swap_out(torch::nn::Module& model) {
    if (live_weights_.parameters.empty() && live_weights_.buffers.empty()) return;
    live_weights_.apply(model);
    live_weights_ = {};
  }

  double decay_;                   // configuration
  std::int64_t every_;             // configuration
  bool validate_with_average_;     // configuration
  std::int64_t updates_ = 0;       // state
  ModelState average_;             // state: deep copies, same order as the model's tensors
  ModelState live_weights_;        // the live weights while validation runs on the average (not state)
};

}  // namespace keel
