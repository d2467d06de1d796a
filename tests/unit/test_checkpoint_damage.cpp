// Damaged and hostile checkpoint files: truncation at every offset, bit flips across the file,
// damage hidden behind recomputed checksums, manifests and tensor shapes that point outside the
// file or overflow, newer layouts. Every one must be refused with a reason, without a crash, and
// without changing the trainer that tried to load it. CI also runs these under ASan and UBSan.
#include "support/fault_report.hpp"
#include "support/synthetic.hpp"

#include <keel/keel.hpp>

#include <doctest/doctest.h>

#include <cereal/archives/portable_binary.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <filesystem>
#include <random>
#include <sstream>

namespace fs = std::filesystem;

namespace damage_test {

using keel_test::SmallNetImpl;
using keel_test::SyntheticImages;

using Trainer = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                              keel::callbacks<keel::EarlyStopping>>;

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("keel-damage-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

Trainer make_trainer(const fs::path& dir) {
  keel::seed_everything(1);
  return Trainer(std::make_shared<SmallNetImpl>(),
                 keel::TrainerOptions().max_steps(6).batch_size(8).checkpoint_dir(dir.string()).stop_signals(std::vector<int>{}),
                 torch::optim::AdamWOptions(1e-3));
}

/// A real checkpoint (6 AdamW steps of the small CNN) and a trainer in another state that
/// tries to load damaged copies of it.
struct Fixture {
  fs::path dir = fresh_directory("fixture");
  std::vector<char> good;
  Fixture() {
    auto writer = make_trainer(dir);
    SyntheticImages data(64, 3);
    writer.fit(data);
    good = keel::ckpt::read_file(dir / keel::ckpt::step_file_name(6));
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

/// Loads `bytes` into `trainer`: "" on success, else the error; any failure must leave the
/// trainer's state digest as it was.
std::string try_load(Trainer& trainer, const std::vector<char>& bytes) {
  const std::string before = trainer.state_digest();
  try {
    trainer.load_checkpoint(bytes, "damaged.ckpt");
    return "";
  } catch (const keel::CheckpointError& e) {
    CHECK(trainer.state_digest() == before);  // all or nothing
    return e.what();
  }
}

/// Rebuilds a container around `body` (header + sections) and `manifest` with every checksum
/// recomputed, so that the damage inside reaches the parsers.
std::vector<char> seal(std::vector<char> body, keel::ckpt::Manifest manifest) {
  for (auto& s : manifest.sections)
    if (s.offset <= body.size() && s.size <= body.size() - s.offset)
      s.checksum = keel::hash64(body.data() + s.offset, s.size);
  std::ostringstream stream;
  {
    cereal::PortableBinaryOutputArchive archive(stream);
    archive(manifest);
  }
  const std::string m = stream.str();
  std::vector<char> out = std::move(body);
  const std::uint64_t manifest_offset = out.size();
  out.insert(out.end(), m.begin(), m.end());
  char trailer[keel::ckpt::trailer_size] = {};
  keel::ckpt::detail::put_u64(trailer, manifest_offset);
  keel::ckpt::detail::put_u64(trailer + 8, m.size());
  keel::ckpt::detail::put_u64(trailer + 16, keel::hash64(m.data(), m.size()));
  out.insert(out.end(), trailer, trailer + 24);
  keel::ckpt::detail::put_u64(trailer + 24, keel::hash64(out.data(), out.size()));
  std::memcpy(trailer + 32, keel::ckpt::end_magic, 8);
  out.insert(out.end(), trailer + 24, trailer + 40);
  return out;
}

/// The good file split into its body (everything before the manifest) and its manifest.
std::pair<std::vector<char>, keel::ckpt::Manifest> split_good() {
  const auto container = keel::ckpt::parse_container(fixture().good, "good");
  const std::uint64_t manifest_offset =
      keel::ckpt::detail::get_u(fixture().good.data() + fixture().good.size() - keel::ckpt::trailer_size, 8);
  return {std::vector<char>(fixture().good.begin(), fixture().good.begin() + static_cast<long>(manifest_offset)),
          container.manifest};
}

TEST_CASE("the reseal helper reproduces the good file byte for byte") {
  auto parts = split_good();  // (no structured binding: clang 14 cannot capture one)
  auto& body = parts.first;
  auto& manifest = parts.second;
  CHECK(seal(body, manifest) == fixture().good);
}

TEST_CASE("truncation at every byte offset is refused, and a failed load changes nothing") {
  const auto& good = fixture().good;
  auto trainer = make_trainer(fresh_directory("truncate"));
  std::size_t refused = 0;
  for (std::size_t length = 0; length < good.size(); ++length) {
    const std::vector<char> cut(good.begin(), good.begin() + static_cast<long>(length));
    try {
      keel::ckpt::parse_container(cut, "cut");
      FAIL("a checkpoint cut at byte " << length << " was accepted");
    } catch (const keel::CheckpointError& e) {
      ++refused;
      if (length > 0 && length < keel::ckpt::header_size + keel::ckpt::trailer_size) {
        const std::string what = e.what();
        CHECK((what.find("truncated") != std::string::npos || what.find("not a keel checkpoint") != std::string::npos));
      }
    }
    if (length % 97 == 0) CHECK(try_load(trainer, cut) != "");  // through the trainer too
  }
  CHECK(refused == good.size());
  keel_test::report_fault("checkpoint truncated (every byte offset of a real file)", static_cast<long>(refused),
                          "refused with the reason (empty / truncated / no end marker); trainer unchanged");
}

TEST_CASE("a flipped bit anywhere in the file is refused, naming what it hit") {
  const auto& good = fixture().good;
  auto trainer = make_trainer(fresh_directory("flip"));
  std::vector<std::size_t> positions;
  for (std::size_t i = 0; i < keel::ckpt::header_size; ++i) positions.push_back(i);
  for (std::size_t i = good.size() - keel::ckpt::trailer_size; i < good.size(); ++i) positions.push_back(i);
  for (std::size_t i = keel::ckpt::header_size; i < good.size() - keel::ckpt::trailer_size; i += 7) positions.push_back(i);
  std::size_t refused = 0;
  for (std::size_t i = 0; i < positions.size(); ++i) {
    auto bad = good;
    bad[positions[i]] = static_cast<char>(bad[positions[i]] ^ (1 << (positions[i] % 8)));
    CAPTURE(positions[i]);
    const std::string error = try_load(trainer, bad);
    CHECK(error != "");
    if (!error.empty()) ++refused;
  }
  CHECK(refused == positions.size());
  keel_test::report_fault("one bit flipped (header, every 7th byte of sections and manifest, trailer)",
                          static_cast<long>(refused), "refused: checksum of the file and of the section or manifest hit; trainer unchanged");
}

TEST_CASE("damage behind recomputed checksums is refused or harmless, never half-applied") {
  auto parts = split_good();  // (no structured binding: clang 14 cannot capture one)
  auto& body = parts.first;
  auto& manifest = parts.second;
  auto trainer = make_trainer(fresh_directory("resealed"));
  const unsigned seed = std::random_device{}();
  CAPTURE(seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> position(keel::ckpt::header_size, body.size() - 1);
  int refused = 0, loaded = 0;
  for (int i = 0; i < 400; ++i) {
    auto bad = body;
    for (int k = 0; k < 1 + i % 4; ++k) bad[position(rng)] ^= static_cast<char>(1 << (rng() % 8));
    const std::string error = try_load(trainer, seal(bad, manifest));
    (error.empty() ? loaded : refused)++;  // a flip in a weight's bytes is still a valid checkpoint
  }
  MESSAGE(refused << " refused, " << loaded << " loaded (a changed number is still a number)");
  CHECK(refused > 0);
  keel_test::report_fault("1-4 random bit flips in sections, checksums recomputed (hostile)", 400,
                          std::to_string(refused) + " refused by the parsers, the rest loaded as values; no crash, "
                          "no partial state (checked under ASan/UBSan)");
}

std::string error_of_sealed(const std::vector<char>& body, const keel::ckpt::Manifest& manifest) {
  try {
    keel::ckpt::parse_container(seal(body, manifest), "hostile");
  } catch (const keel::CheckpointError& e) {
    return e.what();
  }
  return "accepted";
}

TEST_CASE("manifests whose offsets and sizes point outside the file or overflow are refused") {
  auto parts = split_good();  // (no structured binding: clang 14 cannot capture one)
  auto& body = parts.first;
  auto& manifest = parts.second;
  auto edit = [&](auto change) {
    auto m = manifest;
    change(m.sections.front());
    return error_of_sealed(body, m);
  };
  CHECK(edit([&](auto& s) { s.offset = body.size() + 100; }).find("lies outside") != std::string::npos);
  CHECK(edit([&](auto& s) { s.size = body.size(); }).find("lies outside") != std::string::npos);
  CHECK(edit([](auto& s) { s.offset = ~std::uint64_t(0) - 7; s.size = 16; }).find("lies outside") != std::string::npos);
  CHECK(edit([](auto& s) { s.size = ~std::uint64_t(0); }).find("lies outside") != std::string::npos);
  CHECK(edit([](auto& s) { s.offset = 0; }).find("lies outside") != std::string::npos);  // over the header

  // The trailer's manifest position: past the end, and wrapping around.
  auto good = fixture().good;
  auto with_trailer = [&](std::uint64_t offset, std::uint64_t size) {
    auto bad = good;
    char* trailer = bad.data() + bad.size() - keel::ckpt::trailer_size;
    keel::ckpt::detail::put_u64(trailer, offset);
    keel::ckpt::detail::put_u64(trailer + 8, size);
    keel::ckpt::detail::put_u64(trailer + 24, keel::hash64(bad.data(), bad.size() - 16));
    try {
      keel::ckpt::parse_container(bad, "hostile");
    } catch (const keel::CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK(with_trailer(good.size() * 2, 10).find("manifest position outside the file") != std::string::npos);
  CHECK(with_trailer(64, ~std::uint64_t(0) - 10).find("manifest position outside the file") != std::string::npos);
  CHECK(with_trailer(0, 10).find("manifest position outside the file") != std::string::npos);

  // A length inside the manifest that asks for 2^60 bytes: refused before any allocation.
  std::ostringstream stream;
  {
    cereal::PortableBinaryOutputArchive archive(stream);
    archive(manifest);
  }
  std::string m = stream.str();
  keel::ckpt::detail::put_u64(m.data() + 1, std::uint64_t(1) << 60);  // the format name's length
  auto bad = body;
  const std::uint64_t manifest_offset = bad.size();
  bad.insert(bad.end(), m.begin(), m.end());
  char trailer[keel::ckpt::trailer_size] = {};
  keel::ckpt::detail::put_u64(trailer, manifest_offset);
  keel::ckpt::detail::put_u64(trailer + 8, m.size());
  keel::ckpt::detail::put_u64(trailer + 16, keel::hash64(m.data(), m.size()));
  bad.insert(bad.end(), trailer, trailer + 24);
  keel::ckpt::detail::put_u64(trailer + 24, keel::hash64(bad.data(), bad.size()));
  std::memcpy(trailer + 32, keel::ckpt::end_magic, 8);
  bad.insert(bad.end(), trailer + 24, trailer + 40);
  std::string error;
  try {
    keel::ckpt::parse_container(bad, "hostile");
  } catch (const keel::CheckpointError& e) {
    error = e.what();
  }
  CHECK(error.find("manifest that cannot be parsed") != std::string::npos);
  CHECK(error.find("exceeds the") != std::string::npos);
  keel_test::report_fault("manifest or trailer offsets/sizes outside the file, overflowing, or a 2^60 length", 9,
                          "refused naming the section or manifest position; nothing allocated from the bad length");
}

TEST_CASE("absurd tensor shapes are refused before anything is allocated") {
  auto parts = split_good();  // (no structured binding: clang 14 cannot capture one)
  auto& body = parts.first;
  auto& manifest = parts.second;
  const auto* model = [&] {
    for (const auto& s : manifest.sections)
      if (s.name == "model") return &s;
    return static_cast<const keel::ckpt::SectionInfo*>(nullptr);
  }();
  REQUIRE(model);
  // The first tensor's dtype name, then its shape: a length, then the extents.
  const std::string needle = "float32";
  const auto begin = body.begin() + static_cast<long>(model->offset);
  const auto at = std::search(begin, begin + static_cast<long>(model->size), needle.begin(), needle.end());
  REQUIRE(at != begin + static_cast<long>(model->size));
  const std::size_t shape = static_cast<std::size_t>(at - body.begin()) + needle.size();
  const std::uint64_t rank = keel::ckpt::detail::get_u(body.data() + shape, 8);
  REQUIRE(rank >= 2);  // the convolution's weight [6, 1, 3, 3]

  auto trainer = make_trainer(fresh_directory("shapes"));
  auto load_with = [&](auto change) {
    auto bad = body;
    change(bad.data() + shape);
    return try_load(trainer, seal(bad, manifest));
  };
  const std::int64_t negative = -5;
  CHECK(load_with([&](char* p) { keel::ckpt::detail::put_u64(p + 8, static_cast<std::uint64_t>(negative)); })
            .find("negative extent") != std::string::npos);
  CHECK(load_with([](char* p) { keel::ckpt::detail::put_u64(p + 8, std::uint64_t(1) << 28); })
            .find("bytes but only") != std::string::npos);  // 1 GiB asked of a 20 kB file
  CHECK(load_with([](char* p) { keel::ckpt::detail::put_u64(p + 8, std::uint64_t(1) << 40); })
            .find("over 1 TiB") != std::string::npos);
  CHECK(load_with([](char* p) {
          keel::ckpt::detail::put_u64(p + 8, std::uint64_t(1) << 40);
          keel::ckpt::detail::put_u64(p + 16, std::uint64_t(1) << 40);
        }).find("overflows 64 bits") != std::string::npos);
  CHECK(load_with([](char* p) { keel::ckpt::detail::put_u64(p, std::uint64_t(1) << 50); })
            .find("exceeds the") != std::string::npos);  // a rank of 2^50
  keel_test::report_fault("tensor shape negative, 2^28 or 2^40 elements, overflowing, or of rank 2^50", 5,
                          "refused naming the shape; no allocation; trainer unchanged");
}

TEST_CASE("a section written by a newer keel is refused with what to do") {
  auto parts = split_good();  // (no structured binding: clang 14 cannot capture one)
  auto& body = parts.first;
  auto& manifest = parts.second;
  const auto loop = std::find_if(manifest.sections.begin(), manifest.sections.end(),
                                 [](const auto& s) { return s.name == "loop"; });
  REQUIRE(loop != manifest.sections.end());
  auto bad = body;
  // The loop section: the byte-order mark, then LoopState's class version.
  CHECK(keel::ckpt::detail::get_u(bad.data() + loop->offset + 1, 4) == 4);
  keel::ckpt::detail::put_u32(bad.data() + loop->offset + 1, 5);
  auto trainer = make_trainer(fresh_directory("newer"));
  const std::string error = try_load(trainer, seal(bad, manifest));
  CHECK(error.find("written by a newer keel") != std::string::npos);
  CHECK(error.find("upgrade keel") != std::string::npos);
}

}  // namespace damage_test

namespace damage_test {

/// The good file with one section's manifest entry changed by `edit`, resealed.
std::vector<char> with_section(const std::string& name, const std::function<void(keel::ckpt::SectionInfo&)>& edit) {
  auto parts = split_good();
  for (auto& s : parts.second.sections)
    if (s.name == name) edit(s);
  return seal(parts.first, parts.second);
}

TEST_CASE("section layout versions are compared on load: newer refused, older than readable refused") {
  auto trainer = make_trainer(fresh_directory("versions"));
  // The model's layout is version 1: a file claiming 2 comes from a newer keel.
  const std::string newer = try_load(trainer, with_section("model", [](auto& s) { s.version = 2; }));
  CHECK(newer.find("section 'model'") != std::string::npos);
  CHECK(newer.find("has layout version 2, written by a newer keel") != std::string::npos);
  CHECK(newer.find("upgrade keel") != std::string::npos);
  // LoopState is read from version 1 on; a version 0 loop section predates every keel release.
  const std::string older = try_load(trainer, with_section("loop", [](auto& s) { s.version = 0; }));
  CHECK(older.find("section 'loop' (keel::LoopState) has layout version 0, older than any this keel reads") !=
        std::string::npos);
  CHECK(older.find("save it again there") != std::string::npos);
  // A callback section under its 0.2 name (by position) still loads.
  const std::string legacy =
      try_load(trainer, with_section("callback.keel::EarlyStopping", [](auto& s) { s.name = "callback.0"; }));
  CHECK(legacy.empty());
}

TEST_CASE("a resume on another machine warns that it is faithful, not bitwise; the sink receives it") {
  auto parts = split_good();
  auto& facts = parts.second.facts;
  const auto cpu = std::find_if(facts.begin(), facts.end(), [](const auto& f) { return f.first == "cpu"; });
  REQUIRE(cpu != facts.end());  // the manifest records the machine
  for (const char* key : {"cpu_capability", "blas", "torch_version", "threads"})
    CHECK(parts.second.fact(key) != "");
  cpu->second = "Imaginary CPU 9000";
  for (auto& fact : facts)
    if (fact.first == "blas") fact.second = "/opt/made-up/libblas.so.3";
  const auto moved = seal(parts.first, parts.second);

  std::vector<std::pair<keel::LogLevel, std::string>> messages;
  auto previous = keel::set_log_sink([&](keel::LogLevel level, const std::string& m) { messages.emplace_back(level, m); });
  auto trainer = make_trainer(fresh_directory("machine"));
  const std::string error = try_load(trainer, moved);
  keel::set_log_sink(previous);
  CHECK(error.empty());
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].first == keel::LogLevel::warning);
  CHECK(messages[0].second.find("cpu 'Imaginary CPU 9000'") != std::string::npos);  // one warning, every fact
  CHECK(messages[0].second.find("blas '/opt/made-up/libblas.so.3'") != std::string::npos);
  CHECK(messages[0].second.find("faithful but not bitwise") != std::string::npos);
  // The digest does not depend on the machine facts: the same state loaded from the unchanged
  // file digests the same.
  auto other = make_trainer(fresh_directory("machine-2"));
  CHECK(try_load(other, fixture().good).empty());
  CHECK(other.state_digest() == trainer.state_digest());
}

}  // namespace damage_test

namespace damage_test {

using JsonTrainer = keel::Trainer<keel::model<SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                  keel::callbacks<keel::EarlyStopping>, keel::checkpoint<keel::format::Json>>;

/// A JSON checkpoint with section `name`'s bytes replaced by `text` (offsets moved, every
/// checksum recomputed), so that the text reaches the JSON reader.
std::vector<char> json_with_section(const std::vector<char>& good, const std::string& name, const std::string& text) {
  const auto container = keel::ckpt::parse_container(good, "good.jckpt");
  auto manifest = container.manifest;
  std::vector<char> body(good.begin(), good.begin() + static_cast<long>(manifest.sections.front().offset));
  for (auto& s : manifest.sections) {
    const std::string bytes = s.name == name ? text : std::string(container.section(s));
    s.offset = body.size();
    s.size = bytes.size();
    body.insert(body.end(), bytes.begin(), bytes.end());
  }
  return seal(body, manifest);
}

TEST_CASE("keel::format::Json: malformed, mistyped and deeply nested sections are refused without a crash") {
  const auto dir = fresh_directory("json");
  keel::seed_everything(1);
  std::vector<char> good;
  {
    JsonTrainer writer(std::make_shared<SmallNetImpl>(),
                       keel::TrainerOptions().max_steps(3).batch_size(8).checkpoint_dir(dir.string()).stop_signals(std::vector<int>{}),
                       torch::optim::AdamWOptions(1e-3));
    SyntheticImages data(64, 3);
    writer.fit(data);
    good = keel::ckpt::read_file(dir / keel::ckpt::step_file_name(3, ".jckpt"));
  }
  keel::seed_everything(2);
  JsonTrainer trainer(std::make_shared<SmallNetImpl>(),
                      keel::TrainerOptions().max_steps(3).batch_size(8).stop_signals(std::vector<int>{}),
                      torch::optim::AdamWOptions(1e-3));
  auto try_json = [&](const std::vector<char>& bytes) {
    const std::string before = trainer.state_digest();
    try {
      trainer.load_checkpoint(bytes, "damaged.jckpt");
      return std::string();
    } catch (const keel::CheckpointError& e) {
      CHECK(trainer.state_digest() == before);  // all or nothing
      return std::string(e.what());
    }
  };
  const auto container = keel::ckpt::parse_container(good, "good.jckpt");
  // The container rebuilt around an unchanged section loads: what follows is the text's doing.
  REQUIRE(try_json(json_with_section(good, "loop", std::string(container.section(*container.manifest.find("loop"))))) == "");

  const std::string malformed = try_json(json_with_section(good, "loop", "{\"loop\": {\"cereal_class_version\": 3, \"epoch\": "));
  CHECK(malformed.find("section 'loop'") != std::string::npos);
  const std::string mistyped = try_json(json_with_section(
      good, "loop",
      "{\"loop\": {\"cereal_class_version\": 3, \"epoch\": \"three\", \"global_step\": 3, \"batch_in_epoch\": 3, "
      "\"micro_batch\": 0, \"data_seed\": 0, \"stop_requested\": false, \"skipped_steps\": 0, "
      "\"loss_scale\": {\"scale\": 0, \"growth_tracker\": 0, \"skipped_steps\": 0}}}"));
  CHECK(mistyped.find("section 'loop'") != std::string::npos);
  const std::string deep = try_json(json_with_section(good, "lineage", std::string(100000, '[') + std::string(100000, ']')));
  CHECK(deep.find("section 'lineage'") != std::string::npos);
  CHECK(deep.find("nested deeper than 64 levels") != std::string::npos);
  // A tensor whose base64 holds fewer bytes than its shape needs.
  std::string model(container.section(*container.manifest.find("model")));
  const auto data = model.find("\"data\": \"");
  REQUIRE(data != std::string::npos);
  model.erase(data + 9, 8);  // eight base64 characters: six bytes fewer
  const std::string short_tensor = try_json(json_with_section(good, "model", model));
  CHECK(short_tensor.find("section 'model'") != std::string::npos);
}

TEST_CASE("in rng.ranks every rank checks the streams of the job's ranks, not those of ranks gone since") {
  const keel::RngState good = keel::RngState::capture();
  keel::RngState damaged = good;
  damaged.cpu = torch::zeros({3}, torch::kUInt8);  // not a CPU generator's state
  keel::state::ProcessGenerators live;
  live.world_size = 2;  // a job of three resumed by two
  const std::vector<keel::RngState> saved{good, good, damaged};
  for (int rank : {0, 1}) {
    live.rank = rank;
    keel::state::LoadPlan plan;
    keel::state::RankRngSection<keel::state::ProcessGenerators>{live}.check(saved, plan);
    CHECK(plan.problems.empty());
  }
  // Damaged streams of a rank the job has are refused by every rank alike, naming that rank
  // (so that none goes on to wait for the one that refused).
  const std::vector<keel::RngState> rank1_damaged{good, damaged};
  for (int rank : {0, 1}) {
    CAPTURE(rank);
    live.rank = rank;
    keel::state::LoadPlan plan;
    keel::state::RankRngSection<keel::state::ProcessGenerators>{live}.check(rank1_damaged, plan);
    REQUIRE(plan.problems.size() == 1);
    CHECK(plan.problems[0].find("rank 1's CPU generator state has the wrong size") == 0);
  }
}

}  // namespace damage_test
