#pragma once
// Serialization derived from Boost.Hana reflection.
//
// A component declared with BOOST_HANA_DEFINE_STRUCT and no serialization of its own gets a
// cereal `serialize` that visits every reflected member, each named with make_nvp so the JSON
// form reads like the struct. A type that brings its own cereal serialization keeps it: the
// generic overload is removed from overload resolution for such types, so cereal never sees
// two ways to serialize one type.
//
// Whether the reflected members are the whole object is measured in keel/layout.hpp; where a
// serialization was declared (the class itself or a base) is found here.

#include <boost/hana/accessors.hpp>
#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/define_struct.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>
#include <boost/hana/unpack.hpp>

#include <keel/layout.hpp>

#include <cereal/access.hpp>
#include <cereal/cereal.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace keel::reflect {

template <class T>
inline constexpr bool is_reflected = boost::hana::Struct<T>::value;

// ---- does T bring its own cereal serialization? ---------------------------------------------

namespace probe {
// An archive type of keel's own: argument-dependent lookup with it never reaches namespace
// cereal, where keel's generic overload lives, so only the user's own functions are found.
struct ProbeArchive {};
// Declarations that hide any enclosing `serialize`/`save`/`load`, leaving lookup to ADL.
void serialize();
void save();
void load();
void save_minimal();
void load_minimal();

template <class T, class = void>
struct adl_serialize : std::false_type {};
template <class T>
struct adl_serialize<T, std::void_t<decltype(serialize(std::declval<ProbeArchive&>(),
                                                       std::declval<T&>()))>> : std::true_type {};
template <class T, class = void>
struct adl_serialize_v : std::false_type {};
template <class T>
struct adl_serialize_v<T, std::void_t<decltype(serialize(std::declval<ProbeArchive&>(),
                                                         std::declval<T&>(), std::uint32_t{}))>>
    : std::true_type {};
template <class T, class = void>
struct adl_save : std::false_type {};
template <class T>
struct adl_save<T, std::void_t<decltype(save(std::declval<ProbeArchive&>(),
                                             std::declval<const T&>()))>> : std::true_type {};
template <class T, class = void>
struct adl_save_v : std::false_type {};
template <class T>
struct adl_save_v<T, std::void_t<decltype(save(std::declval<ProbeArchive&>(),
                                               std::declval<const T&>(), std::uint32_t{}))>>
    : std::true_type {};
template <class T, class = void>
struct adl_load : std::false_type {};
template <class T>
struct adl_load<T, std::void_t<decltype(load(std::declval<ProbeArchive&>(), std::declval<T&>()))>>
    : std::true_type {};
template <class T, class = void>
struct adl_load_v : std::false_type {};
template <class T>
struct adl_load_v<T, std::void_t<decltype(load(std::declval<ProbeArchive&>(), std::declval<T&>(),
                                               std::uint32_t{}))>> : std::true_type {};

template <class T, class = void>
struct member_serialize : std::false_type {};
template <class T>
struct member_serialize<T, std::void_t<decltype(cereal::access::member_serialize(
                               std::declval<ProbeArchive&>(), std::declval<T&>()))>>
    : std::true_type {};
template <class T, class = void>
struct member_serialize_v : std::false_type {};
template <class T>
struct member_serialize_v<T, std::void_t<decltype(cereal::access::member_serialize(
                                 std::declval<ProbeArchive&>(), std::declval<T&>(),
                                 std::uint32_t{}))>> : std::true_type {};
template <class T, class = void>
struct member_save : std::false_type {};
template <class T>
struct member_save<T, std::void_t<decltype(cereal::access::member_save(
                          std::declval<ProbeArchive&>(), std::declval<const T&>()))>>
    : std::true_type {};
template <class T, class = void>
struct member_save_v : std::false_type {};
template <class T>
struct member_save_v<T, std::void_t<decltype(cereal::access::member_save(
                            std::declval<ProbeArchive&>(), std::declval<const T&>(),
                            std::uint32_t{}))>> : std::true_type {};
template <class T, class = void>
struct member_load : std::false_type {};
template <class T>
struct member_load<T, std::void_t<decltype(cereal::access::member_load(
                          std::declval<ProbeArchive&>(), std::declval<T&>()))>>
    : std::true_type {};
template <class T, class = void>
struct member_load_v : std::false_type {};
template <class T>
struct member_load_v<T, std::void_t<decltype(cereal::access::member_load(
                            std::declval<ProbeArchive&>(), std::declval<T&>(), std::uint32_t{}))>>
    : std::true_type {};
}  // namespace probe

/// True when T declares cereal serialization itself (member or free, versioned or not).
template <class T>
inline constexpr bool has_own_serialization =
    probe::member_serialize<T>::value || probe::member_serialize_v<T>::value ||
    probe::member_save<T>::value || probe::member_save_v<T>::value ||
    probe::member_load<T>::value || probe::member_load_v<T>::value ||
    probe::adl_serialize<T>::value || probe::adl_serialize_v<T>::value ||
    probe::adl_save<T>::value || probe::adl_save_v<T>::value || probe::adl_load<T>::value ||
    probe::adl_load_v<T>::value;

/// keel derives the serialization of T from its reflected members.
template <class T>
inline constexpr bool uses_reflected_serialize = is_reflected<T> && !has_own_serialization<T>;

// ---- where is the serialization declared? ----------------------------------------------------
// A `serialize` inherited from a base class cannot know the members a derived class adds. The
// type of a pointer to the member function names the class that declared it.

namespace probe {
template <class F>
struct member_function_class {
  using type = void;
};
template <class R, class C, class... A>
struct member_function_class<R (C::*)(A...)> {
  using type = C;
};
template <class R, class C, class... A>
struct member_function_class<R (C::*)(A...) const> {
  using type = C;
};
template <class R, class C, class... A>
struct member_function_class<R (C::*)(A...) noexcept> {
  using type = C;
};
template <class R, class C, class... A>
struct member_function_class<R (C::*)(A...) const noexcept> {
  using type = C;
};

#define KEEL_MEMBER_OWNER(trait, pointer)                                                    \
  template <class T, class = void>                                                           \
  struct trait {                                                                             \
    using type = void;                                                                       \
  };                                                                                         \
  template <class T>                                                                         \
  struct trait<T, std::void_t<decltype(pointer)>> {                                          \
    using type = typename member_function_class<decltype(pointer)>::type;                    \
  };
KEEL_MEMBER_OWNER(serialize_template_owner, &T::template serialize<ProbeArchive>)
KEEL_MEMBER_OWNER(save_template_owner, &T::template save<ProbeArchive>)
KEEL_MEMBER_OWNER(load_template_owner, &T::template load<ProbeArchive>)
KEEL_MEMBER_OWNER(serialize_owner, &T::serialize)
KEEL_MEMBER_OWNER(save_owner, &T::save)
#undef KEEL_MEMBER_OWNER

/// Converts only to T& (or const T&): a free function written for a base class of T is not
/// viable with it.
template <class T>
struct exactly {
  template <class U, std::enable_if_t<std::is_same_v<std::remove_const_t<U>, T>, int> = 0>
  operator U&() const;
};
template <class T, class = void>
struct adl_exact_serialize : std::false_type {};
template <class T>
struct adl_exact_serialize<T, std::void_t<decltype(serialize(std::declval<ProbeArchive&>(),
                                                             std::declval<exactly<T>&>()))>> : std::true_type {};
template <class T, class = void>
struct adl_exact_save : std::false_type {};
template <class T>
struct adl_exact_save<T, std::void_t<decltype(save(std::declval<ProbeArchive&>(), std::declval<exactly<T>&>()))>>
    : std::true_type {};
template <class T>
inline constexpr bool adl_exact = adl_exact_serialize<T>::value || adl_exact_save<T>::value;

template <class... C>
struct first_class {
  using type = void;
};
template <class First, class... Rest>
struct first_class<First, Rest...> {
  using type = std::conditional_t<std::is_void_v<First>, typename first_class<Rest...>::type, First>;
};
}  // namespace probe

/// Marks a type serialized by a free function written for one of its base classes.
struct free_function_of_a_base {};

/// The class whose serialization cereal uses for T: T, a base class of T, or
/// free_function_of_a_base; void when T has no serialization of its own.
template <class T>
using serialization_owner_t = std::conditional_t<
    probe::member_serialize<T>::value || probe::member_serialize_v<T>::value || probe::member_save<T>::value ||
        probe::member_save_v<T>::value || probe::member_load<T>::value || probe::member_load_v<T>::value,
    // a member: the class that declared it (T when an overload set hides it from the probe)
    std::conditional_t<
        std::is_void_v<typename probe::first_class<typename probe::serialize_template_owner<T>::type,
                                                   typename probe::save_template_owner<T>::type,
                                                   typename probe::load_template_owner<T>::type,
                                                   typename probe::serialize_owner<T>::type,
                                                   typename probe::save_owner<T>::type>::type>,
        T,
        typename probe::first_class<typename probe::serialize_template_owner<T>::type,
                                    typename probe::save_template_owner<T>::type,
                                    typename probe::load_template_owner<T>::type,
                                    typename probe::serialize_owner<T>::type,
                                    typename probe::save_owner<T>::type>::type>,
    std::conditional_t<has_own_serialization<T>,
                       std::conditional_t<probe::adl_exact<T>, T, free_function_of_a_base>, void>>;

// ---- the derived serialization ---------------------------------------------------------------

template <class Archive, class T>
void serialize_members(Archive& archive, T& object) {
  boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
    auto& member = boost::hana::second(pair)(object);
    archive(cereal::make_nvp(boost::hana::to<const char*>(boost::hana::first(pair)), member));
  });
}

}  // namespace keel::reflect

namespace cereal {
/// keel's generic serialization for reflected structs without one of their own.
template <class Archive, class T,
          std::enable_if_t<keel::reflect::uses_reflected_serialize<T>, int> = 0>
void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& archive, T& object) {
  static_assert(keel::layout::declaration_is_whole<T>(),
                "keel [every member declared]: a type declared with BOOST_HANA_DEFINE_STRUCT and saved by keel (a "
                "component, or a member of one) has a data member outside its declaration, which would not be "
                "saved. Declare every data member, or write a cereal `serialize` of your own.");
  keel::reflect::serialize_members(archive, object);
}
}  // namespace cereal
