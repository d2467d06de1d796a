// A translation unit that uses BenchTrainer declared `extern template`: the same program as
// bench/compile_time_trainer.cpp, whose Trainer members bench/compile_time_instantiation.cpp
// compiles (see bench/compile_time.sh).
#include "compile_time_extern.hpp"

int main() { return train_and_digest(); }
