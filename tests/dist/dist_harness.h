#pragma once
// Multi-process tests: a test calls SGDX_AS_RANKS(W) first. In the parent (ctest's
// process) that re-runs the same test binary W times, filtered to this test, as
// ranks 0..W-1 of a Gloo group on 127.0.0.1 (a free port, one OpenMP thread each),
// waits for them (a deadline, then SIGKILL), fails with each failing rank's output,
// and returns. In a child it falls through: the rest of the test body runs as one
// rank (rank_comm() is its group). Each rank asserts on its own, usually against
// a one-process reference on the combined batch that it computes itself.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sgdx/dist/communicator.h"

extern char** environ;

namespace sgdx::testing {

/// A TCP port on 127.0.0.1 that was free a moment ago.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

inline bool is_rank_process() {
  return std::getenv("SGDX_TEST_RANK_CHILD") != nullptr;
}

/// This rank's group (connected once per process).
inline std::shared_ptr<sgdx::dist::Communicator> rank_comm_ptr() {
  static std::shared_ptr<sgdx::dist::Communicator> comm = sgdx::dist::from_env();
  return comm;
}
inline sgdx::dist::Communicator& rank_comm() {
  return *rank_comm_ptr();
}

struct RankRun {
  int exit_code = -1;  // -1: killed at the deadline
  std::string output;
};

/// Starts `world` ranks of this test binary running `test_name`, rank r with the
/// extra environment rank_env[r] (when there is one; later entries win); waits up
/// to `deadline`. Returns each rank's exit code and output.
inline std::vector<RankRun> run_ranks(int world, const std::string& test_name,
                                      std::chrono::seconds deadline = std::chrono::seconds(180),
                                      const std::vector<std::vector<std::string>>& rank_env = {}) {
  namespace fs = std::filesystem;
  const int port = free_port();
  const fs::path dir =
      fs::temp_directory_path() / ("sgdx-ranks-" + std::to_string(::getpid()) + "-" + std::to_string(port));
  fs::create_directories(dir);
  std::vector<pid_t> pids(world, -1);
  std::vector<RankRun> runs(world);
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  for (int r = 0; r < world; ++r) {
    std::map<std::string, std::string> env;  // one value per name: getenv takes the first
    auto put = [&env](const std::string& kv) {
      const auto eq = kv.find('=');
      env[kv.substr(0, eq)] = eq == std::string::npos ? "" : kv.substr(eq + 1);
    };
    for (char** e = environ; *e != nullptr; ++e) {
      // The parent's shard, output file or filters must not make a rank run nothing.
      if (std::string(*e).rfind("GTEST_", 0) != 0) put(*e);
    }
    for (const std::string& kv :
         {std::string("SGDX_TEST_RANK_CHILD=1"), std::string("MASTER_ADDR=127.0.0.1"),
          "MASTER_PORT=" + std::to_string(port), "RANK=" + std::to_string(r),
          "WORLD_SIZE=" + std::to_string(world), "SGDX_RUN_ID=test-" + std::to_string(port),
          std::string("OMP_NUM_THREADS=1"), std::string("SGDX_DIST_TIMEOUT_S=30")}) {
      put(kv);
    }
    if (r < static_cast<int>(rank_env.size())) {
      for (const auto& kv : rank_env[r]) put(kv);
    }
    std::vector<std::string> env_strings;
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string filter = "--gtest_filter=" + test_name;
    std::vector<char*> argv = {const_cast<char*>(exe.c_str()), filter.data(), nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = (dir / ("rank" + std::to_string(r) + ".log")).string();
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (posix_spawn(&pids[r], exe.c_str(), &actions, nullptr, argv.data(), envp.data()) != 0) pids[r] = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  const auto end = std::chrono::steady_clock::now() + deadline;
  int running = 0;
  for (pid_t p : pids) running += p > 0;
  while (running > 0 && std::chrono::steady_clock::now() < end) {
    for (int r = 0; r < world; ++r) {
      if (pids[r] <= 0) continue;
      int status = 0;
      if (::waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        runs[r].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        pids[r] = 0;
        --running;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world; ++r) {
    if (pids[r] > 0) {
      ::kill(pids[r], SIGKILL);
      ::waitpid(pids[r], nullptr, 0);
    }
    std::ifstream in(dir / ("rank" + std::to_string(r) + ".log"));
    std::stringstream ss;
    ss << in.rdbuf();
    runs[r].output = ss.str();
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return runs;
}

/// In the parent: runs this test as `world` ranks, expects every rank to pass and
/// returns false (the caller returns). In a rank: returns true.
/// "Suite.Name" of the running test.
inline std::string current_test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string(info->test_suite_name()) + "." + info->name();
}

inline bool as_ranks(int world) {
  if (is_rank_process()) return true;
  const std::string name = current_test_name();
  const auto runs = run_ranks(world, name);
  const bool show = std::getenv("SGDX_TEST_SHOW_RANKS") != nullptr;  // the ranks' own output, pass or fail
  for (size_t r = 0; r < runs.size(); ++r) {
    // Exit 0 alone would also pass a rank whose filter selected no test.
    EXPECT_NE(runs[r].output.find("[  PASSED  ] 1 test."), std::string::npos)
        << "rank " << r << " did not run and pass exactly this test:\n"
        << runs[r].output;
    if (show)
      std::printf("---- rank %zu of %d (exit %d) ----\n%s", r, world, runs[r].exit_code,
                  runs[r].output.c_str());
    EXPECT_EQ(runs[r].exit_code, 0) << "rank " << r << " of " << world << " (exit " << runs[r].exit_code
                                    << ", -1: killed at the deadline) said:\n"
                                    << runs[r].output;
  }
  return false;
}

}  // namespace sgdx::testing

/// First statement of a multi-process test body.
#define SGDX_AS_RANKS(world) \
  if (!::sgdx::testing::as_ranks(world)) return
