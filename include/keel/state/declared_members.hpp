#pragma once
// The values of some of a component's declared (BOOST_HANA_DEFINE_STRUCT) members, copied out
// of it and back into it. A model or an optimizer policy cannot be copied or built a second
// time, so its members section is staged as these values: parsed and checked apart from the
// live object, applied to it only once every section of a checkpoint is valid.

#include <keel/layout.hpp>

#include <cereal/cereal.hpp>
#include <torch/types.h>

#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::state {

namespace detail {
/// Puts a loaded value into a member. A tensor of the same shape and dtype is copied into the
/// member's own tensor, which keeps its device and every alias of it (a tensor the module also
/// holds as a registered parameter stays that parameter); any other tensor goes onto the
/// member's device.
template <class V>
void assign_value(V& member, V&& loaded) {
  member = std::move(loaded);
}
inline void assign_value(torch::Tensor& member, torch::Tensor&& loaded) {
  if (member.defined() && loaded.defined() && member.sizes() == loaded.sizes() &&
      member.scalar_type() == loaded.scalar_type()) {
    torch::NoGradGuard no_grad;
    member.copy_(loaded);
  } else if (member.defined() && loaded.defined()) {
    member = loaded.to(member.device());
  } else {
    member = std::move(loaded);
  }
}
inline void assign_value(std::vector<torch::Tensor>& member, std::vector<torch::Tensor>&& loaded) {
  if (member.size() != loaded.size()) {
    member = std::move(loaded);
    return;
  }
  for (std::size_t i = 0; i < member.size(); ++i) assign_value(member[i], std::move(loaded[i]));
}

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
  /// Moves the values into the object's members (tensors in place, see assign_value).
  void apply(T& object) && {
    for_each_index([&](auto j) { detail::assign_value(object.*pointer<j>(), std::move(std::get<j>(values_))); });
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
