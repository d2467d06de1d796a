#pragma once
// Where this process stands in a data-parallel job: its rank, the number of ranks, and where
// the rendezvous store is, read from the variables the launcher set. keel-run and torchrun set
// RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Slurm's srun sets
// SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID; Open MPI's mpirun OMPI_COMM_WORLD_RANK and
// friends (MASTER_ADDR and MASTER_PORT are the user's to export with those two). No LibTorch
// here: a launcher's variables are plain text.

#include <keel/error.hpp>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>

namespace keel::dist {

/// A process's place in its job. A process started by no launcher is the only rank of a job of
/// one (`launcher` "none"), which needs no rendezvous.
struct ProcessPlace {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        ///< among the ranks on this machine
  int local_world_size = 1;  ///< ranks on this machine
  std::string master_addr;   ///< where rank 0 serves the rendezvous store (world_size > 1)
  std::uint16_t master_port = 0;
  std::string launcher = "none";  ///< whose variables these are: "torchrun", "slurm", "openmpi", "none"

  bool distributed() const noexcept { return world_size > 1; }
};

/// Reads one variable of the environment (std::getenv, or a table in tests): null when unset.
using EnvironmentReader = std::function<const char*(const char*)>;

namespace detail {
/// `name`'s value as an integer in [low, high], or nullopt when unset; a value that is not one
/// (empty, a sign or text around the digits, out of range) is refused, naming the variable.
inline std::optional<long long> integer_variable(const EnvironmentReader& read, const char* name, long long low,
                                                 long long high, const char* meaning) {
  const char* text = read(name);
  if (!text) return std::nullopt;
  const std::string value = text;
  bool digits = !value.empty() && value.size() <= 18;
  for (const char c : value) digits = digits && c >= '0' && c <= '9';
  const long long number = digits ? std::strtoll(value.c_str(), nullptr, 10) : -1;
  if (!digits || number < low || number > high)
    throw ConfigError("keel: the environment variable " + std::string(name) + "='" + value + "' is not " + meaning +
                      " (an integer from " + std::to_string(low) + " to " + std::to_string(high) +
                      "); the launcher that started this process sets it: start it with keel-run, torchrun, "
                      "srun or mpirun, or unset it to train in one process");
  return number;
}

/// Both of a pair of variables, or neither: one alone is a launcher's mistake, named.
inline void both_or_neither(const EnvironmentReader& read, const char* first, const char* second) {
  if ((read(first) == nullptr) != (read(second) == nullptr))
    throw ConfigError("keel: the environment has " + std::string(read(first) ? first : second) + " but not " +
                      std::string(read(first) ? second : first) +
                      "; a launcher sets both (keel-run and torchrun: RANK and WORLD_SIZE)");
}
}  // namespace detail

/// This process's place, from the environment (`read` defaults to std::getenv). torchrun's
/// variables win over Slurm's and Open MPI's (keel-run inside an allocation sets its own). A
/// job of more than one rank needs MASTER_ADDR and MASTER_PORT; a rank outside
/// [0, WORLD_SIZE), a local rank outside [0, LOCAL_WORLD_SIZE) or a malformed number is refused
/// with the variable, its value and what was expected.
inline ProcessPlace place_from_environment(const EnvironmentReader& read = [](const char* name) {
  return static_cast<const char*>(std::getenv(name));
}) {
  using detail::integer_variable;
  constexpr long long max_ranks = 1 << 20;  // (keel-run's own limit)
  ProcessPlace place;
  struct Names {
    const char* launcher;
    const char* rank;
    const char* world_size;
    const char* local_rank;
    const char* local_world_size;
  };
  const Names launchers[] = {
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
      {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
      {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE"},
  };
  const Names* names = nullptr;
  for (const Names& candidate : launchers) {
    detail::both_or_neither(read, candidate.rank, candidate.world_size);
    if (read(candidate.rank)) {
      names = &candidate;
      break;
    }
  }
  if (!names) return place;  // no launcher: one process
  place.launcher = names->launcher;
  place.world_size = static_cast<int>(*integer_variable(read, names->world_size, 1, max_ranks, "a number of ranks"));
  place.rank = static_cast<int>(*integer_variable(read, names->rank, 0, place.world_size - 1,
                                                  ("a rank of a job of " + std::to_string(place.world_size)).c_str()));
  // Slurm writes SLURM_NTASKS_PER_NODE as "2(x3)" on uneven allocations: only a plain number is
  // taken; otherwise the local size is unknown, and only the local rank is checked.
  const char* local_size_text = read(names->local_world_size);
  const bool plain_local_size = local_size_text && std::string(local_size_text).find('(') == std::string::npos;
  place.local_world_size =
      plain_local_size
          ? static_cast<int>(*integer_variable(read, names->local_world_size, 1, place.world_size, "a number of ranks"))
          : place.world_size;
  place.local_rank = static_cast<int>(
      integer_variable(read, names->local_rank, 0, place.local_world_size - 1, "a rank on this machine")
          .value_or(place.world_size == place.local_world_size ? place.rank : 0));
  if (!place.distributed()) return place;

  const char* addr = read("MASTER_ADDR");
  if (!addr || !*addr || !read("MASTER_PORT"))
    throw ConfigError(std::string("keel: this process is rank ") + std::to_string(place.rank) + " of " +
                      std::to_string(place.world_size) + " (" + names->rank + ", " + names->world_size +
                      ") but MASTER_ADDR or MASTER_PORT is not set: every rank needs the address and port where "
                      "rank 0 serves the rendezvous store (keel-run and torchrun set both; under srun or mpirun, "
                      "export MASTER_ADDR=<the first node's address> MASTER_PORT=<a free port>)");
  place.master_addr = addr;
  place.master_port = static_cast<std::uint16_t>(*integer_variable(read, "MASTER_PORT", 1, 65535, "a TCP port"));
  return place;
}

}  // namespace keel::dist
