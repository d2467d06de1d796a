#pragma once
// cereal serialization of the standard random engines (std::mt19937_64 and friends), so a
// component's own engines are saved like any other member. The engines' textual state is
// specified by the standard, hence identical across library implementations.

#include <cereal/cereal.hpp>
#include <cereal/types/string.hpp>

#include <random>
#include <sstream>
#include <stdexcept>
#include <string>

namespace keel::detail {
template <class Archive, class Engine>
void save_engine(Archive& archive, const Engine& engine) {
  std::ostringstream out;
  out << engine;
  archive(cereal::make_nvp("engine_state", out.str()));
}
template <class Archive, class Engine>
void load_engine(Archive& archive, Engine& engine) {
  std::string text;
  archive(cereal::make_nvp("engine_state", text));
  std::istringstream in(text);
  Engine restored;
  in >> restored;
  if (in.fail()) throw std::runtime_error("keel: corrupt random engine state");
  engine = restored;
}
}  // namespace keel::detail

namespace cereal {
// In namespace cereal, like cereal's own support for std types: argument-dependent lookup
// through the archive type finds them (adding overloads to namespace std is not allowed).
using std::size_t;
using std::linear_congruential_engine;
using std::mersenne_twister_engine;
using std::subtract_with_carry_engine;
using std::discard_block_engine;
template <class Archive, class U, U a, U c, U m>
void save(Archive& ar, const linear_congruential_engine<U, a, c, m>& e) { keel::detail::save_engine(ar, e); }
template <class Archive, class U, U a, U c, U m>
void load(Archive& ar, linear_congruential_engine<U, a, c, m>& e) { keel::detail::load_engine(ar, e); }

template <class Archive, class U, size_t w, size_t n, size_t m, size_t r, U a, size_t u, U d,
          size_t s, U b, size_t t, U c, size_t l, U f>
void save(Archive& ar, const mersenne_twister_engine<U, w, n, m, r, a, u, d, s, b, t, c, l, f>& e) {
  keel::detail::save_engine(ar, e);
}
template <class Archive, class U, size_t w, size_t n, size_t m, size_t r, U a, size_t u, U d,
          size_t s, U b, size_t t, U c, size_t l, U f>
void load(Archive& ar, mersenne_twister_engine<U, w, n, m, r, a, u, d, s, b, t, c, l, f>& e) {
  keel::detail::load_engine(ar, e);
}

template <class Archive, class U, size_t w, size_t s, size_t r>
void save(Archive& ar, const subtract_with_carry_engine<U, w, s, r>& e) { keel::detail::save_engine(ar, e); }
template <class Archive, class U, size_t w, size_t s, size_t r>
void load(Archive& ar, subtract_with_carry_engine<U, w, s, r>& e) { keel::detail::load_engine(ar, e); }

template <class Archive, class E, size_t p, size_t r>
void save(Archive& ar, const discard_block_engine<E, p, r>& e) { keel::detail::save_engine(ar, e); }
template <class Archive, class E, size_t p, size_t r>
void load(Archive& ar, discard_block_engine<E, p, r>& e) { keel::detail::load_engine(ar, e); }
}  // namespace cereal
