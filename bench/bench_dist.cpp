// Data-parallel training step over sgdx::dist (Gloo, CPU, float32): bytes each
// rank writes per average_gradients() against the ring all-reduce floor
// 2(W-1)/W x gradient bytes, and the step time (forward + backward + gradient
// averaging + SGD) at W = 2 against W = 1 on the same global batch, measured in one
// run by the same processes, candidates alternating (../shared/BENCHMARKS.md).
//
// Run without arguments' environment it starts its own two ranks on 127.0.0.1 (it
// re-runs itself with MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE set, one OpenMP
// thread each); started with WORLD_SIZE=2 in the environment (torchrun,
// scripts/two_hosts.sh) it is one of those ranks. Rank 0 prints the table and
// writes the JSON. On a 2-core machine W = 2 cannot be faster than W = 1 with both
// cores, so the figure that counts there is the communication share of the step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "sgdx/dist/communicator.h"
#include "sgdx/dist/data_parallel.h"
#include "sgdx/models/models.h"

extern char** environ;

namespace {

using sgdx::bench::Timing;
using sgdx::dist::Communicator;
using sgdx::dist::DataParallel;

constexpr int kWorld = 2;

struct Workload {
  std::string model;
  std::vector<int64_t> input_shape;  // one example
  int64_t global_batch;
};

std::vector<Workload> workloads(const std::string& names) {
  std::vector<Workload> out;
  std::stringstream ss(names);
  for (std::string name; std::getline(ss, name, ',');) {
    if (name == "mlp")
      out.push_back({"mlp", {784}, 256});
    else if (name == "cnn")
      out.push_back({"cnn", {1, 28, 28}, 128});
    else if (name == "resnet")
      out.push_back({"resnet", {3, 32, 32}, 64});
    else
      TORCH_CHECK(false, "bench_dist: unknown model '", name, "' (mlp, cnn, resnet)");
  }
  return out;
}

/// One model and its SGD, built from the same seed on every rank.
struct Replica {
  std::shared_ptr<sgdx::models::Classifier> net;
  std::unique_ptr<torch::optim::SGD> sgd;

  explicit Replica(const Workload& w) {
    torch::manual_seed(0);
    net = sgdx::models::make_model(w.model, w.input_shape, 10);
    sgd = std::make_unique<torch::optim::SGD>(net->parameters(), torch::optim::SGDOptions(0.01));
  }
  void forward_backward(const at::Tensor& x, const at::Tensor& y) {
    sgd->zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), y).backward();
  }
};

double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double median_of(std::vector<double> v) {
  return sgdx::bench::summarize(std::move(v)).median;
}

double elapsed(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

/// The slowest rank's value (the step of a group ends when its last rank's does).
double max_over_ranks(Communicator& comm, double v) {
  std::vector<at::Tensor> t = {at::full({1}, v, at::kDouble)};
  comm.all_reduce_max(t);
  return t[0].item<double>();
}

/// Rank 0's result for one workload (other ranks return an empty object).
nlohmann::json measure(const Workload& w, const std::shared_ptr<Communicator>& comm, int reps) {
  const int rank = comm->rank(), world = comm->world_size();
  std::vector<int64_t> shape = {w.global_batch};
  shape.insert(shape.end(), w.input_shape.begin(), w.input_shape.end());
  torch::manual_seed(1);
  const at::Tensor x = torch::randn(shape), y = torch::randint(10, {w.global_batch});
  const int64_t share = w.global_batch / world;
  const at::Tensor x_mine = x.narrow(0, rank * share, share), y_mine = y.narrow(0, rank * share, share);

  Replica one(w), dp(w);  // `one` runs on rank 0 only (W = 1), `dp` on every rank (W = 2)
  DataParallel data_parallel(dp.net->parameters(), comm);
  data_parallel.broadcast_parameters();

  // Correctness first: averaged W = 2 gradients against rank 0's full-batch ones.
  dp.forward_backward(x_mine, y_mine);
  data_parallel.average_gradients();
  double grad_diff = 0;
  if (rank == 0) {
    one.forward_backward(x, y);
    const auto a = one.net->parameters(), b = dp.net->parameters();
    for (size_t i = 0; i < a.size(); ++i)
      grad_diff = std::max(grad_diff, (a[i].grad() - b[i].grad()).abs().max().item<double>());
  }

  const int64_t grad_bytes = data_parallel.gradient_bytes();
  const double floor = 2.0 * (world - 1) / world * static_cast<double>(grad_bytes);
  std::vector<double> t_one, t_one_all_cores, t_dp, t_comm, t_transfer, bytes;
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  double idle_cpu = 0, idle_wall = 0;

  auto run_one = [&](int threads, std::vector<double>& out) {
    comm->barrier();
    if (rank == 0) {
      at::set_num_threads(threads);
      const auto start = std::chrono::steady_clock::now();
      one.forward_backward(x, y);
      one.sgd->step();
      out.push_back(elapsed(start));
      at::set_num_threads(1);
    }
    // The other ranks wait here while rank 0 runs alone; their CPU time while
    // waiting shows whether the wait is idle (it must be, for W = 1 to be fair).
    const double cpu0 = cpu_seconds();
    const auto wait_start = std::chrono::steady_clock::now();
    comm->barrier();
    if (rank != 0) {
      idle_cpu += cpu_seconds() - cpu0;
      idle_wall += elapsed(wait_start);
    }
  };
  auto run_dp = [&](bool record) {
    comm->barrier();
    const auto start = std::chrono::steady_clock::now();
    dp.forward_backward(x_mine, y_mine);
    const auto comm_start = std::chrono::steady_clock::now();
    const uint64_t sent = comm->bytes_sent();
    data_parallel.average_gradients();
    const double sent_now = static_cast<double>(comm->bytes_sent() - sent);
    const double comm_s = elapsed(comm_start);
    dp.sgd->step();
    const double step_s = elapsed(start);
    // Outside the step: the same all-reduce again with the ranks lined up by a
    // barrier, i.e. the transfer alone (comm_s above also holds the wait for the
    // slower rank's backward).
    comm->barrier();
    const auto transfer_start = std::chrono::steady_clock::now();
    data_parallel.average_gradients();
    const double transfer_s = elapsed(transfer_start);
    // Gathered outside the timed region; slowest rank's figures.
    const double step_max = max_over_ranks(*comm, step_s), comm_max = max_over_ranks(*comm, comm_s),
                 transfer_max = max_over_ranks(*comm, transfer_s);
    if (record) {
      t_dp.push_back(step_max);
      t_comm.push_back(comm_max);
      t_transfer.push_back(transfer_max);
      bytes.push_back(sent_now);
    }
  };
  std::vector<double> sink;
  for (int warm = 0; warm < 3; ++warm) {
    run_one(1, sink);
    run_one(cores, sink);
    run_dp(false);
  }
  for (int r = 0; r < reps; ++r) {
    for (int k = 0; k < 3; ++k) {
      switch ((k + r) % 3) {
        case 0:
          run_one(1, t_one);
          break;
        case 1:
          run_one(cores, t_one_all_cores);
          break;
        default:
          run_dp(true);
          break;
      }
    }
  }
  // Every rank's median bytes per step (they should agree for a ring).
  std::vector<at::Tensor> per_rank = {comm->all_gather(at::full({1}, median_of(bytes), at::kDouble))};
  const double waiting_cpu_share =
      max_over_ranks(*comm, rank == 0 ? 0.0 : idle_cpu / std::max(idle_wall, 1e-9));
  if (rank != 0) return nlohmann::json::object();

  const Timing one_t = sgdx::bench::summarize(t_one), all_t = sgdx::bench::summarize(t_one_all_cores),
               dp_t = sgdx::bench::summarize(t_dp), comm_t = sgdx::bench::summarize(t_comm),
               transfer_t = sgdx::bench::summarize(t_transfer);
  std::vector<double> rank_bytes;
  for (int64_t i = 0; i < world; ++i) rank_bytes.push_back(per_rank[0][i][0].item<double>());
  const double max_bytes = *std::max_element(rank_bytes.begin(), rank_bytes.end());
  int64_t params = 0;
  for (const auto& p : dp.net->parameters()) params += p.numel();
  return {{"model", w.model},
          {"global_batch", w.global_batch},
          {"parameters", params},
          {"gradient_bytes", grad_bytes},
          {"buckets", data_parallel.bucket_count()},
          {"max_abs_grad_diff_vs_one_process", grad_diff},
          {"ring_floor_bytes", floor},
          {"bytes_sent_per_step_by_rank", rank_bytes},
          {"bytes_over_floor", max_bytes / floor},
          {"step_w1_1thread", sgdx::bench::to_json(one_t)},
          {"step_w1_all_cores", sgdx::bench::to_json(all_t)},
          {"step_w2", sgdx::bench::to_json(dp_t)},
          {"average_gradients_w2", sgdx::bench::to_json(comm_t)},
          {"ratio_w2_vs_w1_1thread", dp_t.median / one_t.median},
          {"ratio_w2_vs_w1_all_cores", dp_t.median / all_t.median},
          {"all_reduce_after_barrier_w2", sgdx::bench::to_json(transfer_t)},
          {"communication_share_w2", comm_t.median / dp_t.median},
          {"transfer_share_w2", transfer_t.median / dp_t.median},
          {"waiting_rank_cpu_share_during_w1", waiting_cpu_share}};
}

/// The 1-minute load average (-1: unknown): the benchmark should run alone.
double loadavg_1min() {
  double load = -1;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

int run_rank(const std::string& out, int reps, const std::string& models) {
  const double load_at_start = loadavg_1min();
  at::set_num_threads(1);
  auto comm = sgdx::dist::from_env();
  TORCH_CHECK(comm->world_size() == kWorld,
              "bench_dist: measures W = 2 against W = 1; WORLD_SIZE must be 2, got ", comm->world_size());
  std::vector<nlohmann::json> results;
  for (const auto& w : workloads(models)) results.push_back(measure(w, comm, reps));
  comm->barrier();
  if (comm->rank() != 0) return 0;

  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  std::printf("data-parallel step, float32, Gloo on %s, %d reps, %d cores, ISA %s\n",
              std::getenv("MASTER_ADDR") ? std::getenv("MASTER_ADDR") : "127.0.0.1", reps, cores,
              at::get_cpu_capability().c_str());
  std::printf("%-7s %6s %9s %8s %9s %9s %9s %9s %9s %7s %7s %7s\n", "model", "global", "params", "bytes/",
              "W1 1thr", "W1 all", "W2 step", "W2 avg", "W2 xfer", "W2/W1", "avg", "xfer");
  std::printf("%-7s %6s %9s %8s %9s %9s %9s %9s %9s %7s %7s %7s\n", "", "batch", "", "floor", "ms", "ms",
              "ms", "ms", "ms", "1thr", "share", "share");
  for (const auto& r : results) {
    auto ms = [&](const char* key) { return 1e3 * r[key]["median_s"].get<double>(); };
    std::printf("%-7s %6lld %9lld %8.3f %9.2f %9.2f %9.2f %9.2f %9.2f %7.3f %7.3f %7.3f\n",
                r["model"].get<std::string>().c_str(), r["global_batch"].get<long long>(),
                r["parameters"].get<long long>(), r["bytes_over_floor"].get<double>(), ms("step_w1_1thread"),
                ms("step_w1_all_cores"), ms("step_w2"), ms("average_gradients_w2"),
                ms("all_reduce_after_barrier_w2"), r["ratio_w2_vs_w1_1thread"].get<double>(),
                r["communication_share_w2"].get<double>(), r["transfer_share_w2"].get<double>());
  }
  std::printf(
      "bytes/floor: bytes a rank wrote per average_gradients() (/proc/self/io wchar) over 2(W-1)/W x "
      "gradient bytes\n");
  std::printf(
      "W2 step: forward+backward on global/2, average_gradients, SGD (slowest rank); avg: average_gradients "
      "in the step, with the wait for the slower rank; xfer: the same all-reduce after a barrier.\n"
      "W1: one process on the global batch (1 thread; all %d cores)\n",
      cores);
  for (const auto& r : results)
    std::printf(
        "%s: max |grad W2 - grad W1| %.2e; rank 1 used %.3f of a core while it waited for a W1 step\n",
        r["model"].get<std::string>().c_str(), r["max_abs_grad_diff_vs_one_process"].get<double>(),
        r["waiting_rank_cpu_share_during_w1"].get<double>());
  nlohmann::json j = {{"name", "dist_data_parallel_step"},
                      {"device", sgdx::bench::cpu_device_name()},
                      {"isa", at::get_cpu_capability()},
                      {"cores", cores},
                      {"threads_per_rank", 1},
                      {"world_size", kWorld},
                      {"backend", "gloo"},
                      {"dtype", "float32"},
                      {"master_addr", std::getenv("MASTER_ADDR") ? std::getenv("MASTER_ADDR") : ""},
                      {"reps", reps},
                      {"loadavg_1min_at_start", load_at_start},
                      {"loadavg_1min_at_end", loadavg_1min()},
                      {"results", results}};
  sgdx::bench::write_json(out, j);
  return 0;
}

/// A TCP port on 127.0.0.1 that was free a moment ago (0: none).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  if (fd >= 0) ::close(fd);
  return ok ? ntohs(addr.sin_port) : 0;
}

/// Starts ranks 0..kWorld-1 of this program on 127.0.0.1 and waits (deadline, then SIGKILL).
int run_parent(char** argv) {
  namespace fs = std::filesystem;
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  const int port = free_port();
  if (port == 0) {
    std::fprintf(stderr, "bench_dist: no free TCP port on 127.0.0.1\n");
    return 1;
  }
  std::vector<pid_t> pids(kWorld, -1);
  std::vector<std::string> logs;
  for (int r = 0; r < kWorld; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    for (const std::string& kv :
         {std::string("MASTER_ADDR=127.0.0.1"), "MASTER_PORT=" + std::to_string(port),
          "RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(kWorld),
          "SGDX_RUN_ID=bench-dist-" + std::to_string(::getpid()), std::string("OMP_NUM_THREADS=1")})
      env.push_back(kv);
    std::vector<char*> envp;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // Rank 0 prints the table on our stdout; the others' output goes to a log shown on failure.
    logs.push_back((fs::temp_directory_path() /
                    ("sgdx-bench-dist-" + std::to_string(::getpid()) + "-rank" + std::to_string(r) + ".log"))
                       .string());
    if (r != 0) {
      posix_spawn_file_actions_addopen(&actions, 1, logs[r].c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&actions, 1, 2);
    }
    if (posix_spawn(&pids[r], exe.c_str(), &actions, nullptr, argv, envp.data()) != 0) pids[r] = -1;
    posix_spawn_file_actions_destroy(&actions);
    if (pids[r] < 0) std::fprintf(stderr, "bench_dist: could not start rank %d of %s\n", r, exe.c_str());
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  int failed = 0, running = 0;
  for (pid_t p : pids) running += p > 0;
  failed = kWorld - running;
  while (running > 0 && std::chrono::steady_clock::now() < deadline) {
    for (int r = 0; r < kWorld; ++r) {
      int status = 0;
      if (pids[r] > 0 && ::waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        pids[r] = 0;
        --running;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
          ++failed;
          std::fprintf(stderr, "bench_dist: rank %d failed (status %d)\n", r, status);
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (int r = 0; r < kWorld; ++r) {
    if (pids[r] > 0) {
      std::fprintf(stderr, "bench_dist: rank %d still running at the deadline: killed\n", r);
      ::kill(pids[r], SIGKILL);
      ::waitpid(pids[r], nullptr, 0);
      ++failed;
    }
    if (r != 0) {
      if (failed > 0) {
        std::ifstream in(logs[r]);
        std::cerr << "rank " << r << " said:\n" << in.rdbuf();
      }
      std::error_code ec;
      fs::remove(logs[r], ec);
    }
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_dist.json";
  const int reps = argc > 2 ? std::stoi(argv[2]) : 20;
  const std::string models = argc > 3 ? argv[3] : "mlp,cnn";
  if (std::getenv("WORLD_SIZE") == nullptr) return run_parent(argv);
  try {
    return run_rank(out, reps, models);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dist rank %s: %s\n", std::getenv("RANK") ? std::getenv("RANK") : "?",
                 e.what());
    return 1;
  }
}
