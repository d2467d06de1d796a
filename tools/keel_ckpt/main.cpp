// keel-ckpt: inspect, verify, digest, compare and export keel checkpoints without the program
// that wrote them.
//
//   keel-ckpt info FILE [--tensors]   versions, position, sections, fingerprint
//   keel-ckpt verify FILE             exit 0 if every checksum and structural check passes
//   keel-ckpt digest FILE             the state digest the trainer printed for this state
//   keel-ckpt diff A B                which sections and tensors differ (max |a - b| per tensor)
//   keel-ckpt export FILE OUT.pt      model tensors (a state_dict) for Python's torch.load
//   keel-ckpt export FILE OUT.pt --ema   the keel::EMA average of the weights instead
//
// Exit status: 0 success (diff: identical), 1 the check failed (diff: different), 2 bad input.

#include <keel/keel.hpp>
#include <keel/checkpoint/json_format.hpp>
#include <keel/state/saved_state.hpp>

#include "torch_save.hpp"

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {

using keel::ckpt::Container;
using keel::ckpt::SectionInfo;
/// A file's standard sections, read through keel's one list of sections (state::SavedState);
/// user callbacks' sections stay opaque (checksums only).
struct Parsed {
  keel::state::SavedState state;
  keel::state::LoadPlan plan;
  bool has(const char* section) const { return plan.was_staged(section); }
};

/// How a command needs the tensors: their dtypes and shapes, read one at a time (placeholders
/// that leave the bytes in the file: a multi-GB checkpoint is checked in constant memory), or
/// all of them in memory.
enum class Tensors { deferred, in_memory };

template <class Format>
Parsed parse_as(const Container& container, std::vector<std::string>& problems, Tensors tensors) {
  Parsed parsed;
  auto sections = keel::state::SectionList::of<Format>(parsed.state.sections());
  sections.stage(container, parsed.plan, /*offline=*/true, /*defer_all=*/tensors == Tensors::deferred);
  sections.commit(container);  // every section that parsed
  for (const auto& p : parsed.plan.problems) problems.push_back(p);
  return parsed;
}

/// Calls f(Format{}) with the format the file names, for every format keel ships; false for
/// another (a format of one's own: its sections are opaque here).
template <class F>
bool with_format(const Container& container, F&& f) {
  if (container.manifest.format == keel::format::Binary::keel_name) return f(keel::format::Binary{}), true;
  if (container.manifest.format == keel::format::Json::keel_name) return f(keel::format::Json{}), true;
  return false;
}

Parsed parse(const Container& container, std::vector<std::string>& problems, Tensors tensors = Tensors::deferred) {
  Parsed parsed;
  if (!with_format(container, [&](auto format) { parsed = parse_as<decltype(format)>(container, problems, tensors); }))
    problems.push_back("format '" + container.manifest.format + "' is not one keel ships (" +
                       keel::format::Binary::keel_name + ", " + keel::format::Json::keel_name +
                       "): its sections cannot be read here");
  return parsed;
}

/// Structural checks across sections, beyond what parsing proves.
std::vector<std::string> structural_problems(const Container&, const Parsed& parsed) {
  std::vector<std::string> problems;
  if (parsed.has("model")) {
    std::map<std::string, const torch::Tensor*> params;
    std::set<std::string> names;
    for (const auto& t : parsed.state.model.parameters) {
      if (!names.insert(t.name).second) problems.push_back("model tensor '" + t.name + "' appears twice");
      params[t.name] = &t.tensor;
    }
    for (const auto& t : parsed.state.model.buffers)
      if (!names.insert(t.name).second) problems.push_back("model tensor '" + t.name + "' appears twice");
    if (parsed.has("optimizer")) {
      for (const auto& p : parsed.state.optimizer.params) {
        auto found = params.find(p.name);
        if (found == params.end()) {
          problems.push_back("optimizer state for '" + p.name + "', which is not a model parameter");
          continue;
        }
        for (const auto& [tensor_name, tensor] : p.tensors)
          if (tensor.defined() && tensor.sizes() != found->second->sizes())
            problems.push_back("optimizer state '" + tensor_name + "' of '" + p.name + "' has shape " +
                               keel::shape_string(tensor.sizes()) + ", the parameter " +
                               keel::shape_string(found->second->sizes()));
      }
    }
  }
  return problems;
}

/// Reads and verifies a file; on failure prints the reason and returns nullopt.
std::optional<Container> open_checked(const std::string& path) {
  try {
    return keel::ckpt::read_container(path);
  } catch (const keel::CheckpointError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return std::nullopt;
  }
}

/// Every tensor of the known sections, by a qualified name: "model/<name>", "optimizer/<param>/<tensor>".
std::map<std::string, torch::Tensor> tensors_of(const Parsed& parsed) {
  std::map<std::string, torch::Tensor> out;
  if (parsed.has("model")) {
    for (const auto& t : parsed.state.model.parameters) out["model/" + t.name] = t.tensor;
    for (const auto& t : parsed.state.model.buffers) out["model/" + t.name] = t.tensor;
  }
  if (parsed.has("optimizer"))
    for (const auto& p : parsed.state.optimizer.params)
      for (const auto& [name, tensor] : p.tensors)
        if (tensor.defined()) out["optimizer/" + p.name + "/" + name] = tensor;
  return out;
}

std::string describe(const torch::Tensor& t) {
  const char* dtype = keel::dtype_name(t.scalar_type());
  return std::string(dtype ? dtype : "?") + keel::shape_string(t.sizes());
}

int info(const std::string& path, bool list_tensors) {
  auto container = open_checked(path);
  if (!container) return 1;
  const auto& m = container->manifest;
  std::printf("file:              %s\n", path.c_str());
  std::printf("container version: %u\n", container->version);
  std::printf("written by:        keel %s, LibTorch %s\n", container->library_version.c_str(),
              m.fact("torch_version").c_str());
  std::printf("format:            %s\n", m.format.c_str());
  const std::string offset = m.fact("epoch_offset");  // (an epoch resumed with other batches)
  std::printf("position:          epoch %s, global step %s, batch %s of the epoch%s\n", m.fact("epoch").c_str(),
              m.fact("global_step").c_str(), m.fact("batch_in_epoch").c_str(),
              offset.empty() ? "" : (", counted from sample " + offset + " of its order").c_str());
  std::printf("training set:      %s samples; %s intra-op threads\n", m.fact("train_size").c_str(),
              m.fact("threads").c_str());
  std::printf("state digest:      %s\n", keel::checkpoint_digest(*container).c_str());
  if (const auto ranks = m.fingerprint.value("strategy.world_size"))
    std::printf("strategy:          %s, %s processes (rank 0 wrote it)\n",
                m.fingerprint.value("strategy").value_or("?").c_str(), ranks->c_str());
  else
    std::printf("strategy:          one process\n");
  for (const auto& [key, value] : m.fingerprint.entries())
    if (key == "model.state" && value == "parameters only")
      std::printf("model state:       parameters and buffers only (keel::parameters_only: the model's other "
                  "members were not saved)\n");
  {
    std::vector<std::string> ignored;
    const auto parsed = parse(*container, ignored);
    if (!parsed.has("lineage")) {
      std::printf("lineage:           (unreadable)\n");
    } else if (parsed.state.lineage.entries.empty()) {
      std::printf("lineage:           none (no fork or warm start)\n");
    } else {
      std::printf("lineage:           oldest first\n");
      int n = 0;
      for (const auto& entry : parsed.state.lineage.entries) {
        const auto lines = entry.describe();
        std::printf("  %d. %s\n", ++n, lines.front().c_str());
        for (std::size_t i = 1; i < lines.size(); ++i) std::printf("   %s\n", lines[i].c_str());  // under the headline
      }
    }
  }
  std::printf("sections:\n");
  std::printf("  %-14s %-40s %7s %12s  %s\n", "name", "type", "version", "bytes", "xxh3-64");
  for (const auto& s : m.sections)
    std::printf("  %-14s %-40s %7u %12llu  %s\n", s.name.c_str(), s.type.c_str(), s.version,
                static_cast<unsigned long long>(s.size), keel::hex64(s.checksum).c_str());
  std::printf("fingerprint:\n");
  for (const auto& [key, value] : m.fingerprint.entries()) std::printf("  %s = %s\n", key.c_str(), value.c_str());
  if (list_tensors) {
    std::vector<std::string> problems;
    const auto parsed = parse(*container, problems);
    std::printf("tensors:\n");
    for (const auto& [name, tensor] : tensors_of(parsed)) std::printf("  %s %s\n", name.c_str(), describe(tensor).c_str());
    for (const auto& p : problems) std::printf("  (not read: %s)\n", p.c_str());
  }
  return 0;
}

int verify(const std::string& path) {
  auto container = open_checked(path);
  if (!container) return 1;
  std::vector<std::string> problems;
  const auto parsed = parse(*container, problems);
  for (auto& p : structural_problems(*container, parsed)) problems.push_back(std::move(p));
  if (!problems.empty()) {
    std::fprintf(stderr, "%s", keel::CheckpointError(path, problems).what());
    std::fprintf(stderr, "\n");
    return 1;
  }
  std::printf("ok: %s (%zu sections, global step %s, digest %s)\n", path.c_str(), container->manifest.sections.size(),
              container->manifest.fact("global_step").c_str(), keel::checkpoint_digest(*container).c_str());
  return 0;
}

int digest(const std::string& path) {
  auto container = open_checked(path);
  if (!container) return 1;
  std::printf("%s\n", keel::checkpoint_digest(*container).c_str());
  return 0;
}

int diff(const std::string& a_path, const std::string& b_path) {
  auto a = open_checked(a_path);
  auto b = open_checked(b_path);
  if (!a || !b) return 2;
  int differences = 0;
  auto report = [&](const std::string& line) {
    std::printf("%s\n", line.c_str());
    ++differences;
  };
  for (const auto& s : a->manifest.sections) {
    const SectionInfo* other = b->manifest.find(s.name);
    if (!other) report("section " + s.name + ": only in " + a_path);
    else if (other->type != s.type) report("section " + s.name + ": " + s.type + " vs " + other->type);
    else if (other->checksum != s.checksum || other->size != s.size) report("section " + s.name + ": differs");
  }
  for (const auto& s : b->manifest.sections)
    if (!a->manifest.find(s.name)) report("section " + s.name + ": only in " + b_path);
  for (const auto& line : b->manifest.fingerprint.differences_from(a->manifest.fingerprint)) report(line);

  std::vector<std::string> ignored;
  const auto ta = tensors_of(parse(*a, ignored));
  const auto tb = tensors_of(parse(*b, ignored));
  for (const auto& [name, x] : ta) {
    auto found = tb.find(name);
    if (found == tb.end()) {
      report("tensor " + name + ": only in " + a_path);
      continue;
    }
    const auto& y = found->second;
    if (x.sizes() != y.sizes() || x.scalar_type() != y.scalar_type()) {
      report("tensor " + name + ": " + describe(x) + " vs " + describe(y));
      continue;
    }
    const torch::Tensor a_values = keel::ckpt::read_values(x), b_values = keel::ckpt::read_values(y);  // this pair only
    if (!keel::bitwise_equal(a_values, b_values)) {
      const double max_diff =
          x.numel() == 0 ? 0.0
                         : (a_values.to(torch::kFloat64) - b_values.to(torch::kFloat64)).abs().max().item<double>();
      char line[512];
      std::snprintf(line, sizeof line, "tensor %s: max |a - b| = %.9g", name.c_str(), max_diff);
      report(line);
    }
  }
  for (const auto& [name, y] : tb)
    if (!ta.count(name)) report("tensor " + name + ": only in " + b_path);
  if (differences == 0) std::printf("identical state (digest %s)\n", keel::checkpoint_digest(*a).c_str());
  return differences == 0 ? 0 : 1;
}

/// The average of a keel::EMA callback's section, read with keel::EMA's own serialization.
std::optional<keel::ModelState> ema_average(const Container& container) {
  const std::string name = std::string("callback.") + keel::EMA::keel_name;
  const SectionInfo* section = container.manifest.find(name);
  if (!section) {
    std::fprintf(stderr, "keel-ckpt: --ema: the checkpoint has no section '%s' (it was trained without keel::EMA)\n",
                 name.c_str());
    return std::nullopt;
  }
  keel::EMA ema;
  with_format(container, [&](auto format) { keel::ckpt::parse_section<decltype(format)>(container, *section, ema); });
  return ema.average();
}

int export_pt(const std::string& path, const std::string& out, bool with_optimizer, bool average) {
  auto container = open_checked(path);
  if (!container) return 2;
  std::vector<std::string> problems;
  const auto parsed = parse(*container, problems, Tensors::in_memory);
  if (!parsed.has("model") || (with_optimizer && !parsed.has("optimizer"))) {
    for (const auto& p : problems) std::fprintf(stderr, "keel-ckpt: %s\n", p.c_str());
    return 2;
  }
  if (average && with_optimizer) {
    std::fprintf(stderr, "keel-ckpt: --ema with --optimizer: the optimizer's state belongs to the weights, not to "
                         "their average; export them separately\n");
    return 2;
  }
  std::optional<keel::ModelState> weights = parsed.state.model;
  if (average && !(weights = ema_average(*container))) return 2;
  c10::Dict<std::string, at::Tensor> model;
  for (const auto& t : weights->parameters) model.insert(t.name, t.tensor);
  for (const auto& t : weights->buffers) model.insert(t.name, t.tensor);
  torch::IValue value(model);
  if (with_optimizer) {
    // {"model": state_dict, "optimizer": {"<param>.<tensor>": tensor, "<param>.step": int64 tensor}}
    c10::Dict<std::string, at::Tensor> optimizer;
    for (const auto& p : parsed.state.optimizer.params) {
      optimizer.insert(p.name + ".step", torch::tensor(p.step, torch::kInt64));
      for (const auto& [name, tensor] : p.tensors)
        if (tensor.defined()) optimizer.insert(p.name + "." + name, tensor);
    }
    c10::impl::GenericDict both(c10::StringType::get(), c10::AnyType::get());
    both.insert("model", torch::IValue(model));
    both.insert("optimizer", torch::IValue(optimizer));
    value = torch::IValue(both);
  }
  const std::vector<char> bytes = keel_ckpt::torch_save_bytes(value);
  try {
    keel::ckpt::write_atomically(out, [&](keel::ckpt::HashingFileSink& sink) { sink.write(bytes.data(), bytes.size()); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  std::printf("wrote %s: %zu %s%s\n", out.c_str(), static_cast<std::size_t>(model.size()),
              average ? "averaged model tensors (keel::EMA)" : "model tensors", with_optimizer ? " and the optimizer state" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-ckpt: inspect, verify, digest, compare and export keel checkpoints"};
  app.require_subcommand(1);
  std::string file, other, out;
  bool list_tensors = false, with_optimizer = false, average = false;

  auto* info_cmd = app.add_subcommand("info", "versions, position, sections and fingerprint");
  info_cmd->add_option("FILE", file, "checkpoint file")->required();
  info_cmd->add_flag("--tensors", list_tensors, "also list every tensor with dtype and shape");
  auto* verify_cmd = app.add_subcommand("verify", "exit 0 if every checksum and structural check passes");
  verify_cmd->add_option("FILE", file, "checkpoint file")->required();
  auto* digest_cmd = app.add_subcommand("digest", "print the state digest (as the trainer prints it)");
  digest_cmd->add_option("FILE", file, "checkpoint file")->required();
  auto* diff_cmd = app.add_subcommand("diff", "which sections and tensors differ");
  diff_cmd->add_option("A", file, "first checkpoint")->required();
  diff_cmd->add_option("B", other, "second checkpoint")->required();
  auto* export_cmd = app.add_subcommand("export", "write the model tensors for Python's torch.load");
  export_cmd->add_option("FILE", file, "checkpoint file")->required();
  export_cmd->add_option("OUT", out, "output file, e.g. model.pt")->required();
  export_cmd->add_flag("--optimizer", with_optimizer, "also export the optimizer state");
  export_cmd->add_flag("--ema", average, "the keel::EMA average of the weights instead of the weights");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    if (*info_cmd) return info(file, list_tensors);
    if (*verify_cmd) return verify(file);
    if (*digest_cmd) return digest(file);
    if (*diff_cmd) return diff(file, other);
    if (*export_cmd) return export_pt(file, out, with_optimizer, average);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel-ckpt: %s\n", e.what());
    return 2;
  }
  return 2;
}
