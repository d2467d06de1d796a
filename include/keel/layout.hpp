#pragma once
// Are a component's declared members the whole object? The measurements behind the
// compile-time guarantee (keel/state_check.hpp states the rules).
//
// A member declared outside BOOST_HANA_DEFINE_STRUCT (or BOOST_HANA_ADAPT_STRUCT) would not
// be saved. C++17 cannot list a class's members, but it can measure the class, and the
// declared members predict each measurement exactly (the Itanium C++ ABI used by g++ and
// clang++: each member at the next multiple of its alignment, after the vptr of a polymorphic
// class or after the data of a base keel saves by other means):
//
//   sizeof(T)        must equal the predicted size;
//   data_size<T>     (where a class derived from T puts its first member: T's size without its
//                    tail padding) must equal the end of the last declared member. This sees a
//                    member hidden in tail padding, which sizeof cannot (a bool after an int);
//   an aggregate     must accept exactly as many brace initializers as there are members;
//   offsets          each declared member must lie where the prediction puts it; only a live
//                    object has addresses, so the Trainer checks this when it is constructed
//                    (a member declared before the declaration, hiding in alignment padding).
//
// What stays out of reach is stated in README.md ("What the guarantee covers"): a `final`
// class cannot be derived from to measure its data size, so one whose declared members leave
// tail padding is refused rather than guessed at.

#include <boost/hana/accessors.hpp>
#include <boost/hana/at.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/define_struct.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>
#include <boost/hana/unpack.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::layout {

template <class... M>
struct type_list {
  static constexpr std::size_t size = sizeof...(M);
};

// ---- the declared members: Hana accessors that are pointers to data members ------------------

/// What one Hana accessor is. BOOST_HANA_DEFINE_STRUCT and BOOST_HANA_ADAPT_STRUCT make each
/// accessor a pointer to a data member; the pointer's class is where the member was declared.
template <class Accessor>
struct accessor_traits {
  static constexpr bool is_data_member = false;
  using class_type = void;
  using member_type = void;
};
template <class M, class C, M C::*Pointer>
struct accessor_traits<boost::hana::struct_detail::member_ptr<M C::*, Pointer>> {
  static constexpr bool is_data_member = true;
  using class_type = C;
  using member_type = M;
  static constexpr M C::*pointer = Pointer;
};

struct accessor_types_of {
  template <class... Pairs>
  auto operator()(Pairs&&...) const {
    return type_list<std::decay_t<decltype(boost::hana::second(std::declval<Pairs>()))>...>{};
  }
};
/// The accessor types of a reflected T, in declaration order.
template <class T>
using accessors_t = decltype(boost::hana::unpack(boost::hana::accessors<T>(), accessor_types_of{}));

template <class T, std::size_t I>
using member_type_at = typename accessor_traits<std::decay_t<decltype(boost::hana::second(
    boost::hana::at_c<I>(boost::hana::accessors<T>())))>>::member_type;

template <class T, std::size_t I>
const char* member_name_at() {
  return boost::hana::to<const char*>(boost::hana::first(boost::hana::at_c<I>(boost::hana::accessors<T>())));
}

template <class... A>
constexpr bool all_data_members(type_list<A...>) {
  return (accessor_traits<A>::is_data_member && ... && true);
}
/// Every accessor of T is a pointer to a data member (not a BOOST_HANA_ADAPT_ADT function).
template <class T>
inline constexpr bool declares_data_members = all_data_members(accessors_t<T>{});

template <class First, class... Rest>
auto first_class(type_list<First, Rest...>) -> typename accessor_traits<First>::class_type;
auto first_class(type_list<>) -> void;
template <class Owner, class... A>
constexpr bool all_declared_in(type_list<A...>) {
  return (std::is_same_v<typename accessor_traits<A>::class_type, Owner> && ... && true);
}

/// The class that declares T's reflected members: T itself, or a base whose
/// BOOST_HANA_DEFINE_STRUCT T inherited (void when they come from more than one class).
template <class T>
using reflection_owner_t = std::conditional_t<
    all_declared_in<decltype(first_class(accessors_t<T>{}))>(accessors_t<T>{}),
    decltype(first_class(accessors_t<T>{})), void>;

// ---- measuring -------------------------------------------------------------------------------

/// Where the declared members start: after the data of a base that keel saves by other means
/// (`SavedBase`: torch::nn::Module, whose parameters and buffers are saved by name, or
/// keel::optim::TorchOptimizer), else after the vptr of a polymorphic class, else at 0.
struct Start {
  std::size_t offset;
  std::size_t align;
};

namespace detail {
template <class T>
struct tail_probe : T {
  char keel_tail_probe;
};
}  // namespace detail

/// sizeof(T) without its tail padding: where a class derived from T puts its first member
/// (the ABI reuses the tail padding of any class that is not a C++03 POD). A `final` class
/// cannot be derived from: its sizeof stands in.
template <class T>
constexpr std::size_t data_size() {
  if constexpr (std::is_class_v<T> && !std::is_final_v<T>) {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"  // conditionally supported; g++ and clang++ support it
#endif
    return offsetof(detail::tail_probe<T>, keel_tail_probe);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  } else {
    return sizeof(T);
  }
}

template <class T, class SavedBase = void>
constexpr Start members_start() {
  if constexpr (!std::is_void_v<SavedBase>) {
    return {data_size<SavedBase>(), alignof(SavedBase)};
  } else if constexpr (std::is_polymorphic_v<T>) {
    return {sizeof(void*), alignof(void*)};
  } else {
    return {0, 1};
  }
}

/// The layout the declared members predict.
template <std::size_t N>
struct Prediction {
  std::array<std::size_t, N + 1> offsets{};  // of each member (one spare: N may be 0)
  std::size_t end = 0;                       // just past the last member: the data size
  std::size_t size = 0;                      // with tail padding: sizeof
};

template <class... A>
constexpr Prediction<sizeof...(A)> predict(Start start, type_list<A...>) {
  Prediction<sizeof...(A)> p;
  std::size_t offset = start.offset;
  std::size_t align = start.align;
  std::size_t i = 0;
  auto place = [&](std::size_t member_size, std::size_t member_align) {
    offset = (offset + member_align - 1) / member_align * member_align;
    p.offsets[i++] = offset;
    offset += member_size;
    align = std::max(align, member_align);
  };
  (place(sizeof(typename accessor_traits<A>::member_type), alignof(typename accessor_traits<A>::member_type)), ...);
  p.end = offset;
  p.size = std::max<std::size_t>((offset + align - 1) / align * align, 1);
  return p;
}

template <class T, class SavedBase = void>
constexpr auto prediction() {
  auto p = predict(members_start<T, SavedBase>(), accessors_t<T>{});
  const std::size_t align = alignof(T);  // an alignas on the class rounds its size up
  p.size = (p.size + align - 1) / align * align;
  return p;
}

/// sizeof(T) is what the declared members (and the vptr or saved base) add up to.
template <class T, class SavedBase = void>
constexpr bool size_matches() {
  return prediction<T, SavedBase>().size == sizeof(T);
}

/// Nothing hides in T's tail padding. For a non-POD class the data size is exact; a C++03 POD
/// (an aggregate: its tail padding is never reused) is covered by the field count instead. A
/// `final` class passes only when the declared members leave no tail padding at all.
template <class T, class SavedBase = void>
constexpr bool tail_matches() {
  constexpr auto p = prediction<T, SavedBase>();
  if constexpr (std::is_final_v<T>) {
    return p.end == sizeof(T) || std::is_aggregate_v<T>;
  } else {
    return data_size<T>() == p.end || (std::is_aggregate_v<T> && data_size<T>() == sizeof(T));
  }
}

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

/// An aggregate has exactly the declared fields (a member in tail padding adds a field).
template <class T>
constexpr bool field_count_matches() {
  if constexpr (std::is_aggregate_v<T>) {
    return aggregate_field_count<T> == accessors_t<T>::size;
  } else {
    return true;  // not an aggregate: data_size covers it
  }
}

/// T adds no data to its base `Base` (whose serialization it inherits).
template <class T, class Base>
constexpr bool adds_no_data() {
  if constexpr (std::is_final_v<T>) {
    return sizeof(T) == sizeof(Base) && data_size<Base>() == sizeof(Base);
  } else {
    return sizeof(T) == sizeof(Base) && data_size<T>() == data_size<Base>();
  }
}

/// Every measurement agrees with the declaration of T, or of the base whose declaration T
/// inherits without adding data (the rules of keel/state_check.hpp, as one value for the
/// reflected types saved inside a component).
template <class T>
constexpr bool declaration_is_whole() {
  if constexpr (!declares_data_members<T>) {
    return false;
  } else {
    using Declarer = reflection_owner_t<T>;
    if constexpr (std::is_void_v<Declarer>) {
      return false;
    } else if constexpr (!std::is_same_v<Declarer, T>) {
      return adds_no_data<T, Declarer>() && declaration_is_whole<Declarer>();
    } else {
      return size_matches<T>() && tail_matches<T>() && field_count_matches<T>();
    }
  }
}

// ---- the one check only a live object allows --------------------------------------------------

/// Every declared member of `object` at the offset the prediction gives it; one line per member
/// that is not (a data member declared before the declaration, hiding in alignment padding, or
/// a base with data). Empty when the layout is as declared.
template <class T, class SavedBase = void>
std::vector<std::string> misplaced_members(const T& object, const std::string& type_name) {
  std::vector<std::string> problems;
  constexpr auto p = prediction<T, SavedBase>();
  const auto* base = reinterpret_cast<const char*>(std::addressof(object));
  std::size_t i = 0;
  boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
    const auto& member = boost::hana::second(pair)(object);
    const auto offset = static_cast<std::size_t>(reinterpret_cast<const char*>(std::addressof(member)) - base);
    if (offset != p.offsets[i])
      problems.push_back("keel: " + type_name + "'s declared member '" +
                         boost::hana::to<const char*>(boost::hana::first(pair)) + "' lies at byte " +
                         std::to_string(offset) + " but would lie at byte " + std::to_string(p.offsets[i]) +
                         " if the declared members were all of its data: a data member declared before "
                         "BOOST_HANA_DEFINE_STRUCT (or a base class with data) would not be saved. "
                         "Declare every data member.");
    ++i;
  });
  return problems;
}

}  // namespace keel::layout
