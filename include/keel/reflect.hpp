#pragma once
// Serialization derived from Boost.Hana reflection.
//
// A component declared with BOOST_HANA_DEFINE_STRUCT and no serialization of its own gets a
// cereal `serialize` that visits every reflected member, each named with make_nvp so the JSON
// form reads like the struct. A type that brings its own cereal serialization keeps it: the
// generic overload is removed from overload resolution for such types, so cereal never sees
// two ways to serialize one type.
//
// The reflected members must be the whole object. Two facts expose a member declared outside
// BOOST_HANA_DEFINE_STRUCT: the reflected members, laid out in order, must account for the
// whole sizeof; and an aggregate must accept exactly as many brace initializers as there are
// reflected members (a member hidden in tail padding passes the first test, not the second).

#include <boost/hana/accessors.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/define_struct.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/length.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>
#include <boost/hana/unpack.hpp>

#include <cereal/access.hpp>
#include <cereal/cereal.hpp>

#include <algorithm>
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

// ---- are the reflected members the whole object? ------------------------------------------

template <class... M>
struct type_list {
  static constexpr std::size_t size = sizeof...(M);
};

template <class T>
struct member_types_of {
  template <class... Pairs>
  auto operator()(Pairs&&...) const {
    return type_list<std::remove_cv_t<std::remove_reference_t<decltype(boost::hana::second(
        std::declval<Pairs>())(std::declval<T&>()))>>...>{};
  }
};

template <class T>
using reflected_members_t =
    decltype(boost::hana::unpack(boost::hana::accessors<T>(), member_types_of<T>{}));

/// sizeof of a struct holding exactly these members, in this order (the Itanium C++ ABI rule
/// for standard-layout structs: each member at the next multiple of its alignment).
template <class... M>
constexpr std::size_t laid_out_size(type_list<M...>) {
  std::size_t offset = 0;
  std::size_t align = 1;
  ((offset = (offset + alignof(M) - 1) / alignof(M) * alignof(M) + sizeof(M),
    align = std::max<std::size_t>(align, alignof(M))),
   ...);
  const std::size_t size = (offset + align - 1) / align * align;
  return size == 0 ? 1 : size;
}

template <class T>
inline constexpr bool reflected_size_matches =
    laid_out_size(reflected_members_t<T>{}) == sizeof(T);

namespace detail {
template <class T>
struct any_initializer {
  template <class U, class = std::enable_if_t<!std::is_same_v<std::decay_t<U>, T>>>
  constexpr operator U() const noexcept;  // never defined: used in unevaluated contexts only
};

template <class T, class Indices, class = void>
struct brace_initializable : std::false_type {};
template <class T, std::size_t... I>
struct brace_initializable<T, std::index_sequence<I...>,
                           std::void_t<decltype(T{(static_cast<void>(I), any_initializer<T>{})...})>>
    : std::true_type {};

template <class T, std::size_t N>
constexpr std::size_t count_fields() {
  if constexpr (N > 128) {
    return N;  // give up: larger aggregates are not components
  } else if constexpr (!brace_initializable<T, std::make_index_sequence<N + 1>>::value) {
    return N;
  } else {
    return count_fields<T, N + 1>();
  }
}
}  // namespace detail

/// Number of initializers an aggregate accepts in braces (its fields, bases included).
template <class T>
inline constexpr std::size_t aggregate_field_count = detail::count_fields<T, 0>();

template <class T>
constexpr bool reflected_count_matches() {
  if constexpr (std::is_aggregate_v<T>) {
    return aggregate_field_count<T> == reflected_members_t<T>::size;
  } else {
    return true;  // a class with constructors: only the size rule applies
  }
}

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
  keel::reflect::serialize_members(archive, object);
}
}  // namespace cereal
