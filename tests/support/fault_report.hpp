#pragma once
// The fault-injection tests record what they injected and what happened. With the environment
// variable KEEL_FAULT_REPORT set to a file, each record is appended to it as a tab-separated
// line; scripts/fault-table.sh runs those tests and turns the lines into docs/faults.md. In CI
// the variable is unset and nothing is written: the same tests only assert.

#include <cstdlib>
#include <fstream>
#include <string>

namespace keel_test {

/// `fault`: what was injected; `times`: how often; `outcome`: what the test verified.
inline void report_fault(const std::string& fault, long times, const std::string& outcome) {
  const char* path = std::getenv("KEEL_FAULT_REPORT");
  if (!path || !*path) return;
  std::ofstream(path, std::ios::app) << fault << '\t' << times << '\t' << outcome << '\n';
}

}  // namespace keel_test
