"""Loads a file written by `keel-ckpt export` with torch.load and prints every tensor as
`<key> <dtype> <shape> <values...>`, values in Python's shortest round-trip form, so that the
C++ test can compare them bit for bit with the checkpoint."""
import sys

import torch


def walk(prefix, value):
    if isinstance(value, dict):
        for key in sorted(value):
            walk(f"{prefix}{key}/" if isinstance(value[key], dict) else f"{prefix}{key}", value[key])
        return
    flat = value.reshape(-1).tolist()
    shape = "x".join(str(d) for d in value.shape) or "scalar"
    print(prefix, str(value.dtype).replace("torch.", ""), shape, " ".join(repr(float(v)) for v in flat))


# weights_only=True: the strict loader, the default from PyTorch 2.6 on (the keyword exists since 1.13).
walk("", torch.load(sys.argv[1], weights_only=True))
