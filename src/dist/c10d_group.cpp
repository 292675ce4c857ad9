// The only translation unit that touches c10d (TCPStore, PrefixStore,
// ProcessGroupGloo, and ProcessGroupNCCL in a CUDA build). Debian's Gloo headers may be older than the Gloo
// inside libtorch_cpu, so nothing here passes Gloo types across the boundary: sgdx sees only Communicator.
//
// Joining: rank 0 hosts a TCPStore on a socket bound to master_addr only (not the
// wildcard address). Every rank says hello (run id, world size) and rank 0 returns
// one verdict, so a rank from another run or with another WORLD_SIZE is refused by
// name on every rank, and a rank that never arrives is named at the timeout.
// Running: every rank bumps a heartbeat counter in the store; when a collective
// fails, the ranks whose counters stopped are named (rank 0 when the store itself
// is gone: it hosts it).
#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <c10/util/Exception.h>
#include <fmt/core.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(SGDX_WITH_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "sgdx/dist/communicator.h"

namespace sgdx::dist {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kHeartbeatPeriod = 500ms;
/// sgdx's keys in the store, scoped by the launcher's restart count: torchrun's own
/// store outlives a restart of its workers.
struct Keys {
  explicit Keys(const GroupOptions& o) : scope("sgdx/" + std::to_string(o.attempt) + "/") {}
  std::string scope;
  std::string hello(int r) const { return scope + "hello/" + std::to_string(r); }  // "<run id>\n<world size>"
  std::string joined(int r) const { return scope + "joined/" + std::to_string(r); }  // 2: joined twice
  std::string verdict() const { return scope + "verdict"; }            // rank 0: "ok" or the reason
  std::string verdict_read() const { return scope + "verdict_read"; }  // ranks that read it
  std::string alive(int r) const { return scope + "alive/" + std::to_string(r); }  // heartbeat counter
  std::string group(const std::string& run_id) const { return scope + "pg/" + run_id + "/"; }
};

std::string where(const GroupOptions& o) {
  return o.master_addr + ":" + std::to_string(o.master_port);
}

[[noreturn]] void fail(const std::string& what) {
  throw DistError("sgdx::dist: " + what);
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

/// An IPv4/IPv6 socket address for `host`:`port` (numeric or resolvable).
sockaddr_storage resolve(const std::string& host, int port, socklen_t& len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) fail("cannot resolve '" + host + "': " + ::gai_strerror(rc));
  sockaddr_storage out{};
  std::memcpy(&out, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return out;
}

/// A listening socket bound to master_addr:master_port only; TCPStore takes it over.
int listen_on(const GroupOptions& o) {
  socklen_t len = 0;
  const sockaddr_storage addr = resolve(o.master_addr, o.master_port, len);
  const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket() for the store failed: " + std::string(std::strerror(errno)));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0 || ::listen(fd, 128) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    fail("rank 0 cannot listen on " + where(o) + " (MASTER_ADDR/MASTER_PORT): " + err);
  }
  return fd;
}

/// The local address this host uses to reach the master (no packet is sent).
std::string route_to(const GroupOptions& o) {
  if (is_loopback(o.master_addr)) return "127.0.0.1";
  socklen_t len = 0;
  sockaddr_storage addr = resolve(o.master_addr, o.master_port, len);
  const int fd = ::socket(addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_storage mine{};
  socklen_t mine_len = sizeof mine;
  char text[INET6_ADDRSTRLEN] = {};
  const bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &mine_len) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok) fail("no route from this host to the master " + where(o) + "; set SGDX_DIST_BIND_ADDR");
  const void* raw = mine.ss_family == AF_INET
                        ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&mine)->sin_addr)
                        : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&mine)->sin6_addr);
  ::inet_ntop(mine.ss_family, raw, text, sizeof text);
  return text;
}

/// Bytes written through write-family system calls so far (/proc/self/io wchar).
uint64_t written_bytes() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value) {
    if (key == "wchar:") return value;
  }
  return 0;
}

std::string text_of(const std::vector<uint8_t>& bytes) {
  return {bytes.begin(), bytes.end()};
}
std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}

c10::intrusive_ptr<c10d::TCPStore> open_store(const GroupOptions& o) {
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(o.master_port);
  so.isServer = o.rank == 0 && o.store == StoreHost::Rank0;
  so.waitWorkers = false;  // sgdx's own hello names a missing rank; TCPStore's wait would not
  so.timeout = o.timeout;
  if (so.isServer) so.masterListenFd = listen_on(o);
  try {
    return c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
  } catch (const std::exception& e) {
    fail("rank " + std::to_string(o.rank) + " cannot reach the master (rank 0's store) at " + where(o) +
         " within " + std::to_string(o.timeout.count() / 1000) +
         " s: is rank 0 running, and are MASTER_ADDR/MASTER_PORT right? (" + e.what() + ")");
  }
}

/// Rank 0: waits for every hello, then publishes one verdict.
void judge(c10d::Store& store, const GroupOptions& o, const std::string& hello) {
  const Keys keys(o);
  const auto deadline = Clock::now() + o.timeout;
  std::vector<bool> seen(o.world_size, false);
  seen[0] = true;
  std::string verdict = "ok";
  for (int arrived = 1; arrived < o.world_size && verdict == "ok";) {
    for (int r = 1; r < o.world_size && verdict == "ok"; ++r) {
      if (seen[r] || !store.check({keys.hello(r)})) continue;
      seen[r] = true;
      ++arrived;
      const std::string theirs = text_of(store.get(keys.hello(r)));
      if (theirs != hello) {
        std::string id = theirs.substr(0, theirs.find('\n'));
        std::string w = theirs.substr(theirs.find('\n') + 1);
        verdict = fmt::format(
            "rank {} belongs to another run: run id '{}', WORLD_SIZE {}; rank 0 has run id "
            "'{}', WORLD_SIZE {}",
            r, id, w, o.run_id, o.world_size);
      }
    }
    if (verdict != "ok" || arrived == o.world_size) break;
    if (Clock::now() > deadline) {
      std::string missing;
      for (int r = 1; r < o.world_size; ++r) {
        if (seen[r]) continue;
        if (!missing.empty()) missing += ", ";
        missing += std::to_string(r);
      }
      verdict = "rank(s) " + missing + " of " + std::to_string(o.world_size) + " never arrived within " +
                std::to_string(o.timeout.count() / 1000) + " s (SGDX_DIST_TIMEOUT_S)";
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  store.set(keys.verdict(), bytes_of(verdict));
  if (verdict == "ok") return;
  // The store dies with this process: let the ranks that came read why first.
  int64_t arrived = 0;
  for (int r = 1; r < o.world_size; ++r) arrived += seen[r] ? 1 : 0;
  for (const auto until = Clock::now() + 5s;
       Clock::now() < until && store.add(keys.verdict_read(), 0) < arrived;) {
    std::this_thread::sleep_for(20ms);
  }
  fail(verdict);
}

/// Bumps this rank's heartbeat counter through its own store connection until stopped.
class Heartbeat {
 public:
  Heartbeat(const GroupOptions& o) {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.master_port);
    so.waitWorkers = false;
    so.timeout = 5s;
    store_ = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
    key_ = Keys(o).alive(o.rank);
    thread_ = std::thread([this] { run(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      try {
        store_->add(key_, 1);
      } catch (const std::exception&) {
        // A slow store, or one that is gone (rank 0 finished or died): try again next
        // period, so a live rank never looks stopped.
      }
      cv_.wait_for(lock, kHeartbeatPeriod, [this] { return stop_; });
    }
  }
  c10::intrusive_ptr<c10d::TCPStore> store_;
  std::string key_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

/// The collective backend for `o` on `store` (after the hello).
c10::intrusive_ptr<c10d::Backend> make_backend(const GroupOptions& o,
                                               const c10::intrusive_ptr<c10d::Store>& store) {
  if (o.backend == Backend::Nccl) {
#if defined(SGDX_WITH_NCCL)
    const int devices = static_cast<int>(static_cast<unsigned char>(c10::cuda::device_count()));
    TORCH_CHECK(devices > 0, "sgdx::dist: the NCCL backend needs a CUDA device; this host has none");
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(o.local_rank % devices));
    auto no = c10d::ProcessGroupNCCL::Options::create();
    no->timeout = o.timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, o.rank, o.world_size, no);
#else
    TORCH_CHECK(false, "sgdx::dist: this build of sgdx has no NCCL backend (it needs a CUDA build)");
#endif
  }
  auto go = c10d::ProcessGroupGloo::Options::create(o.timeout);
  const std::string bind = o.bind_addr.empty() ? route_to(o) : o.bind_addr;
  try {
    go->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(bind));
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, go);
  } catch (const std::exception& e) {
    fail("rank " + std::to_string(o.rank) + " could not connect the Gloo transport on " + bind + ": " +
         e.what());
  }
}

class C10dGroup final : public Communicator {
 public:
  explicit C10dGroup(const GroupOptions& o)
      : options_(o), device_(o.backend == Backend::Nccl ? at::kCUDA : at::kCPU) {
    store_ = open_store(o);
    join();
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(Keys(o).group(o.run_id), store_);
    pg_ = make_backend(o, prefixed);
    heartbeat_ = std::make_unique<Heartbeat>(o);
    wchar_at_start_ = written_bytes();
  }

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  void all_reduce_sum(std::vector<at::Tensor>& tensors) override { all_reduce(tensors, c10d::ReduceOp::SUM); }
  void all_reduce_max(std::vector<at::Tensor>& tensors) override { all_reduce(tensors, c10d::ReduceOp::MAX); }

  std::unique_ptr<Pending> all_reduce_sum_async(at::Tensor tensor) override {
    TORCH_CHECK(tensor.defined() && tensor.is_contiguous(),
                "all_reduce_sum_async: needs a defined, contiguous tensor");
    std::vector<at::Tensor> one = {tensor.device().type() == device_ ? tensor : tensor.to(device_)};
    c10d::AllreduceOptions ao;
    ao.reduceOp = c10d::ReduceOp::SUM;
    c10::intrusive_ptr<c10d::Work> work;
    run("all_reduce", [&] {
      work = pg_->allreduce(one, ao);
      return c10::intrusive_ptr<c10d::Work>();
    });
    return std::make_unique<InFlight>(this, std::move(work), std::move(tensor), one[0]);
  }

  void broadcast(std::vector<at::Tensor>& tensors, int root) override {
    TORCH_CHECK(root >= 0 && root < options_.world_size, "broadcast: root ", root,
                " is not a rank of a world of ", options_.world_size);
    c10d::BroadcastOptions bo;
    bo.rootRank = root;
    for (auto& t : tensors) {
      in_place(t, "broadcast", [&](std::vector<at::Tensor>& one) { return pg_->broadcast(one, bo); });
    }
  }

  at::Tensor all_gather(const at::Tensor& tensor) override {
    TORCH_CHECK(tensor.defined(), "all_gather: undefined tensor");
    std::vector<at::Tensor> inputs = {tensor.to(device_).contiguous()};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < options_.world_size; ++r) outputs[0].push_back(at::empty_like(inputs[0]));
    run("all_gather", [&] { return pg_->allgather(outputs, inputs); });
    return at::stack(outputs[0]).to(tensor.device());
  }

  void barrier() override {
    run("barrier", [&] { return pg_->barrier(); });
  }

  uint64_t bytes_sent() const override { return written_bytes() - wchar_at_start_; }

 private:
  void join() {
    const GroupOptions& o = options_;
    const Keys keys(o);
    const std::string hello = o.run_id + "\n" + std::to_string(o.world_size);
    std::string verdict, theirs;
    try {
      if (store_->add(keys.joined(o.rank), 1) > 1) {
        fail("rank " + std::to_string(o.rank) + " joined twice: two processes were given RANK=" +
             std::to_string(o.rank) + ", or this one (run id '" + o.run_id + "', WORLD_SIZE " +
             std::to_string(o.world_size) + ") belongs to another run");
      }
      store_->set(keys.hello(o.rank), bytes_of(hello));
      if (o.rank == 0) {
        judge(*store_, o, hello);
        return;
      }
      store_->wait({keys.verdict()}, o.timeout + 5s);
      verdict = text_of(store_->get(keys.verdict()));
      theirs = text_of(store_->get(keys.hello(0)));
      store_->add(keys.verdict_read(), 1);
    } catch (const DistError&) {
      throw;
    } catch (const std::exception& e) {
      fail("rank " + std::to_string(o.rank) + " got no verdict from rank 0 at " + where(o) + " within " +
           std::to_string(o.timeout.count() / 1000) + " s: " + e.what());
    }
    if (verdict != "ok") fail("rank " + std::to_string(o.rank) + " was refused: " + verdict);
    if (theirs != hello) {
      fail("rank " + std::to_string(o.rank) + " (run id '" + o.run_id + "', WORLD_SIZE " +
           std::to_string(o.world_size) + ") does not belong to the run rank 0 hosts at " + where(o) + " (" +
           theirs.substr(0, theirs.find('\n')) + ", WORLD_SIZE " + theirs.substr(theirs.find('\n') + 1) +
           ")");
    }
  }

  void all_reduce(std::vector<at::Tensor>& tensors, const c10d::ReduceOp& op) {
    c10d::AllreduceOptions ao;
    ao.reduceOp = op;
    for (auto& t : tensors) {
      in_place(t, "all_reduce", [&](std::vector<at::Tensor>& one) { return pg_->allreduce(one, ao); });
    }
  }

  /// Runs an in-place collective on `t`; a tensor on another device than the
  /// backend's (a CPU scalar under NCCL, a CUDA tensor under Gloo) travels through a copy.
  template <typename Launch>
  void in_place(at::Tensor& t, const char* op, Launch&& launch) {
    TORCH_CHECK(t.defined(), op, ": undefined tensor");
    TORCH_CHECK(t.is_contiguous(), op, ": tensors must be contiguous");
    std::vector<at::Tensor> one = {t.device().type() == device_ ? t : t.to(device_)};
    run(op, [&] { return launch(one); });
    if (!one[0].is_same(t)) t.copy_(one[0]);
  }

  /// An asynchronous all-reduce: waits, names a dead rank like run(), copies back.
  class InFlight final : public Pending {
   public:
    InFlight(C10dGroup* group, c10::intrusive_ptr<c10d::Work> work, at::Tensor target, at::Tensor staged)
        : group_(group), work_(std::move(work)), target_(std::move(target)), staged_(std::move(staged)) {}
    ~InFlight() override {
      try {
        wait();
      } catch (const std::exception&) {  // a destructor cannot throw; wait() would have said why
      }
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
    void wait() override {
      if (!work_) return;
      auto work = std::move(work_);
      group_->run("all_reduce", [&] { return work; });
      if (!staged_.is_same(target_)) target_.copy_(staged_);
    }

   private:
    C10dGroup* group_;
    c10::intrusive_ptr<c10d::Work> work_;
    at::Tensor target_, staged_;
  };

  /// Launches a collective and waits for it; a failure becomes DistError naming
  /// the ranks that stopped. A launch may return no work (already waited for).
  template <typename Launch>
  void run(const char* op, Launch&& launch) {
    try {
      auto work = launch();
      if (work) work->wait();
    } catch (const std::exception& e) {
      fail("rank " + std::to_string(options_.rank) + ": " + op + " failed: " + diagnose() + " (" + e.what() +
           ")");
    }
  }

  /// Which ranks stopped: their heartbeat counters do not move for three periods.
  std::string diagnose() {
    try {
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(options_.master_port);
      so.waitWorkers = false;
      so.timeout = 3s;
      auto probe = c10::make_intrusive<c10d::TCPStore>(options_.master_addr, so);
      auto counts = [&] {
        std::vector<int64_t> c;
        c.reserve(options_.world_size);
        for (int r = 0; r < options_.world_size; ++r) {
          c.push_back(probe->add(Keys(options_).alive(r), 0));
        }
        return c;
      };
      const auto before = counts();
      std::this_thread::sleep_for(3 * kHeartbeatPeriod);
      const auto after = counts();
      std::string dead;
      for (int r = 0; r < options_.world_size; ++r) {
        if (r == options_.rank || after[r] != before[r]) continue;
        if (!dead.empty()) dead += ", ";
        dead += std::to_string(r);
      }
      if (dead.empty()) return "every rank is alive, so one is stuck or called a different collective";
      return "rank(s) " + dead + " stopped (died or exited)";
    } catch (const std::exception&) {
      if (options_.store == StoreHost::Launcher)
        return "the launcher's store at " + where(options_) + " is gone";
      return "rank 0 stopped (died or exited): its store at " + where(options_) + " is gone";
    }
  }

  GroupOptions options_;
  c10::intrusive_ptr<c10d::TCPStore> store_;
  at::DeviceType device_;
  c10::intrusive_ptr<c10d::Backend> pg_;
  std::unique_ptr<Heartbeat> heartbeat_;
  uint64_t wchar_at_start_ = 0;
};

}  // namespace

std::shared_ptr<Communicator> connect(const GroupOptions& options) {
  const GroupOptions& o = options;
  TORCH_CHECK(o.world_size >= 1, "sgdx::dist::connect: world_size must be >= 1, got ", o.world_size);
  TORCH_CHECK(o.rank >= 0 && o.rank < o.world_size, "sgdx::dist::connect: rank ", o.rank,
              " is not in [0, world_size = ", o.world_size, ")");
  TORCH_CHECK(o.timeout.count() > 0, "sgdx::dist::connect: timeout must be > 0 ms, got ", o.timeout.count());
  if (o.backend == Backend::Nccl) {
    TORCH_CHECK(o.allow_unverified_nccl,
                "sgdx::dist: the NCCL backend has not been verified on a multi-GPU run; it is refused "
                "unless you opt in with SGDX_DIST_ALLOW_UNVERIFIED_NCCL=1");
  }
  if (o.world_size == 1) return single_process();
  return std::make_shared<C10dGroup>(o);
}

}  // namespace sgdx::dist
