// The precompiled header shared by every test target: LibTorch and keel (doctest is cheap and
// stays out, so that the test driver and compile-fail files do not pull in its registrations).
#include <torch/torch.h>
#include <keel/keel.hpp>
