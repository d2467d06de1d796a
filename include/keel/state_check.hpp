#pragma once
// The compile-time guarantee: a Trainer cannot be instantiated if some component holds data
// that its checkpoint would not save. Each rule is one static_assert whose message starts with
// the rule's name in brackets (README.md, "What the guarantee covers", lists them all); the
// compiler's "in instantiation of check_component_state<T, ...>" line names the user's type.
//
// The rules for a component T (a callback, the scheduler, an optimizer policy, the format):
//   [state is saved]           T holds data, so it has a serialization: its own cereal
//                              serialize/save/load, or BOOST_HANA_DEFINE_STRUCT.
//   [inherited serialization]  a serialize declared in a base class is accepted only when T
//                              adds no data to that base.
//   [every member declared]    the declared members are the whole object: sizeof, the data
//                              size (tail padding), the aggregate field count, and (at Trainer
//                              construction) each member's offset.
//   [final class]              a final class whose declared members leave tail padding cannot
//                              be measured, so it is refused.
// The model's rules are in keel/model_check.hpp, the hooks' in keel/hooks.hpp.

#include <keel/layout.hpp>
#include <keel/reflect.hpp>

#include <cereal/details/traits.hpp>

#include <cstdint>
#include <type_traits>

namespace keel {

/// True when cereal can write and read T with the archives of checkpoint format F.
template <class T, class Format>
inline constexpr bool cereal_serializable =
    cereal::traits::is_output_serializable<T, typename Format::output_archive>::value &&
    cereal::traits::is_input_serializable<T, typename Format::input_archive>::value;

/// The layout rules for the members T declares with BOOST_HANA_DEFINE_STRUCT, after the data of
/// `SavedBase` (a base whose data keel saves by other means; void for none).
template <class T, class SavedBase = void>
constexpr bool check_declared_layout() {
  static_assert(layout::declares_data_members<T>,
                "keel [every member declared]: the reflection of this component is not a list of data members "
                "(BOOST_HANA_ADAPT_ADT?); declare its data members with BOOST_HANA_DEFINE_STRUCT or "
                "BOOST_HANA_ADAPT_STRUCT.");
  if constexpr (layout::declares_data_members<T>) {
    static_assert(layout::size_matches<T, SavedBase>(),
                  "keel [every member declared]: a data member lies outside BOOST_HANA_DEFINE_STRUCT: the declared "
                  "members do not account for sizeof of the component, so the undeclared member would not be saved. "
                  "Declare every data member (in declaration order), or write a cereal `serialize` of your own.");
    static_assert(!std::is_final_v<T> || layout::tail_matches<T, SavedBase>(),
                  "keel [final class]: this final class's declared members leave tail padding, where an undeclared "
                  "member could hide, and a final class cannot be derived from to measure it. Remove `final`, or "
                  "write a cereal `serialize` of your own.");
    static_assert(std::is_final_v<T> || layout::tail_matches<T, SavedBase>(),
                  "keel [every member declared]: a data member lies outside BOOST_HANA_DEFINE_STRUCT, in the tail "
                  "padding after the declared members (the component's data size exceeds theirs), so it would not "
                  "be saved. Declare every data member, or write a cereal `serialize` of your own.");
    static_assert(layout::field_count_matches<T>(),
                  "keel [every member declared]: a data member lies outside BOOST_HANA_DEFINE_STRUCT: the aggregate "
                  "has more fields than the declaration lists (the extra one may hide in padding), so it would not be "
                  "saved. Declare every data member, or write a cereal `serialize` of your own.");
  }
  return true;
}

namespace detail {
/// [inherited serialization] for a component with a cereal serialization of its own.
template <class T, class Owner>
constexpr bool check_own_serialization() {
  static_assert(!std::is_same_v<Owner, reflect::free_function_of_a_base>,
                "keel [inherited serialization]: this component is serialized by a free function that does not take "
                "exactly its type: one written for a base class, which cannot know the members the component adds "
                "(or a template deduced from a class template, which keel cannot tell apart). Write a member "
                "`serialize` for the component itself (calling the base's), or declare its members with "
                "BOOST_HANA_DEFINE_STRUCT.");
  if constexpr (std::is_class_v<Owner> && !std::is_same_v<Owner, T> &&
                !std::is_same_v<Owner, reflect::free_function_of_a_base>) {
    static_assert(layout::adds_no_data<T, Owner>(),
                  "keel [inherited serialization]: this component inherits `serialize` (or `save`/`load`) from a base "
                  "class and adds data members, which that serialize cannot know, so they would not be saved. Give "
                  "the derived class a `serialize` of its own (calling the base's, then saving its members).");
  }
  return true;
}

/// [every member declared] and [inherited serialization] for a component declared with
/// BOOST_HANA_DEFINE_STRUCT (or BOOST_HANA_ADAPT_STRUCT).
template <class T, class SavedBase>
constexpr bool check_reflection() {
  using Declarer = layout::reflection_owner_t<T>;
  static_assert(!std::is_void_v<Declarer>,
                "keel [every member declared]: the declared members of this component come from more than one "
                "class; declare each class's members in that class with BOOST_HANA_DEFINE_STRUCT.");
  if constexpr (std::is_same_v<Declarer, T>) {
    check_declared_layout<T, SavedBase>();
  } else if constexpr (!std::is_void_v<Declarer>) {
    static_assert(layout::adds_no_data<T, Declarer>(),
                  "keel [inherited serialization]: this component inherits the BOOST_HANA_DEFINE_STRUCT of a base "
                  "class and adds data members, which that declaration does not list, so they would not be saved. "
                  "Declare the derived class's members too, or give it a `serialize` of its own.");
    check_declared_layout<Declarer, SavedBase>();
  }
  return true;
}
}  // namespace detail

/// The rules for a stateful component (see the top of this file). With a `SavedBase`, only the
/// data T adds to that base needs a declaration, and it must be BOOST_HANA_DEFINE_STRUCT (keel
/// saves the declared members as values, so T itself need not be copyable).
template <class T, class Format, class SavedBase = void>
constexpr bool check_component_state() {
  if constexpr (std::is_empty_v<T>) {
    return true;  // nothing to save
  } else if constexpr (!std::is_void_v<SavedBase>) {
    if constexpr (!layout::adds_no_data<T, SavedBase>()) {  // else everything is saved through the base
      static_assert(reflect::is_reflected<T>,
                    "keel [state is saved]: this optimizer policy adds data members to its "
                    "keel::optim::TorchOptimizer base, whose state() cannot know them. Declare them with "
                    "BOOST_HANA_DEFINE_STRUCT: keel saves them in the section 'optimizer.members'.");
      if constexpr (reflect::is_reflected<T>) detail::check_reflection<T, SavedBase>();
    }
    return true;
  } else {
    using Owner = reflect::serialization_owner_t<T>;
    // What cereal itself accepts counts as a serialization (a `serialize` in namespace cereal,
    // save_minimal...); the owner probe only refuses one inherited from a base.
    constexpr bool own = !std::is_void_v<Owner> || (!reflect::is_reflected<T> && cereal_serializable<T, Format>);
    constexpr bool reflected = reflect::is_reflected<T>;
    static_assert(own || reflected,
                  "keel [state is saved]: this component holds data but has no serialization, so its state "
                  "would be lost at a checkpoint. Give it a cereal `serialize` (or `save` and `load`) member, or "
                  "declare its data members inside BOOST_HANA_DEFINE_STRUCT so keel derives the serialization. A "
                  "member that is configuration rather than state may be skipped by a `serialize` of your own.");
    if constexpr (own) {
      detail::check_own_serialization<T, Owner>();
    } else if constexpr (reflected) {
      detail::check_reflection<T, void>();
    }
    static_assert(std::is_copy_constructible_v<T> || std::is_default_constructible_v<T>,
                  "keel [state is saved]: a stateful component must be copy-constructible or "
                  "default-constructible: a checkpoint is first read into a separate object and applied only when "
                  "every section is valid.");
    return true;
  }
}

// ---- the checkpoint format policy --------------------------------------------------------------

namespace detail {
#define KEEL_DETECT_FORMAT(trait, expression)                   \
  template <class T, class = void>                              \
  struct trait : std::false_type {};                            \
  template <class T>                                            \
  struct trait<T, std::void_t<decltype(expression)>> : std::true_type {};
KEEL_DETECT_FORMAT(format_has_name, static_cast<const char*>(T::keel_name))
KEEL_DETECT_FORMAT(format_has_id, static_cast<std::uint32_t>(T::format_id))
KEEL_DETECT_FORMAT(format_has_extension, static_cast<const char*>(T::extension))
KEEL_DETECT_FORMAT(format_has_output_archive, std::declval<typename T::output_archive&>())
KEEL_DETECT_FORMAT(format_has_input_archive, std::declval<typename T::input_archive&>())
#undef KEEL_DETECT_FORMAT
}  // namespace detail

/// A checkpoint format is a set of names and archive types; one message per missing member.
template <class F>
constexpr bool check_format() {
  static_assert(detail::format_has_name<F>::value,
                "keel checkpoint format policy: needs `static constexpr const char* keel_name` (recorded in "
                "every checkpoint).");
  static_assert(detail::format_has_id<F>::value,
                "keel checkpoint format policy: needs `static constexpr std::uint32_t format_id` (the container's "
                "format field).");
  static_assert(detail::format_has_extension<F>::value,
                "keel checkpoint format policy: needs `static constexpr const char* extension` (\".ckpt\"), the "
                "file extension checkpoint directories are searched for.");
  static_assert(detail::format_has_output_archive<F>::value,
                "keel checkpoint format policy: needs `using output_archive = ...`, a cereal output archive "
                "constructible from std::ostream&.");
  static_assert(detail::format_has_input_archive<F>::value,
                "keel checkpoint format policy: needs `using input_archive = ...`, a cereal input archive "
                "constructible from std::istream&.");
  static_assert(std::is_empty_v<F>,
                "keel [state is saved]: a checkpoint format policy is a set of names and types and must hold no "
                "data: keel never creates an object of it, so its data could not take part in any checkpoint.");
  return true;
}

}  // namespace keel
