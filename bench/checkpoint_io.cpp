// Benchmark: how fast keel saves and loads a checkpoint, against LibTorch's own archive
// (torch::serialize::OutputArchive::save_to / InputArchive::load_from) of the same tensors,
// and how much memory a load needs on top of the state it restores.
//
// The model is a stack of Linear(width, width) layers trained one AdamW step, so that the
// checkpoint holds parameters and both Adam moments (three tensors' worth per parameter).
// A round is keel save, LibTorch save, keel load, LibTorch load (every save fsync'ed and timed
// the second time in a row, every load from the page cache, right after the save). One process runs an
// untimed round, then P timed rounds alternating who goes first, and prints one `key=value`
// line per figure; bench/checkpoint_io.sh runs several processes and takes medians.
//
//   bench_checkpoint_io --width W --layers L --dir DIR [--order keel-first|torch-first]
//                       [--passes P] [--only keel]
//   bench_checkpoint_io --mode async --width W --layers L --dir DIR [--batch B] [--steps N] [--every K]
//                       (background saves: see background_saves below)
//
// Peak memory of a load (the untimed round's): the kernel's high-water mark of resident memory
// (VmHWM), reset just before the load (/proc/self/clear_refs), less the resident memory just
// before it.

#include <keel/keel.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

struct StackImpl : torch::nn::Module {
  StackImpl(std::int64_t width, std::int64_t layers) {
    for (std::int64_t i = 0; i < layers; ++i)
      stack->push_back(torch::nn::Linear(width, width));
    register_module("stack", stack);
  }
  torch::Tensor training_step(const keel::data::Example& batch) {
    return torch::mse_loss(stack->forward(batch.data), batch.target);
  }
  BOOST_HANA_DEFINE_STRUCT(StackImpl, (torch::nn::Sequential, stack));
};

/// One batch, whatever the indices.
struct OneBatch {
  keel::data::Example batch;
  std::size_t size() const { return static_cast<std::size_t>(batch.data.size(0)); }
  keel::data::Example get_batch(const std::vector<std::int64_t>&) const { return batch; }
};

using Trainer = keel::Trainer<keel::model<StackImpl>, keel::optimizer<keel::optim::AdamW>>;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

/// Every tensor of the checkpoint under one name: parameters, buffers, and Adam's moments.
std::vector<std::pair<std::string, torch::Tensor>> state_tensors(StackImpl& model, torch::optim::Optimizer& optimizer) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.named_parameters()) {
    out.emplace_back("param." + p.key(), p.value());
    auto& state = static_cast<torch::optim::AdamWParamState&>(
        *optimizer.state().at(keel::optim::state_key(p.value())));
    out.emplace_back("exp_avg." + p.key(), state.exp_avg());
    out.emplace_back("exp_avg_sq." + p.key(), state.exp_avg_sq());
  }
  return out;
}

/// Measures a fit: how long each save holds the training thread (from the end of the optimizer
/// step after which it comes to the next hook the loop runs: the end of the epoch, or the start
/// of the next step; the whole save, and with async_save the collection of the write before
/// it) and how long each step without a save takes (start to start). Measurements, not
/// training state: nothing to save.
struct SaveClock {
  std::vector<double>* held = nullptr;
  std::vector<double>* collected = nullptr;  // the part of each hold before on_save_checkpoint_start
  std::vector<double>* steps = nullptr;
  // When set: a plain copy of the state at each step where a save comes (or would come), timed
  // into `copies`: the floor for a snapshot. Without checkpoints the copy is held like a save;
  // with async_save it is taken right before each save (not counted in `held`), so that the two
  // are timed a moment apart, with the memory on both sides idle for as long.
  std::function<void()> copy_state;
  std::vector<double>* copies = nullptr;
  bool copy_is_the_save = true;
  std::int64_t every = 0;
  Clock::time_point save_started{}, step_started{};
  bool saving = false;         // a save's hold is being timed
  bool step_had_save = false;  // the step under way is not a step without a save
  template <class Archive>
  void serialize(Archive&) {}
  void on_optimizer_step_end(keel::Context& context) {
    if (context.loop().global_step % every != 0) return;  // (the saver saves right after this hook)
    save_started = Clock::now();
    saving = step_had_save = true;
    if (!copy_state) return;
    copy_state();
    copies->push_back(seconds_since(save_started));
    if (!copy_is_the_save) save_started = Clock::now();
  }
  void hold_ends() {
    if (saving) held->push_back(seconds_since(save_started));
    saving = false;
  }
  // (after the save has collected the write before it, if any: with async_save, the rest of the
  // hold is the snapshot)
  void on_save_checkpoint_start(keel::Context&) {
    if (saving) collected->push_back(seconds_since(save_started));
  }
  void on_train_epoch_end(keel::Context&) { hold_ends(); }
  void on_train_batch_start(keel::Context&) {
    hold_ends();
    const auto now = Clock::now();
    if (!step_had_save && step_started != Clock::time_point{})
      steps->push_back(std::chrono::duration<double>(now - step_started).count());
    step_had_save = false;
    step_started = now;
  }
};
using ClockedTrainer = keel::Trainer<keel::model<StackImpl>, keel::optimizer<keel::optim::AdamW>, keel::callbacks<SaveClock>>;

SaveClock clock_into(std::vector<double>& held, std::vector<double>& collected, std::vector<double>& steps,
                     std::int64_t every) {
  SaveClock clock;
  clock.held = &held;
  clock.collected = &collected;
  clock.steps = &steps;
  clock.every = every;
  return clock;
}

/// Every value, comma-separated (the spread behind a median).
std::string each(const std::vector<double>& values) {
  std::string out;
  for (const double v : values) out += (out.empty() ? "" : ",") + std::to_string(v);
  return out;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

/// --mode async: a fit of `steps` steps of batch `batch` saving every `every` steps, three
/// ways: no checkpoints (copying the state into kept tensors where the others save, the floor
/// for a snapshot), synchronous saves, async_save (which also takes the same plain copy right
/// before each save: the floor a moment apart, in the same conditions). Prints, in seconds: the
/// median time a save (or copy) holds the training thread (the first of each fit left out: it
/// allocates the memory), the median time of the copies, the median step time of steps that
/// hold no save (with async_save a write is in flight during most of them), and the time of the
/// same copy back to back (memory just touched); `_each` lines list every value.
void background_saves(std::int64_t width, std::int64_t layers, const std::string& dir, std::int64_t batch,
                      std::int64_t steps, std::int64_t every) {
  const OneBatch data{{torch::randn({batch, width}), torch::randn({batch, width})}};
  auto fit = [&](const char* how, bool save, bool async) {
    std::vector<double> held, collected, step_times, copies;
    torch::manual_seed(1);
    const std::string run_dir = dir + "/" + how;
    std::filesystem::remove_all(run_dir);
    ClockedTrainer trainer(std::make_shared<StackImpl>(width, layers),
                           keel::TrainerOptions()
                               .batch_size(batch)
                               .max_epochs(0)
                               .max_steps(steps)
                               .checkpoint_dir(save ? run_dir : "")
                               .save_every_steps(every)
                               .save_on_epoch_end(false)  // (one batch per epoch here)
                               .keep_last(1)
                               .async_save(async),
                           torch::optim::AdamWOptions(1e-3), clock_into(held, collected, step_times, every));
    std::vector<torch::Tensor> kept;  // the copies' memory, kept from one copy to the next
    if (!save || async) {
      auto& clock = trainer.callback<SaveClock>();
      clock.copies = &copies;
      clock.copy_is_the_save = !save;
      clock.copy_state = [&] {
        const auto state = state_tensors(*trainer.model(), trainer.optimizer().torch_optimizer());
        if (kept.empty())
          for (const auto& [name, t] : state) kept.push_back(torch::empty_like(t));
        for (std::size_t i = 0; i < state.size(); ++i) kept[i].copy_(state[i].second);
      };
    }
    auto copy = data;
    trainer.fit(copy);
    if (!held.empty()) held.erase(held.begin());
    if (!collected.empty()) collected.erase(collected.begin());
    std::printf("%s_held_s=%.6f\n%s_step_s=%.6f\n%s_held_each=%s\n", how, median(held), how, median(step_times), how,
                each(held).c_str());
    if (!collected.empty())  // (of each hold, the part until the save began: collecting the write before it)
      std::printf("%s_collect_each=%s\n", how, each(collected).c_str());
    if (!copies.empty()) {
      copies.erase(copies.begin());  // (allocated the memory, as a first save does)
      const char* which = save ? "paired_copy" : "fit_copy";
      std::printf("%s_s=%.6f\n%s_each=%s\n", which, median(copies), which, each(copies).c_str());
    }
    std::filesystem::remove_all(run_dir);
    return trainer.state_digest();
  };
  const auto none = fit("no_saves", false, false);
  const auto sync = fit("sync", true, false);
  const auto async = fit("async", true, true);
  if (none != sync || sync != async) throw std::runtime_error("the three fits ended in different states");

  // Copying every tensor of the state into tensors that already exist, back to back (the
  // memory on both sides just touched: faster than the same copy between training steps).
  torch::manual_seed(1);
  Trainer trainer(std::make_shared<StackImpl>(width, layers), keel::TrainerOptions().batch_size(batch).max_epochs(0).max_steps(1),
                  torch::optim::AdamWOptions(1e-3));
  auto copy = data;
  trainer.fit(copy);
  std::vector<torch::Tensor> from, to;
  for (const auto& [name, t] : state_tensors(*trainer.model(), trainer.optimizer().torch_optimizer())) {
    from.push_back(t);
    to.push_back(torch::empty_like(t).fill_(1));  // touched: the memory is in use already
  }
  std::vector<double> copies;
  for (int r = 0; r < 5; ++r) {
    const auto start = Clock::now();
    for (std::size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
    copies.push_back(seconds_since(start));
  }
  std::printf("state_copy_s=%.6f\n", median(copies));
}

/// A line of /proc/self/status in bytes (VmRSS, VmHWM).
std::int64_t status_bytes(const char* key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(status, line))
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size())) * 1024;
  throw std::runtime_error(std::string("no ") + key + " in /proc/self/status");
}

void reset_peak() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) throw std::runtime_error("cannot fsync " + path);
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t width = 3200, layers = 5;
  int passes = 2;
  std::string mode = "io";
  std::int64_t batch = 256, steps = 13, every = 2;
  std::string dir = "/tmp/keel-bench-ckpt", order = "keel-first", only;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--width")) width = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--layers")) layers = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    else if (!std::strcmp(argv[i], "--order")) order = argv[i + 1];
    else if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--passes")) passes = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--mode")) mode = argv[i + 1];
    else if (!std::strcmp(argv[i], "--batch")) batch = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--steps")) steps = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--every")) every = std::stoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  std::filesystem::create_directories(dir);
  if (mode == "async") {
    background_saves(width, layers, dir, batch, steps, every);
    return 0;
  }
  torch::manual_seed(1);
  // Every save writes a new file, and the previous one is deleted after it, untimed: what a run
  // with keep_last does (keel's write is atomic, so it never overwrites a file in place). Both
  // writers then ask the kernel for new pages alike; an overwrite in place would reuse the old
  // file's pages and time this virtual machine's page recycling rather than the writer.
  int saves = 0;
  std::string keel_file, torch_file;
  auto next_file = [&](std::string& file, const char* stem, const char* extension) {
    const std::string previous = file;
    file = dir + "/" + stem + "-" + std::to_string(++saves) + extension;
    return previous;
  };

  Trainer trainer(std::make_shared<StackImpl>(width, layers),
                  keel::TrainerOptions().batch_size(4).max_epochs(0).max_steps(1),
                  torch::optim::AdamWOptions(1e-3));
  OneBatch data{{torch::randn({4, width}), torch::randn({4, width})}};
  trainer.fit(data);
  // The live tensors, fetched anew for every use: a keel load replaces the optimizer's moments.
  auto tensors = [&] { return state_tensors(*trainer.model(), trainer.optimizer().torch_optimizer()); };
  std::int64_t state_bytes = 0, largest = 0, parameters = 0;
  for (const auto& [name, t] : tensors()) {
    state_bytes += t.numel() * t.element_size();
    largest = std::max<std::int64_t>(largest, t.numel() * t.element_size());
  }
  for (const auto& p : trainer.model()->parameters()) parameters += p.numel();
  std::printf("parameters=%lld\nstate_bytes=%lld\nlargest_tensor_bytes=%lld\n", static_cast<long long>(parameters),
              static_cast<long long>(state_bytes), static_cast<long long>(largest));

  // Each operation runs once untimed first: the first write of a process, or the first touch of
  // fresh memory, costs this virtual machine up to a second more (the host maps the guest's
  // pages on first use), which would measure the machine rather than the code. The untimed
  // loads give the peak memory (fresh allocations), the timed ones the speed.
  bool timed = false;
  auto report = [&](const char* key, double value) {
    if (timed) std::printf("%s=%.4f\n", key, value);
  };
  auto keel_save = [&] {
    const std::string previous = next_file(keel_file, "keel", ".ckpt");
    const auto start = Clock::now();
    trainer.save_checkpoint(keel_file);
    report("keel_save_s", seconds_since(start));
    std::printf("keel_file_bytes=%lld\n", static_cast<long long>(std::filesystem::file_size(keel_file)));
    if (!previous.empty()) std::filesystem::remove(previous);
  };
  auto torch_save = [&] {
    const std::string previous = next_file(torch_file, "torch", ".pt");
    const auto start = Clock::now();
    torch::serialize::OutputArchive archive;
    for (const auto& [name, t] : tensors()) archive.write(name, t);
    archive.save_to(torch_file);
    fsync_file(torch_file);
    report("torch_save_s", seconds_since(start));
    std::printf("torch_file_bytes=%lld\n", static_cast<long long>(std::filesystem::file_size(torch_file)));
    if (!previous.empty()) std::filesystem::remove(previous);
  };
  auto keel_load = [&] {
    const std::int64_t before = status_bytes("VmRSS");
    reset_peak();
    const auto start = Clock::now();
    trainer.load_checkpoint(keel_file);
    report("keel_load_s", seconds_since(start));
    if (!timed) std::printf("keel_load_peak_extra_bytes=%lld\n", static_cast<long long>(status_bytes("VmHWM") - before));
  };
  auto torch_load = [&] {
    const auto live = tensors();
    const std::int64_t before = status_bytes("VmRSS");
    reset_peak();
    const auto start = Clock::now();
    {
      torch::serialize::InputArchive archive;
      archive.load_from(torch_file);
      torch::NoGradGuard no_grad;
      for (const auto& [name, t] : live) {
        torch::Tensor read;
        archive.read(name, read);
        t.copy_(read);  // into the live state, as a restore does
      }
    }
    report("torch_load_s", seconds_since(start));
    if (!timed) std::printf("torch_load_peak_extra_bytes=%lld\n", static_cast<long long>(status_bytes("VmHWM") - before));
  };
  // A save is timed the second time in a row: the first after a load asks this virtual machine
  // for memory that the load gave back (up to 2 s more, for whichever writer comes first), the
  // second reuses the pages its predecessor's deletion freed, as saves in a run do.
  auto twice = [&](auto&& save) {
    const bool was_timed = timed;
    timed = false;
    save();
    timed = was_timed;
    save();
  };
  auto round = [&](bool keel_first) {
    if (only == "keel") {  // for profiling keel alone
      keel_save();
      keel_load();
    } else if (keel_first) {
      twice(keel_save);
      twice(torch_save);
      keel_load();
      torch_load();
    } else {
      twice(torch_save);
      twice(keel_save);
      torch_load();
      keel_load();
    }
  };
  round(order == "keel-first");
  timed = true;
  for (int pass = 0; pass < passes; ++pass) round((order == "keel-first") == (pass % 2 == 0));
  std::filesystem::remove(keel_file);
  std::filesystem::remove(torch_file);
  return 0;
}
