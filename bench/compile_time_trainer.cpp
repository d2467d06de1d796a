// Compile-time subject: a TU that instantiates a full Trainer, with every policy, a stateful
// reflected callback and the training loop (see bench/compile_time.sh).
#include "compile_time_subject.hpp"

int main() { return train_and_digest(); }
