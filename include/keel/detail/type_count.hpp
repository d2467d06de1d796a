#pragma once
// How many times a type appears in a list of types: the one fold behind "each Options type
// once" (keel::optim::OneOf, keel::sched::OneOf) and "a callback type once" (the Trainer's
// constructor arguments).

#include <cstddef>
#include <type_traits>

namespace keel::detail {

template <class T, class... Ts>
inline constexpr std::size_t type_count = (std::size_t{0} + ... + (std::is_same_v<T, Ts> ? 1 : 0));

}  // namespace keel::detail
