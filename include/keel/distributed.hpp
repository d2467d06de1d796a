#pragma once
// keel's data-parallel layer, on LibTorch's c10d: not part of <keel/keel.hpp>, so that a
// program of one process neither compiles c10d's and Gloo's headers nor needs libgloo-dev.
//   keel/distributed/place.hpp          a process's rank and job, from the launcher's variables
//   keel/distributed/process_group.hpp  the ranks joined: TCPStore rendezvous, Gloo collectives
//   keel/distributed/data_parallel.hpp  keel::DataParallel, the strategy: keel::strategy<keel::DataParallel>

#include <keel/distributed/place.hpp>
#include <keel/distributed/process_group.hpp>
#include <keel/distributed/data_parallel.hpp>
