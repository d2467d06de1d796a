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

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <link.h>

namespace keel {

namespace detail {
inline std::string cpu_model() {
  std::string model = "unknown";
  if (std::FILE* in = std::fopen("/proc/cpuinfo", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, in)) {
      const std::string text(line);
      if (text.rfind("model name", 0) != 0) continue;
      const auto value = text.find_first_not_of(" \t", text.find(':') + 1);
      model = value == std::string::npos ? std::string() : text.substr(value, text.find('\n', value) - value);
      break;
    }
    std::fclose(in);
  }
  return model;
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

/// The warnings for a resume whose checkpoint (its manifest's facts; a fact the file predates
/// is not compared) came from another machine or thread count: one for the thread count, one
/// listing every other fact that differs.
inline std::vector<std::string> machine_differences(const std::vector<std::pair<std::string, std::string>>& saved) {
  auto saved_fact = [&](const std::string& key) {
    for (const auto& [k, v] : saved)
      if (k == key) return v;
    return std::string();
  };
  std::vector<std::string> warnings;
  std::string elsewhere;
  for (const auto& [key, here] : machine_facts()) {
    const std::string there = saved_fact(key);
    if (there.empty() || there == here) continue;
    if (key == "threads")
      warnings.push_back("the checkpoint was written with " + there + " intra-op threads and this run uses " +
                         here + ": the continuation is faithful but not bitwise identical to an "
                         "uninterrupted run (set the same thread count)");
    else
      elsewhere += (elsewhere.empty() ? "" : ", ") + key + " '" + there + "' (here '" + here + "')";
  }
  if (!elsewhere.empty())
    warnings.push_back("the checkpoint was written with " + elsewhere +
                       ": the continuation is faithful but not bitwise identical to an uninterrupted run "
                       "(bitwise continuation needs the same build, kind of CPU and thread count)");
  return warnings;
}

}  // namespace keel
