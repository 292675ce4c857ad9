#pragma once
// sgdx's small interface to a group of processes (ranks). Everything sgdx does
// across processes goes through Communicator, so the c10d backend (Gloo for CPU
// tensors, NCCL for CUDA tensors, src/dist/c10d_group.cpp) lives in one translation
// unit and a world of one needs no setup at all (single_process()).
//
// Every call is a collective: all ranks make the same calls in the same order with
// tensors of the same shapes and dtypes. A rank that dies or never arrives makes
// the others throw DistError naming it within the group's timeout: never a hang.
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::dist {

/// A failed collective or rendezvous; the message names the rank(s) at fault.
class SGDX_API DistError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A collective in flight; wait() finishes it (and throws DistError as the
/// blocking form would). Destroying an unfinished one waits for it.
class SGDX_API Pending {
 public:
  virtual ~Pending() = default;
  virtual void wait() = 0;
};

class SGDX_API Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// In place: every tensor becomes the sum over ranks (contiguous tensors; a
  /// tensor on another device than the backend's travels through a copy).
  virtual void all_reduce_sum(std::vector<at::Tensor>& tensors) = 0;
  /// all_reduce_sum of one contiguous tensor, started now and finished by wait():
  /// collectives still start in the order they are called on every rank.
  virtual std::unique_ptr<Pending> all_reduce_sum_async(at::Tensor tensor);
  /// In place: every tensor becomes the elementwise max over ranks.
  virtual void all_reduce_max(std::vector<at::Tensor>& tensors) = 0;
  /// In place: every tensor becomes root's.
  virtual void broadcast(std::vector<at::Tensor>& tensors, int root = 0) = 0;
  /// Every rank's `tensor` (same shape on every rank) stacked along a new dim 0
  /// in rank order: [world_size, ...].
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  virtual void barrier() = 0;
  /// Bytes this process has written to its collective transport so far (0 when
  /// the transport cannot tell); bench/bench_dist compares it with the ring floor.
  virtual uint64_t bytes_sent() const { return 0; }
};

/// The world of one: rank 0 of 1; every collective returns its input.
SGDX_API std::shared_ptr<Communicator> single_process();

enum class Backend {
  Gloo,  ///< CPU tensors, over TCP.
  Nccl,  ///< CUDA tensors; compiled in with CUDA but refused unless allow_unverified_nccl
         ///< (no multi-GPU run has verified it yet).
};

/// Who hosts the store the ranks meet at.
enum class StoreHost {
  Rank0,     ///< rank 0 listens on master_addr:master_port (bound to that address only)
  Launcher,  ///< the launcher already does: torchrun's agent (TORCHELASTIC_USE_AGENT_STORE=True)
};

/// Where and how to meet: what torchrun puts in the environment, plus sgdx's own.
struct GroupOptions {
  std::string master_addr = "127.0.0.1";  ///< rank 0 hosts the store here
  int master_port = 29500;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  ///< the rank on this host (NCCL: which GPU)
  StoreHost store = StoreHost::Rank0;
  int attempt = 0;  ///< the launcher's restart count (TORCHELASTIC_RESTART_COUNT): scopes the store's keys
  /// This rank's own address for the collective transport; empty: 127.0.0.1 when
  /// master_addr is a loopback address, else the address this host routes to the master from.
  std::string bind_addr;
  /// Ranks of one run agree on it (torchrun's TORCHELASTIC_RUN_ID, or SGDX_RUN_ID);
  /// a rank from another run is refused by name.
  std::string run_id = "sgdx";
  /// Rendezvous and every collective: a rank missing for longer is an error.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  Backend backend = Backend::Gloo;
  bool allow_unverified_nccl = false;
};

/// GroupOptions from MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK (torchrun's names),
/// TORCHELASTIC_RUN_ID or SGDX_RUN_ID, TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RESTART_COUNT,
/// SGDX_DIST_BIND_ADDR, SGDX_DIST_TIMEOUT_S and SGDX_DIST_BACKEND (gloo|nccl). WORLD_SIZE unset means a world
/// of one. A malformed or out-of-range value throws naming the variable and its value.
SGDX_API GroupOptions options_from_env();

/// Joins the group (blocking until every rank arrived or the timeout passed).
/// world_size 1 returns single_process() without touching the network.
SGDX_API std::shared_ptr<Communicator> connect(const GroupOptions& options);

/// connect(options_from_env()).
SGDX_API std::shared_ptr<Communicator> from_env();

// ---- scalars, the way optimizers and samplers agree on data-dependent values ----

/// Sum over ranks of a double (float64 all-reduce); `comm` may be null (one process).
SGDX_API double global_sum(Communicator* comm, double value);
/// Mean over ranks (sum / world_size).
SGDX_API double global_mean(Communicator* comm, double value);
/// True on every rank when any rank says true (found_inf, a skip).
SGDX_API bool global_any(Communicator* comm, bool value);
/// Average of a tensor over ranks, in place (sum / world_size).
SGDX_API void average_(Communicator* comm, at::Tensor& tensor);

}  // namespace sgdx::dist
