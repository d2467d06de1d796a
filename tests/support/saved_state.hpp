#pragma once
// A checkpoint file read offline for tests: every section any keel checkpoint has, parsed into
// plain values (keel::state::SavedState) without a Trainer.

#include <keel/keel.hpp>
#include <keel/state/saved_state.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

namespace keel_test {

inline keel::state::SavedState saved_state(const std::filesystem::path& path) {
  keel::state::SavedState saved;
  auto sections = keel::state::SectionList::of<keel::format::Binary>(saved.sections());
  keel::state::LoadPlan plan;
  const auto container = keel::ckpt::read_container(path);
  sections.stage(container, plan, /*offline=*/true);
  std::string problems;
  for (const auto& p : plan.problems) problems += p + "\n";
  INFO(path.string(), ": ", problems);
  REQUIRE(plan.problems.empty());
  sections.commit(container);
  return saved;
}

}  // namespace keel_test
