#pragma once
// What the bits of a run depend on besides keel's own state: the CPU and the instruction set
// LibTorch's kernels use, the BLAS library actually loaded, the LibTorch version and the
// intra-op thread count. keel's promise is bitwise continuation on the same build, the same kind
// of CPU and the same thread count; across machines the continuation is faithful, not bitwise
// (floating-point results depend on the kernels). These facts go into each checkpoint's
// manifest, never into the state digest, and a resume where one differs says so in a warning.

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/version.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <link.h>

namespace keel {

namespace detail {
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

/// The "CPU capability usage" LibTorch reports (DEFAULT, AVX2, AVX512...), which selects its kernels.
inline std::string cpu_capability() {
  const std::string config = at::show_config();
  const std::string key = "CPU capability usage: ";
  const auto at = config.find(key);
  if (at == std::string::npos) return "unknown";
  const auto begin = at + key.size();
  return config.substr(begin, config.find('\n', begin) - begin);
}

/// The BLAS libraries loaded into this process (Debian's LibTorch calls whatever libblas.so.3
/// the alternatives system points to: OpenBLAS, BLIS, the reference BLAS...).
inline std::string loaded_blas() {
  std::string found;
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, std::size_t, void* out) {
        const std::string path = info->dlpi_name ? info->dlpi_name : "";
        const auto slash = path.rfind('/');
        const std::string file = path.substr(slash == std::string::npos ? 0 : slash + 1);
        const bool blas = file.find("blas") != std::string::npos || file.find("blis") != std::string::npos ||
                          file.find("mkl_core") != std::string::npos;
        if (blas) {
          auto& text = *static_cast<std::string*>(out);
          text += (text.empty() ? "" : ", ") + path;
        }
        return 0;
      },
      &found);
  return found.empty() ? "none loaded" : found;
}
}  // namespace detail

/// The facts, as manifest entries. The thread count is read each time; the rest once.
inline std::vector<std::pair<std::string, std::string>> machine_facts() {
  static const std::vector<std::pair<std::string, std::string>> fixed = {
      {"cpu", detail::cpu_model()},
      {"cpu_capability", detail::cpu_capability()},
      {"blas", detail::loaded_blas()},
      {"torch_version", TORCH_VERSION},
  };
  auto facts = fixed;
  facts.emplace_back("threads", std::to_string(at::get_num_threads()));
  return facts;
}

/// One warning per machine fact that differs between a checkpoint's manifest (`saved`, looked
/// up by key; empty when the file predates the fact) and this process.
template <class Lookup>
std::vector<std::string> machine_differences(Lookup&& saved) {
  std::vector<std::string> warnings;
  for (const auto& [key, here] : machine_facts()) {
    const std::string there = saved(key);
    if (there.empty() || there == here) continue;
    if (key == "threads")
      warnings.push_back("the checkpoint was written with " + there + " intra-op threads and this run uses " +
                         here + ": the continuation is faithful but not bitwise identical to an "
                         "uninterrupted run (set the same thread count)");
    else
      warnings.push_back("the checkpoint was written with " + key + " '" + there + "' and this run has '" + here +
                         "': the continuation is faithful but not bitwise identical to an uninterrupted run "
                         "(bitwise continuation needs the same build, kind of CPU and thread count)");
  }
  return warnings;
}

}  // namespace keel
