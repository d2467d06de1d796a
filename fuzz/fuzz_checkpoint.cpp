// libFuzzer target for keel's checkpoint reader: every input is handed to a Trainer's
// load_checkpoint, which verifies the container, parses every section and either applies the
// whole state or throws keel::CheckpointError. Anything else (a crash, a sanitizer report, another
// exception type, a huge allocation) is a bug.
//
// Built with -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which skips the checksum comparisons
// so that mutated bytes reach the section parsers (see parse_container).
//
//   fuzz/run.sh [seconds]          builds, writes the seed corpus, fuzzes (README: "Fuzzing")
//
// The same file built with KEEL_FUZZ_SEED_MAIN is `fuzz_checkpoint_seeds DIR`, which writes real
// checkpoints of this Trainer into DIR as the seed corpus.
#include "../tests/support/synthetic.hpp"

#include <keel/keel.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <vector>

namespace {

using FuzzTrainer = keel::Trainer<keel::model<keel_test::SmallNetImpl>, keel::optimizer<keel::optim::AdamW>,
                                  keel::scheduler<keel::sched::CosineWarmup>, keel::callbacks<keel::EarlyStopping>>;

FuzzTrainer make_trainer(const std::string& checkpoint_dir, std::int64_t max_steps) {
  keel::seed_everything(7);
  return FuzzTrainer(std::make_shared<keel_test::SmallNetImpl>(),
                     keel::TrainerOptions()
                         .max_steps(max_steps)
                         .batch_size(8)
                         .checkpoint_dir(checkpoint_dir)
                         .save_every_steps(2)
                         .keep_last(0)
                         .threads(1)
                         .stop_signals(std::vector<int>{}),
                     torch::optim::AdamWOptions(1e-3), keel::sched::CosineWarmupOptions(2, 20));
}

}  // namespace

#ifdef KEEL_FUZZ_SEED_MAIN
int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  const fs::path out = argv[1];
  const fs::path work = out / ".work";
  fs::remove_all(work);
  auto trainer = make_trainer(work.string(), 6);
  keel_test::SyntheticImages data(64, 3);
  trainer.fit(data);
  int written = 0;
  for (const auto& file : keel::ckpt::list_checkpoints(work)) {
    fs::copy_file(file.path, out / file.path.filename(), fs::copy_options::overwrite_existing);
    ++written;
  }
  fs::remove_all(work);
  std::printf("wrote %d seed checkpoints to %s\n", written, out.c_str());
  return written > 0 ? 0 : 1;
}
#else
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static FuzzTrainer trainer = make_trainer("", 6);
  try {
    trainer.load_checkpoint(std::vector<char>(data, data + size), "fuzz-input");
  } catch (const keel::CheckpointError&) {
    // the expected way to refuse
  }
  return 0;
}
#endif
