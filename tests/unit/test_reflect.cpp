// Type-level facts of keel's reflection rules, and the serialization keel derives from them.
#include <keel/keel.hpp>

#include <cereal/archives/json.hpp>
#include <doctest/doctest.h>

#include <random>
#include <sstream>

namespace reflect_test {

struct Reflected {
  BOOST_HANA_DEFINE_STRUCT(Reflected, (double, best), (std::int64_t, wait), (std::string, label));
};
struct ReflectedWithHiddenMember {
  BOOST_HANA_DEFINE_STRUCT(ReflectedWithHiddenMember, (double, best), (std::int64_t, wait));
  std::int64_t hidden = 0;
};
struct ReflectedWithPaddingMember {
  BOOST_HANA_DEFINE_STRUCT(ReflectedWithPaddingMember, (double, best), (int, wait));
  int hidden = 0;
};
struct ReflectedWithConstructor {  // not an aggregate: only the size rule can apply
  ReflectedWithConstructor() : best(0), wait(0) {}
  BOOST_HANA_DEFINE_STRUCT(ReflectedWithConstructor, (double, best), (std::int64_t, wait));
};
struct ReflectedWithEngine {
  BOOST_HANA_DEFINE_STRUCT(ReflectedWithEngine, (std::mt19937_64, engine), (std::int64_t, draws));
};
struct MemberSerialize {
  int x = 0;
  template <class A> void serialize(A& a) { a(x); }
};
struct MemberSaveLoad {
  int x = 0;
  template <class A> void save(A& a) const { a(x); }
  template <class A> void load(A& a) { a(x); }
};
struct VersionedMemberSerialize {
  int x = 0;
  template <class A> void serialize(A& a, std::uint32_t) { a(x); }
};
struct FreeSerialize {
  int x = 0;
};
template <class A> void serialize(A& a, FreeSerialize& f) { a(f.x); }

/// Reflected and with a serialize of its own: its own wins, keel's generic one steps aside.
struct ReflectedWithOwnSerialize {
  BOOST_HANA_DEFINE_STRUCT(ReflectedWithOwnSerialize, (int, saved), (int, skipped));
  template <class A> void serialize(A& a) { a(cereal::make_nvp("saved", saved)); }
};
struct Plain {
  int x = 0;
};
struct Empty {
  void on_fit_start(keel::Context&) {}
};

using keel::reflect::has_own_serialization;
using keel::reflect::is_reflected;
using keel::reflect::uses_reflected_serialize;
using Format = keel::format::Binary;

static_assert(is_reflected<Reflected> && !is_reflected<Plain> && !is_reflected<MemberSerialize>);
static_assert(!has_own_serialization<Reflected>);
static_assert(has_own_serialization<MemberSerialize>);
static_assert(has_own_serialization<MemberSaveLoad>);
static_assert(has_own_serialization<VersionedMemberSerialize>);
static_assert(has_own_serialization<FreeSerialize>);
static_assert(has_own_serialization<ReflectedWithOwnSerialize>);
static_assert(uses_reflected_serialize<Reflected> && !uses_reflected_serialize<ReflectedWithOwnSerialize>);

using keel::layout::field_count_matches;
using keel::layout::size_matches;
using keel::layout::tail_matches;
static_assert(size_matches<Reflected>() && tail_matches<Reflected>() && field_count_matches<Reflected>());
static_assert(!size_matches<ReflectedWithHiddenMember>());
static_assert(size_matches<ReflectedWithPaddingMember>(), "hides in padding: size alone misses it");
static_assert(!field_count_matches<ReflectedWithPaddingMember>(), "the field count catches it");
static_assert(keel::layout::aggregate_field_count<Reflected> == 3);
static_assert(size_matches<ReflectedWithConstructor>() && tail_matches<ReflectedWithConstructor>());
static_assert(size_matches<ReflectedWithEngine>() && tail_matches<ReflectedWithEngine>());

// A non-aggregate hides a member in tail padding from sizeof, not from its data size.
struct ConstructedWithFlag {
  ConstructedWithFlag() {}
  BOOST_HANA_DEFINE_STRUCT(ConstructedWithFlag, (double, total), (int, count));
  bool flag = false;
};
static_assert(size_matches<ConstructedWithFlag>() && !tail_matches<ConstructedWithFlag>());
static_assert(keel::layout::data_size<ConstructedWithFlag>() == 13);

// A polymorphic class: its vptr is not a hidden member.
struct Polymorphic {
  virtual ~Polymorphic() = default;
  BOOST_HANA_DEFINE_STRUCT(Polymorphic, (std::int64_t, steps), (int, wait));
  void on_fit_start(keel::Context&) {}
};
static_assert(size_matches<Polymorphic>() && tail_matches<Polymorphic>());
static_assert(keel::check_component_state<Polymorphic, Format>());

// Where a serialization is declared: the class itself, or the base it inherits it from.
struct DerivedSerialize : MemberSerialize {};
static_assert(std::is_same_v<keel::reflect::serialization_owner_t<MemberSerialize>, MemberSerialize>);
static_assert(std::is_same_v<keel::reflect::serialization_owner_t<DerivedSerialize>, MemberSerialize>);
static_assert(std::is_same_v<keel::reflect::serialization_owner_t<MemberSaveLoad>, MemberSaveLoad>);
static_assert(std::is_same_v<keel::reflect::serialization_owner_t<FreeSerialize>, FreeSerialize>);
struct DerivedFree : FreeSerialize {};
static_assert(std::is_same_v<keel::reflect::serialization_owner_t<DerivedFree>, keel::reflect::free_function_of_a_base>);
static_assert(keel::check_component_state<DerivedSerialize, Format>(), "adds no data: the inherited serialize is whole");

static_assert(keel::cereal_serializable<Reflected, Format>);
static_assert(keel::cereal_serializable<MemberSerialize, Format>);
static_assert(keel::cereal_serializable<FreeSerialize, Format>);
static_assert(keel::cereal_serializable<ReflectedWithOwnSerialize, Format>);
static_assert(!keel::cereal_serializable<Plain, Format>);

static_assert(keel::check_component_state<Empty, Format>());
static_assert(keel::check_component_state<Reflected, Format>());
static_assert(keel::check_component_state<ReflectedWithEngine, Format>());
static_assert(keel::check_component_state<MemberSaveLoad, Format>());
static_assert(keel::check_component_state<keel::EarlyStopping, Format>());
static_assert(keel::check_component_state<keel::sched::CosineWarmup, Format>());
static_assert(keel::check_component_state<keel::optim::AdamW, Format, keel::optim::AdamW::torch_optimizer_base>());

TEST_CASE("keel derives a named serialization from BOOST_HANA_DEFINE_STRUCT") {
  Reflected original{0.25, 7, "loss"};
  std::stringstream json;
  {
    cereal::JSONOutputArchive archive(json);
    archive(cereal::make_nvp("tracker", original));
  }
  const std::string text = json.str();
  CHECK(text.find("\"best\": 0.25") != std::string::npos);
  CHECK(text.find("\"wait\": 7") != std::string::npos);
  CHECK(text.find("\"label\": \"loss\"") != std::string::npos);

  Reflected loaded{};
  {
    cereal::JSONInputArchive archive(json);
    archive(cereal::make_nvp("tracker", loaded));
  }
  CHECK(loaded.best == 0.25);
  CHECK(loaded.wait == 7);
  CHECK(loaded.label == "loss");
}

TEST_CASE("a reflected struct's own serialize takes precedence over the derived one") {
  ReflectedWithOwnSerialize original{1, 2};
  std::stringstream json;
  {
    cereal::JSONOutputArchive archive(json);
    archive(cereal::make_nvp("value", original));
  }
  CHECK(json.str().find("saved") != std::string::npos);
  CHECK(json.str().find("skipped") == std::string::npos);
}

TEST_CASE("a random engine inside a reflected struct round-trips with its exact stream position") {
  ReflectedWithEngine original{std::mt19937_64(5), 0};
  for (int i = 0; i < 1000; ++i) original.engine();
  std::stringstream bytes;
  {
    cereal::PortableBinaryOutputArchive archive(bytes);
    archive(original);
  }
  ReflectedWithEngine loaded{};
  {
    cereal::PortableBinaryInputArchive archive(bytes);
    archive(loaded);
  }
  for (int i = 0; i < 100; ++i) CHECK(loaded.engine() == original.engine());
}

}  // namespace reflect_test
