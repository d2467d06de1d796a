#!/usr/bin/env python3
"""Sums a clang -ftime-trace file: front end, back end, and the per-function optimization
and code generation time by namespace (keel::, std::, LibTorch's, cereal::, xxHash), then the
functions that cost the most. The figures in bench/README.md ("Where the time goes") come from

    clang++ -std=c++17 -O2 -Iinclude -isystem /usr/include/torch/csrc/api/include \\
        -ftime-trace -ftime-trace-granularity=50 -c bench/compile_time_trainer.cpp -o /tmp/t.o
    bench/time_trace_summary.py /tmp/t.json

(and the same for bench/compile_time_torch.cpp as the baseline).
"""
import collections
import json
import subprocess
import sys

PREFIXES = ["keel::", "cereal::", "boost::hana", "XXH", "c10::", "at::", "torch::", "std::"]


def owner(name):  # the namespace that appears first in a demangled name
    found = [(name.find(p), p) for p in PREFIXES if p in name]
    return min(found)[1] if found else "other"


def main(path):
    events = [e for e in json.load(open(path))["traceEvents"] if e.get("ph") == "X"]
    totals = collections.Counter()
    per_function = collections.Counter()
    for e in events:
        if e["name"].startswith("Total "):
            totals[e["name"][6:]] += e["dur"] / 1e6
        elif e["name"] in ("OptFunction", "CodeGen Function") and "detail" in e.get("args", {}):
            per_function[e["args"]["detail"]] += e["dur"] / 1e6
    print(" ".join(f"{k}={totals[k]:.2f}s" for k in ("ExecuteCompiler", "Frontend", "Backend")))
    mangled = list(per_function)
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True,
                               text=True).stdout.split("\n")
    names = dict(zip(mangled, demangled))
    by_owner = collections.Counter()
    for m, seconds in per_function.items():
        by_owner[owner(names.get(m, m))] += seconds
    print("per-function optimization and code generation, by namespace:")
    for name, seconds in by_owner.most_common():
        print(f"  {seconds:6.2f}s {name}")
    print("the costliest functions:")
    for m, seconds in per_function.most_common(10):
        print(f"  {seconds:6.2f}s {names.get(m, m)[:140]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench/time_trace_summary.py TRACE.json")
    main(sys.argv[1])
