#pragma once
// The `extern template` remedy (README "Compile time"): the translation units that use
// BenchTrainer include this header and do not compile the Trainer's members; one file,
// bench/compile_time_instantiation.cpp, compiles them once.
#include "compile_time_subject.hpp"

extern template class keel::Trainer<keel::model<NetImpl>, keel::optimizer<keel::optim::AdamW>,
                                    keel::scheduler<keel::sched::CosineWarmup>,
                                    keel::callbacks<Tracker, keel::EarlyStopping>, keel::checkpoint<keel::format::Binary>>;
// fit and evaluate are member templates (over the dataset types): one line per pair used.
extern template void BenchTrainer::fit<Data, Data>(Data&, Data&);
