// The one file that compiles BenchTrainer's members (see bench/compile_time_extern.hpp).
#include "compile_time_subject.hpp"

template class keel::Trainer<keel::model<NetImpl>, keel::optimizer<keel::optim::AdamW>,
                             keel::scheduler<keel::sched::CosineWarmup>,
                             keel::callbacks<Tracker, keel::EarlyStopping>, keel::checkpoint<keel::format::Binary>>;
template void BenchTrainer::fit<Data, Data>(Data&, Data&);
