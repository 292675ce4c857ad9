#include "process_setup.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace sgdx_examples {

WaitPolicyAction wait_policy_action(const char* omp_wait_policy, const char* gomp_spincount,
                                    const char* sgdx_no_passive_wait) {
  if (omp_wait_policy != nullptr || gomp_spincount != nullptr) return WaitPolicyAction::kKeepUser;
  if (sgdx_no_passive_wait != nullptr && *sgdx_no_passive_wait != '\0' &&
      std::strcmp(sgdx_no_passive_wait, "0") != 0) {
    return WaitPolicyAction::kDisabled;
  }
  return WaitPolicyAction::kSetPassive;
}

int threads_for_free_cores(int cores, int busy) {
  return std::max(1, cores - busy);
}

namespace {

// getenv cannot be used yet: libc's initialiser, which sets environ, has not run.
const char* find_env(char** envp, const char* name) {
  const size_t len = std::strlen(name);
  for (; *envp != nullptr; ++envp) {
    if (std::strncmp(*envp, name, len) == 0 && (*envp)[len] == '=') return *envp + len + 1;
  }
  return nullptr;
}

// Runnable tasks besides this one, the least of a few looks over ~8 ms: a CPU-bound
// competitor is runnable in every look, a passing kernel thread is not.
int busy_cores() {
  int least = 1 << 30;
  for (int look = 0; look < 5; ++look) {
    if (look > 0) usleep(2000);
    const int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    static char buf[1 << 16];
    const ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    const char key[] = "\nprocs_running ";
    const char* at = std::strstr(buf, key);
    if (at == nullptr) return 0;
    least = std::min(least, std::atoi(at + sizeof(key) - 1) - 1);
  }
  return std::max(least, 0);
}

// Runs before every shared library's constructor, libgomp's included (see the header).
// The new image finds OMP_WAIT_POLICY set and goes on; if execve fails, this one goes on
// with the runtime's defaults, as before.
void reexec_if_cores_are_taken(int, char** argv, char** envp) {
  if (envp == nullptr ||
      wait_policy_action(find_env(envp, "OMP_WAIT_POLICY"), find_env(envp, "GOMP_SPINCOUNT"),
                         find_env(envp, "SGDX_NO_PASSIVE_WAIT")) != WaitPolicyAction::kSetPassive) {
    return;
  }
  const int busy = busy_cores();
  if (busy == 0) return;
  cpu_set_t cpus;
  const int cores = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
  size_t n = 0;
  while (envp[n] != nullptr) ++n;
  auto** env = static_cast<char**>(std::malloc((n + 3) * sizeof(char*)));
  if (env == nullptr) return;
  std::memcpy(env, envp, n * sizeof(char*));
  static char passive[] = "OMP_WAIT_POLICY=passive";
  static char threads[32];
  env[n++] = passive;
  if (find_env(envp, "OMP_NUM_THREADS") == nullptr) {
    // Formatted by hand: libc's initialiser has not run yet.
    const char prefix[] = "OMP_NUM_THREADS=";
    std::memcpy(threads, prefix, sizeof(prefix) - 1);
    char* end = threads + sizeof(prefix) - 1;
    int t = threads_for_free_cores(cores, busy);
    char digits[12];
    int d = 0;
    do digits[d++] = static_cast<char>('0' + t % 10);
    while ((t /= 10) > 0);
    while (d > 0) *end++ = digits[--d];
    *end = '\0';
    env[n++] = threads;
  }
  env[n] = nullptr;
  execve("/proc/self/exe", argv, env);
  std::free(env);
}

}  // namespace

}  // namespace sgdx_examples

#if defined(__ELF__)
// `used` keeps the entry although nothing refers to it; the section is honoured only in an executable.
__attribute__((section(".preinit_array"), used)) static void (*const sgdx_examples_preinit)(
    int, char**, char**) = &sgdx_examples::reexec_if_cores_are_taken;
#endif
