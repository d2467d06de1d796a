// The precompiled-header remedy (README "Compile time"): LibTorch and keel parsed once, the
// header every translation unit of the program starts from (see bench/compile_time.sh).
#include <torch/torch.h>
#include <keel/keel.hpp>
