#pragma once
// keel::Optional<Callback>: a callback switched on or off at run time, for programs whose flags
// decide (the Fashion-MNIST example's --ema, --tensorboard, --max-time) without a Trainer type
// per combination:
//
//   keel::callbacks<keel::Optional<keel::EMA>, ...>
//   ... flags.ema > 0 ? keel::Optional<keel::EMA>(keel::EMA(flags.ema)) : keel::Optional<keel::EMA>() ...
//
// Switched on, it is the callback itself: the same hooks, fingerprint entries and checkpoint
// section (a checkpoint with Optional<EMA> on is one with keel::EMA, so `keel-ckpt export --ema`
// reads it). Switched off it does nothing and has no section; its fingerprint entry
// `enabled=false` makes switching it at a resume a configuration change.

#include <keel/context.hpp>
#include <keel/detail/type_name.hpp>
#include <keel/error.hpp>
#include <keel/fingerprint.hpp>
#include <keel/hooks.hpp>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace keel {

template <class Callback>
class Optional {
 public:
  /// The callback, for keel's compile-time checks (its hooks and its state as if it stood alone)
  /// and its checkpoint section (keel/state/sections.hpp, OptionalCallbackSection).
  using alternatives = std::tuple<Callback>;
  using callback_type = Callback;

  /// Off.
  Optional() = default;
  /// On.
  Optional(Callback callback) : callback_(std::move(callback)) {}  // NOLINT: implicit, as std::optional

  bool on() const noexcept { return callback_.has_value(); }
  Callback* get() noexcept { return callback_ ? &*callback_ : nullptr; }
  const Callback* get() const noexcept { return callback_ ? &*callback_ : nullptr; }

  /// The callback's name when on (its checkpoint section is the callback's own), else
  /// "keel::Optional<name>".
  std::string keel_component_name() const {
    const std::string name = keel::detail::component_name<Callback>();
    return callback_ ? name : "keel::Optional<" + name + ">";
  }

#define KEEL_OPTIONAL_HOOK(hook)                                                 \
  void hook(Context& ctx) {                                                      \
    if constexpr (hooks::calls_##hook<Callback>) {                               \
      if (callback_) callback_->hook(ctx);                                       \
    } else {                                                                     \
      (void)ctx;                                                                 \
    }                                                                            \
  }
  KEEL_HOOKS(KEEL_OPTIONAL_HOOK)
#undef KEEL_OPTIONAL_HOOK

  void describe(Fingerprint& fingerprint, const std::string& prefix) const {
    if (!callback_) {
      fingerprint.add(prefix + "enabled", false);
      return;
    }
    if constexpr (detail::has_describe<Callback>::value) callback_->describe(fingerprint, prefix);
  }

 private:
  std::optional<Callback> callback_;
};

}  // namespace keel
