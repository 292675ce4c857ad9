// The world of one, the environment torchrun sets, and the scalar agreements every
// distributed part uses (one rule: a data-dependent scalar is reduced in float64).
#include "sgdx/dist/communicator.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdlib>
#include <limits>

namespace sgdx::dist {
namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_sum(std::vector<at::Tensor>& /*tensors*/) override {}
  void all_reduce_max(std::vector<at::Tensor>& /*tensors*/) override {}
  void broadcast(std::vector<at::Tensor>& /*tensors*/, int root) override {
    TORCH_CHECK(root == 0, "broadcast: root ", root, " is not a rank of a world of 1");
  }
  at::Tensor all_gather(const at::Tensor& tensor) override { return tensor.unsqueeze(0).clone(); }
  void barrier() override {}
};

const char* env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

/// An integer environment variable in [lo, hi]; throws naming it and its value.
int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = env_or_null(name);
  if (v == nullptr) return fallback;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  TORCH_CHECK(errno == 0 && end != v && *end == '\0' && x >= lo && x <= hi,
              "sgdx::dist: environment variable ", name, "='", v, "' is not an integer in [", lo, ", ", hi,
              "]");
  return x;
}

class Done final : public Pending {
 public:
  void wait() override {}
};

}  // namespace

std::unique_ptr<Pending> Communicator::all_reduce_sum_async(at::Tensor tensor) {
  std::vector<at::Tensor> one = {std::move(tensor)};
  all_reduce_sum(one);
  return std::make_unique<Done>();
}

std::shared_ptr<Communicator> single_process() {
  return std::make_shared<SingleProcess>();
}

GroupOptions options_from_env() {
  GroupOptions o;
  o.world_size = static_cast<int>(env_int("WORLD_SIZE", 1, 1, 1 << 20));
  o.rank = static_cast<int>(env_int("RANK", 0, 0, o.world_size - 1));
  o.local_rank = static_cast<int>(env_int("LOCAL_RANK", 0, 0, 1 << 20));
  // torchrun hands its workers its own store (MASTER_ADDR/PORT point there) unless
  // TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: then nobody must listen on that port again.
  if (const char* agent = env_or_null("TORCHELASTIC_USE_AGENT_STORE")) {
    o.store = std::string(agent) == "True" ? StoreHost::Launcher : StoreHost::Rank0;
  }
  o.attempt = static_cast<int>(env_int("TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 20));
  if (const char* a = env_or_null("MASTER_ADDR")) o.master_addr = a;
  o.master_port = static_cast<int>(env_int("MASTER_PORT", o.master_port, 1, 65535));
  if (const char* b = env_or_null("SGDX_DIST_BIND_ADDR")) o.bind_addr = b;
  if (const char* id = env_or_null("SGDX_RUN_ID")) {
    o.run_id = id;
  } else if (const char* tid = env_or_null("TORCHELASTIC_RUN_ID")) {
    o.run_id = tid;
  }
  o.timeout = std::chrono::seconds(env_int("SGDX_DIST_TIMEOUT_S", 60, 1, int64_t{24} * 3600));
  if (const char* be = env_or_null("SGDX_DIST_BACKEND")) {
    const std::string b = be;
    TORCH_CHECK(b == "gloo" || b == "nccl", "sgdx::dist: SGDX_DIST_BACKEND='", b,
                "' is neither gloo nor nccl");
    o.backend = b == "gloo" ? Backend::Gloo : Backend::Nccl;
  }
  o.allow_unverified_nccl = env_int("SGDX_DIST_ALLOW_UNVERIFIED_NCCL", 0, 0, 1) == 1;
  if (env_or_null("WORLD_SIZE") != nullptr && o.world_size > 1) {
    TORCH_CHECK(env_or_null("RANK") != nullptr, "sgdx::dist: WORLD_SIZE=", o.world_size,
                " is set but RANK is not (launch with torchrun, or set RANK=0..", o.world_size - 1, ")");
  }
  return o;
}

std::shared_ptr<Communicator> from_env() {
  return connect(options_from_env());
}

double global_sum(Communicator* comm, double value) {
  if (comm == nullptr || comm->world_size() == 1) return value;
  std::vector<at::Tensor> t = {at::full({1}, value, at::kDouble)};
  comm->all_reduce_sum(t);
  return t[0].item<double>();
}

double global_mean(Communicator* comm, double value) {
  if (comm == nullptr || comm->world_size() == 1) return value;
  return global_sum(comm, value) / comm->world_size();
}

bool global_any(Communicator* comm, bool value) {
  if (comm == nullptr || comm->world_size() == 1) return value;
  std::vector<at::Tensor> t = {at::full({1}, value ? 1.0 : 0.0, at::kDouble)};
  comm->all_reduce_max(t);
  return t[0].item<double>() > 0.0;
}

void average_(Communicator* comm, at::Tensor& tensor) {
  if (comm == nullptr || comm->world_size() == 1) return;
  std::vector<at::Tensor> t = {tensor};
  comm->all_reduce_sum(t);
  tensor.div_(comm->world_size());
}

}  // namespace sgdx::dist
