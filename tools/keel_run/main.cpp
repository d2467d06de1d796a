// keel-run: starts the ranks of a data-parallel job on this machine, the way torchrun does.
//
//   keel-run --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]
//            [--stop-timeout SECONDS] PROGRAM [ARGS...]
//
// Each of the N processes runs PROGRAM ARGS with RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and MASTER_PORT set (torchrun's variables; a keel
// program reads the same ones under torchrun, Slurm or mpirun). The launcher forwards the stop
// signals it receives (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) to every rank, and
// when a rank fails it stops the others (after a grace of 2 s in which they can notice and report
// it themselves: SIGTERM, then SIGKILL after --stop-timeout) and exits
// with that rank's status (128 + the signal for a rank a signal ended). Each rank runs in a
// process group of its own, and signals go to the whole group (a rank started through a shell
// script gets them too). If the launcher itself is killed, the kernel kills the processes it
// started (PR_SET_PDEATHSIG; not their own children).
//
// No LibTorch here: a launcher that starts in milliseconds and has nothing to do with training.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace {

constexpr int usage_status = 2;       // bad arguments, as getopt-style tools do
constexpr int cannot_exec_status = 127;  // the shell's "command not found or not executable"

// The signals a job scheduler or a terminal sends to stop a job: passed on to every rank.
constexpr int forwarded_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

const char* const usage_text =
    "usage: keel-run --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]\n"
    "                [--stop-timeout SECONDS] PROGRAM [ARGS...]\n"
    "\n"
    "Starts N processes of PROGRAM ARGS on this machine (node R of M), each with RANK, LOCAL_RANK,\n"
    "WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and MASTER_PORT set, as torchrun does.\n"
    "\n"
    "  --nproc-per-node N    processes on this node (required, 1 or more)\n"
    "  --nnodes M            nodes in the job (default 1); each node runs keel-run with the same\n"
    "                        --nproc-per-node, --master-addr and --master-port\n"
    "  --node-rank R         this node, 0 to M-1 (default 0)\n"
    "  --master-addr A       the host of rank 0, where the ranks meet (default 127.0.0.1; required\n"
    "                        with more than one node)\n"
    "  --master-port P       its port, 1 to 65535 (default 29500)\n"
    "  --stop-timeout S      after a rank fails (and 2 s for the others to notice it themselves),\n"
    "                        seconds the others have to stop on SIGTERM before SIGKILL (default 30)\n"
    "\n"
    "SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to every rank's process\n"
    "group. keel-run exits with the status of the first rank that failed (128 + signal if a signal\n"
    "ended it), or 0. Unless OMP_NUM_THREADS is set, each rank gets the cores keel-run may use\n"
    "divided by N. Rank 0 reads keel-run's standard input unless that is a terminal; the others\n"
    "read nothing.\n";

struct Options {
  int nproc_per_node = 0;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr;
  int master_port = 29500;
  double stop_timeout = 30;
  std::vector<std::string> program;  // PROGRAM ARGS...
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "keel-run: %s\n\n%s", message.c_str(), usage_text);
  std::exit(usage_status);
}

int parse_int(const std::string& option, const std::string& text, int low, int high) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < low || value > high)
    usage_error(option + " " + text + ": expected a whole number from " + std::to_string(low) + " to " +
                std::to_string(high));
  return static_cast<int>(value);
}

Options parse(int argc, char** argv) {
  Options options;
  bool nproc_given = false;
  int i = 1;
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage_text, stdout);
      std::exit(0);
    }
    if (arg.empty() || arg[0] != '-') break;  // PROGRAM
    if (arg.rfind("--", 0) != 0) usage_error("unknown option " + arg + " (options are spelled --name)");
    std::string value;
    if (const auto equals = arg.find('='); equals != std::string::npos) {
      value = arg.substr(equals + 1);
      arg.resize(equals);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      usage_error(arg + " needs a value");
    }
    if (arg == "--nproc-per-node" || arg == "--nproc_per_node") {
      options.nproc_per_node = parse_int(arg, value, 1, 4096);
      nproc_given = true;
    } else if (arg == "--nnodes") {
      options.nnodes = parse_int(arg, value, 1, 1 << 20);
    } else if (arg == "--node-rank" || arg == "--node_rank") {
      options.node_rank = parse_int(arg, value, 0, 1 << 20);
    } else if (arg == "--master-addr" || arg == "--master_addr") {
      if (value.empty()) usage_error(arg + " is empty: expected a host name or address");
      options.master_addr = value;
    } else if (arg == "--master-port" || arg == "--master_port") {
      options.master_port = parse_int(arg, value, 1, 65535);
    } else if (arg == "--stop-timeout") {
      char* end = nullptr;
      options.stop_timeout = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(options.stop_timeout >= 0) || options.stop_timeout > 86400)
        usage_error(arg + " " + value + ": expected seconds from 0 to 86400");
    } else {
      usage_error("unknown option " + arg);
    }
  }
  if (!nproc_given) usage_error("--nproc-per-node is required");
  if (static_cast<long long>(options.nnodes) * options.nproc_per_node > (1 << 20))
    usage_error("--nnodes " + std::to_string(options.nnodes) + " times --nproc-per-node " +
                std::to_string(options.nproc_per_node) + " is more than 1048576 ranks");
  if (options.node_rank >= options.nnodes)
    usage_error("--node-rank " + std::to_string(options.node_rank) + " with --nnodes " +
                std::to_string(options.nnodes) + ": expected a node rank from 0 to " +
                std::to_string(options.nnodes - 1));
  if (options.master_addr.empty()) {
    if (options.nnodes > 1)
      usage_error("--master-addr is required with --nnodes " + std::to_string(options.nnodes) +
                  ": the host of node 0, the same on every node");
    options.master_addr = "127.0.0.1";
  }
  for (; i < argc; ++i) options.program.push_back(argv[i]);
  if (options.program.empty()) usage_error("no PROGRAM to run");
  return options;
}

sigset_t handled_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  for (const int signal : forwarded_signals) sigaddset(&set, signal);
  return set;
}

std::string describe(int status) {
  if (WIFSIGNALED(status)) {
    const char* name = strsignal(WTERMSIG(status));
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + (name ? std::string(" (") + name + ")" : "");
  }
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

/// The status a shell would report for a child that ended with `status`.
int shell_status(int status) { return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status); }

/// The cores this process may run on (its affinity: a cpuset or Slurm's allocation), at least 1.
int usable_cores() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
};

/// Starts one rank: the child gets the variables and the signal mask keel-run was started with
/// (the launcher blocks the signals it waits for), and dies with the launcher.
pid_t start_rank(const Options& options, int local_rank, int threads_per_rank, pid_t launcher,
                 const sigset_t& original_mask) {
  const int world_size = options.nnodes * options.nproc_per_node;
  const int rank = options.node_rank * options.nproc_per_node + local_rank;
  const pid_t pid = ::fork();
  if (pid != 0) {
    if (pid > 0) ::setpgid(pid, pid);  // (both sides set it: a signal sent right away finds the group)
    return pid;
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != launcher) ::_exit(cannot_exec_status);  // the launcher died before prctl
  ::sigprocmask(SIG_SETMASK, &original_mask, nullptr);
  // Its own process group: a Ctrl-C at the terminal reaches the launcher alone, which passes it
  // on once (a rank would otherwise receive it twice). A background group stops when it reads
  // the terminal, so no rank reads a terminal; rank 0 keeps any other standard input (a pipe, a
  // file), the others read nothing.
  ::setpgid(0, 0);
  if (rank != 0 || ::isatty(0)) {
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) {
      ::dup2(null, 0);
      if (null != 0) ::close(null);
    }
  }
  const auto set = [](const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); };
  set("RANK", std::to_string(rank));
  set("LOCAL_RANK", std::to_string(local_rank));
  set("WORLD_SIZE", std::to_string(world_size));
  set("LOCAL_WORLD_SIZE", std::to_string(options.nproc_per_node));
  set("GROUP_RANK", std::to_string(options.node_rank));
  set("MASTER_ADDR", options.master_addr);
  set("MASTER_PORT", std::to_string(options.master_port));
  if (threads_per_rank > 0) set("OMP_NUM_THREADS", std::to_string(threads_per_rank));
  std::vector<char*> args;
  for (const auto& arg : options.program) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  std::fprintf(stderr, "keel-run: cannot start %s (rank %d): %s\n", args[0], rank, std::strerror(errno));
  ::_exit(cannot_exec_status);
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);

  // Threads per rank: N ranks each using every core would oversubscribe the machine.
  int threads_per_rank = 0;
  if (!std::getenv("OMP_NUM_THREADS") && options.nproc_per_node > 1) {
    const int cores = usable_cores();
    threads_per_rank = std::max(1, cores / options.nproc_per_node);
    std::fprintf(stderr, "keel-run: OMP_NUM_THREADS=%d for each of %d ranks (%d cores); set it to choose\n",
                 threads_per_rank, options.nproc_per_node, cores);
  }

  // Children are waited for: an ignored SIGCHLD (inherited) would have the kernel reap them
  // unseen. The signals are taken with sigtimedwait, so they are blocked before the first
  // fork: none is lost between a start and the wait.
  std::signal(SIGCHLD, SIG_DFL);
  const sigset_t waited = handled_signals();
  sigset_t original_mask;
  ::sigprocmask(SIG_BLOCK, &waited, &original_mask);

  const pid_t launcher = ::getpid();
  std::vector<Rank> ranks;
  for (int local = 0; local < options.nproc_per_node; ++local) {
    const pid_t pid = start_rank(options, local, threads_per_rank, launcher, original_mask);
    if (pid < 0) {
      std::fprintf(stderr, "keel-run: cannot start rank %d: %s; stopping the others\n",
                   options.node_rank * options.nproc_per_node + local, std::strerror(errno));
      for (const Rank& r : ranks) ::kill(-r.pid, SIGKILL);
      for (const Rank& r : ranks) ::waitpid(r.pid, nullptr, 0);
      return 1;
    }
    ranks.push_back({options.node_rank * options.nproc_per_node + local, pid, true});
  }

  std::optional<int> result;    // the first failing rank's status
  bool stop_signalled = false;  // a stop signal was passed on: the ranks are stopping already
  bool kill_pending = false;    // the others get SIGKILL at kill_at
  std::chrono::steady_clock::time_point kill_at{};
  // After a rank fails, the others first get a grace to fail on their own and say why: a
  // collective with a dead rank fails at once, and a SIGTERM in the middle of reporting that
  // (a keel program has put back the default action by then) would end the process before it
  // prints. Then SIGTERM, at term_at.
  constexpr auto failure_grace = std::chrono::seconds(2);
  bool term_pending = false;
  std::chrono::steady_clock::time_point term_at{};
  auto running = [&] {
    return static_cast<int>(std::count_if(ranks.begin(), ranks.end(), [](const Rank& r) { return r.running; }));
  };
  auto send_all = [&](int signal) {  // to each rank's process group: what it started too
    for (const Rank& r : ranks)
      if (r.running) ::kill(-r.pid, signal);
  };
  // The ranks that are left get --stop-timeout seconds, then SIGKILL.
  auto kill_later = [&] {
    if (kill_pending) return;
    kill_pending = true;
    kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                     std::chrono::duration<double>(options.stop_timeout));
  };

  while (running() > 0) {
    timespec wait_for{1, 0};
    if (kill_pending || term_pending) {
      const auto next = kill_pending && term_pending ? std::min(kill_at, term_at) : kill_pending ? kill_at : term_at;
      const auto left = std::max(next - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero());
      const auto ns = std::min<long long>(std::chrono::duration_cast<std::chrono::nanoseconds>(left).count(), 1000000000);
      wait_for = {static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    }
    siginfo_t info;
    const int signal = ::sigtimedwait(&waited, &info, &wait_for);
    if (signal > 0 && signal != SIGCHLD) {
      send_all(signal);  // a stop signal: the ranks decide how to stop (keel's: a checkpoint first)
      stop_signalled = true;
    } else if (signal < 0 && errno != EAGAIN && errno != EINTR) {
      std::perror("keel-run: sigtimedwait");
      send_all(SIGKILL);
    }
    // Reap whatever ended (also on a timeout or another signal: SIGCHLDs coalesce, and a stream
    // of lower-numbered signals would be taken first).
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      const auto it = std::find_if(ranks.begin(), ranks.end(), [&](const Rank& r) { return r.pid == pid; });
      if (it == ranks.end()) continue;
      it->running = false;
      if (stop_signalled && running() > 0) kill_later();  // one rank stopped: the rest must follow
      if (shell_status(status) == 0 || result) continue;
      result = shell_status(status);
      if (stop_signalled) continue;  // the ranks were told to stop: their statuses say how they did
      if (running() > 0) {
        std::fprintf(stderr, "keel-run: rank %d (pid %d) %s; stopping the other ranks\n", it->rank,
                     static_cast<int>(pid), describe(status).c_str());
        term_pending = true;
        term_at = std::chrono::steady_clock::now() + failure_grace;
      } else {
        std::fprintf(stderr, "keel-run: rank %d (pid %d) %s\n", it->rank, static_cast<int>(pid),
                     describe(status).c_str());
      }
    }
    if (pid < 0 && errno == ECHILD && running() > 0) {  // ranks left, but no child (reaped elsewhere)
      for (Rank& r : ranks) r.running = false;
      if (!result) result = 1;
      std::fprintf(stderr, "keel-run: the ranks' exit statuses were lost (were children reaped elsewhere?)\n");
    }
    if (term_pending && std::chrono::steady_clock::now() >= term_at) {
      term_pending = false;
      if (running() > 0) {
        send_all(SIGTERM);
        kill_later();
      }
    }
    if (kill_pending && std::chrono::steady_clock::now() >= kill_at && running() > 0) {
      std::fprintf(stderr, "keel-run: %d rank(s) still running %g s after the stop began; killing them\n",
                   running(), options.stop_timeout);
      send_all(SIGKILL);
      kill_pending = false;
    }
  }
  return result.value_or(0);
}
