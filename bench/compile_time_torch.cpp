// Compile-time baseline: a TU that only includes LibTorch (see bench/compile_time.sh).
#include <torch/torch.h>
int main() { return torch::ones(1).item<int>() == 1 ? 0 : 1; }
