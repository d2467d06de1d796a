#pragma once
// The compile-time guarantee: a Trainer cannot be instantiated if some component holds data
// that its checkpoint would not save. Each rule is one static_assert whose message names the
// rule and the fix; the compiler's "in instantiation of check_component_state<T>" line names T.

#include <keel/reflect.hpp>

#include <cereal/details/traits.hpp>

#include <type_traits>

namespace keel {

/// True when cereal can write and read T with the archives of checkpoint format F.
template <class T, class Format>
inline constexpr bool cereal_serializable =
    cereal::traits::is_output_serializable<T, typename Format::output_archive>::value &&
    cereal::traits::is_input_serializable<T, typename Format::input_archive>::value;

template <class T, class Format>
constexpr bool check_component_state() {
  if constexpr (std::is_empty_v<T>) {
    return true;  // nothing to save
  } else {
    constexpr bool reflected = reflect::is_reflected<T>;
    constexpr bool serializable = reflected || cereal_serializable<T, Format>;
    static_assert(serializable,
                  "keel: this component holds data but has no serialization, so its state "
                  "would be lost at a checkpoint. Give it a cereal `serialize` (or `save` and "
                  "`load`) member, or declare its data members inside "
                  "BOOST_HANA_DEFINE_STRUCT so keel derives the serialization. A member that is "
                  "configuration rather than state may be skipped by a `serialize` of your own.");
    if constexpr (reflected && !reflect::has_own_serialization<T>) {
      static_assert(reflect::reflected_size_matches<T>,
                    "keel: a data member lies outside BOOST_HANA_DEFINE_STRUCT: the reflected "
                    "members do not account for sizeof of the component, so the undeclared "
                    "member would not be saved. Move every data member into "
                    "BOOST_HANA_DEFINE_STRUCT, or write a cereal `serialize` of your own.");
      static_assert(reflect::reflected_count_matches<T>(),
                    "keel: a data member lies outside BOOST_HANA_DEFINE_STRUCT: the aggregate "
                    "has more fields than the declaration reflects (the extra one may hide in "
                    "padding), so it would not be saved. Move every data member into "
                    "BOOST_HANA_DEFINE_STRUCT, or write a cereal `serialize` of your own.");
    }
    static_assert(std::is_copy_constructible_v<T> || std::is_default_constructible_v<T>,
                  "keel: a stateful component must be copy-constructible or "
                  "default-constructible: a checkpoint is first read into a separate object and "
                  "applied only when every section is valid.");
    return true;
  }
}

}  // namespace keel
