#pragma once
// Callback hooks: detected at compile time, dispatched with folds, checked for near misses.
//
// A callback is any struct with any subset of the hooks below, each `void on_<event>(keel::Context&)`.
// No base class, no virtual calls, no cost for a hook nobody implements. Every callback gets
// every event, in declaration order. A member that carries a hook's name but cannot be called
// as that hook (wrong parameters, non-void result, a data member) is a compile error: a hook
// silently never called is the bug this rules out.

#include <keel/context.hpp>

#include <tuple>
#include <type_traits>
#include <utility>

// The events, in the order a fit meets them. X(name) expands once per hook.
#define KEEL_HOOKS(X)         \
  X(on_fit_start)             \
  X(on_train_epoch_start)     \
  X(on_train_batch_start)     \
  X(on_train_batch_end)       \
  X(on_optimizer_step_start)  \
  X(on_optimizer_step_end)    \
  X(on_validation_start)      \
  X(on_validation_batch_start) \
  X(on_validation_batch_end)  \
  X(on_validation_end)        \
  X(on_train_epoch_end)       \
  X(on_save_checkpoint_start) \
  X(on_save_checkpoint_end)   \
  X(on_load_checkpoint)       \
  X(on_exception)             \
  X(on_fit_end)

namespace keel {

/// One tag type per event, `keel::event::on_fit_start` etc., for Trainer::dispatch.
namespace event {
#define KEEL_DECLARE_EVENT(hook) \
  struct hook {};
KEEL_HOOKS(KEEL_DECLARE_EVENT)
#undef KEEL_DECLARE_EVENT
}  // namespace event

namespace hooks {

// For each hook: `names_<hook><T>` is true when T has any member with that name (found by
// the ambiguity it causes against a fallback member in a class derived from T; a `final`
// class cannot be derived from, so there a pointer to the member is taken instead), and
// `calls_<hook><T>` when `t.<hook>(ctx)` is valid and returns void.
#define KEEL_DEFINE_HOOK_TRAITS(hook)                                                          \
  namespace detail_##hook {                                                                    \
  struct fallback {                                                                            \
    int hook;                                                                                  \
  };                                                                                           \
  template <class T>                                                                           \
  struct probe : T, fallback {};                                                               \
  template <class T, class = void>                                                             \
  struct names : std::true_type {};                                                            \
  template <class T>                                                                           \
  struct names<T, std::void_t<decltype(&probe<T>::hook)>> : std::false_type {};               \
  template <class T, class = void>                                                             \
  struct calls : std::false_type {};                                                           \
  template <class T>                                                                           \
  struct calls<T, std::void_t<decltype(std::declval<T&>().hook(std::declval<Context&>()))>>    \
      : std::is_void<decltype(std::declval<T&>().hook(std::declval<Context&>()))> {};          \
  template <class T, class = void>                                                             \
  struct has_pointer : std::false_type {};                                                     \
  template <class T>                                                                           \
  struct has_pointer<T, std::void_t<decltype(&T::hook)>> : std::true_type {};                  \
  }                                                                                            \
  template <class T>                                                                           \
  inline constexpr bool calls_##hook = detail_##hook::calls<T>::value;                         \
  template <class T>                                                                           \
  inline constexpr bool names_##hook = [] {                                                    \
    if constexpr (std::is_class_v<T> && !std::is_final_v<T>) {                                 \
      return detail_##hook::names<T>::value;                                                   \
    } else if constexpr (std::is_class_v<T>) {                                                 \
      return detail_##hook::has_pointer<T>::value || calls_##hook<T>;                          \
    } else {                                                                                   \
      return calls_##hook<T>;                                                                  \
    }                                                                                          \
  }();
KEEL_HOOKS(KEEL_DEFINE_HOOK_TRAITS)
#undef KEEL_DEFINE_HOOK_TRAITS

/// Compile-time check of one callback type; one static_assert per hook so the message names
/// the hook and the signature it must have.
template <class T>
constexpr bool check_hooks() {
#define KEEL_CHECK_HOOK(hook)                                                               \
  static_assert(!names_##hook<T> || calls_##hook<T>,                                        \
                "keel: callback member '" #hook "' does not match the hook signature; "     \
                "expected: void " #hook "(keel::Context&). Fix the signature, or rename "   \
                "the member if it is not meant to be a hook.");
  KEEL_HOOKS(KEEL_CHECK_HOOK)
#undef KEEL_CHECK_HOOK
  return true;
}

/// Calls `callback.<hook>(ctx)` if the callback has that hook; compiles to nothing otherwise.
#define KEEL_DEFINE_HOOK_CALL(hook)                         \
  template <class T>                                        \
  void call(event::hook, T& callback, Context& ctx) {       \
    if constexpr (calls_##hook<T>) callback.hook(ctx);      \
  }
KEEL_HOOKS(KEEL_DEFINE_HOOK_CALL)
#undef KEEL_DEFINE_HOOK_CALL

/// Sends one event to every callback of the tuple, in declaration order.
template <class Event, class... Callbacks>
void dispatch(Event e, std::tuple<Callbacks...>& callbacks, Context& ctx) {
  std::apply([&](auto&... callback) { (call(e, callback, ctx), ...); }, callbacks);
}

/// Sends one event to every callback even when one of them throws: for on_exception, where a
/// callback may have something to undo (keel::EMA puts the live weights back). The callbacks'
/// own exceptions are dropped: the one leaving fit() is the one worth reporting.
template <class Event, class... Callbacks>
void dispatch_to_all(Event e, std::tuple<Callbacks...>& callbacks, Context& ctx) noexcept {
  auto one = [&](auto& callback) {
    try {
      call(e, callback, ctx);
    } catch (...) {
    }
  };
  std::apply([&](auto&... callback) { (one(callback), ...); }, callbacks);
}

}  // namespace hooks
}  // namespace keel
