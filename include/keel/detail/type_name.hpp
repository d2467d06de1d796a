#pragma once
// Readable type names for checkpoint manifests and fingerprints. g++ and clang++ share the
// Itanium ABI on Linux, so a name written by one is read back identically by the other.

#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

#if defined(__GNUG__)
#include <cxxabi.h>
#endif

namespace keel::detail {

template <class T>
std::string type_name() {
  const char* mangled = typeid(T).name();
#if defined(__GNUG__)
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  if (status == 0 && demangled) return demangled.get();
#endif
  return mangled;
}

/// keel's own components name themselves (`static constexpr const char* keel_name`) so that a
/// rename inside keel's namespaces never orphans old checkpoints; user types use their C++ name.
template <class T, class = void>
struct has_keel_name : std::false_type {};
template <class T>
struct has_keel_name<T, std::void_t<decltype(T::keel_name)>> : std::true_type {};

template <class T>
std::string component_name() {
  if constexpr (has_keel_name<T>::value) {
    return T::keel_name;
  } else {
    return type_name<T>();
  }
}

/// A component chosen at run time (keel::optim::OneOf, keel::sched::OneOf) names itself after its
/// choice, `std::string keel_component_name() const`, so that its checkpoint sections are those
/// of the component it runs.
template <class T, class = void>
struct names_itself : std::false_type {};
template <class T>
struct names_itself<T, std::void_t<decltype(std::string(std::declval<const T&>().keel_component_name()))>>
    : std::true_type {};

template <class T>
std::string component_name_of(const T& component) {
  if constexpr (names_itself<T>::value) {
    return component.keel_component_name();
  } else {
    return component_name<T>();
  }
}

}  // namespace keel::detail
