#pragma once
// The values of some of a component's declared (BOOST_HANA_DEFINE_STRUCT) members, copied out
// of it and back into it. A model or an optimizer policy cannot be copied or built a second
// time, so its members section is staged as these values: parsed and checked apart from the
// live object, applied to it only once every section of a checkpoint is valid.

#include <keel/layout.hpp>

#include <cereal/cereal.hpp>

#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace keel::state {

namespace detail {
template <class T, template <class> class Keep, std::size_t... I>
constexpr std::size_t kept_count(std::index_sequence<I...>) {
  return (std::size_t{0} + ... + (Keep<layout::member_type_at<T, I>>::value ? 1 : 0));
}
template <class T, template <class> class Keep, std::size_t K, std::size_t... I>
constexpr std::array<std::size_t, K + 1> kept_indices(std::index_sequence<I...>) {
  std::array<std::size_t, K + 1> out{};
  std::size_t k = 0;
  ((Keep<layout::member_type_at<T, I>>::value ? (out[k++] = I, 0) : 0), ...);
  return out;
}
}  // namespace detail

/// Every declared member of T whose type satisfies Keep (a model keeps what is not saved as a
/// parameter, buffer or submodule), by its declared name.
template <class T, template <class> class Keep>
class DeclaredValues {
  static constexpr std::size_t declared = layout::accessors_t<T>::size;
  static constexpr std::size_t count = detail::kept_count<T, Keep>(std::make_index_sequence<declared>{});
  static constexpr auto indices = detail::kept_indices<T, Keep, count>(std::make_index_sequence<declared>{});

  template <std::size_t... J>
  static auto values_type(std::index_sequence<J...>) -> std::tuple<layout::member_type_at<T, indices[J]>...>;
  using Values = decltype(values_type(std::make_index_sequence<count>{}));

  template <std::size_t J>
  static constexpr auto pointer() {
    using Accessor = std::decay_t<decltype(boost::hana::second(boost::hana::at_c<indices[J]>(boost::hana::accessors<T>())))>;
    return layout::accessor_traits<Accessor>::pointer;
  }

 public:
  static constexpr bool empty = count == 0;

  /// Copies of the members' values.
  static DeclaredValues capture(const T& object) {
    DeclaredValues out;
    out.for_each_index([&](auto j) { std::get<j>(out.values_) = object.*pointer<j>(); });
    return out;
  }
  /// Moves the values into the object's members.
  void apply(T& object) && {
    for_each_index([&](auto j) { object.*pointer<j>() = std::move(std::get<j>(values_)); });
  }

  template <class Archive>
  void serialize(Archive& archive) {
    for_each_index([&](auto j) {
      archive(cereal::make_nvp(layout::member_name_at<T, indices[j]>(), std::get<j>(values_)));
    });
  }

 private:
  template <class F>
  void for_each_index(F&& f) {
    for_each_index(std::forward<F>(f), std::make_index_sequence<count>{});
  }
  template <class F, std::size_t... J>
  void for_each_index(F&& f, std::index_sequence<J...>) {
    (f(std::integral_constant<std::size_t, J>{}), ...);
  }

  Values values_{};
};

}  // namespace keel::state
