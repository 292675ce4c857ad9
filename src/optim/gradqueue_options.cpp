// GradQueueSGDMOptions: validation, and serialisation, equality, printing and the
// optimizer-wide check, all expanded from SGDX_GRADQUEUE_OPTIONS (the one list).
#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>
#include <ostream>
#include <sstream>
#include <type_traits>

#include "gradqueue_internal.h"
#include "sgdx/optim/gradqueue.h"

namespace sgdx::optim {

GradQueueSGDMOptions::GradQueueSGDMOptions(double lr) : lr_(lr) {}

void GradQueueSGDMOptions::validate() const {
  const char* n = "GradQueueSGDM: ";
  TORCH_CHECK(lr() >= 0 && std::isfinite(lr()), n, "lr must be finite and >= 0, got ", lr());
  TORCH_CHECK(momentum() >= 0 && momentum() < 1, n, "momentum must be in [0, 1), got ", momentum());
  TORCH_CHECK(dampening() >= 0 && dampening() <= 1, n, "dampening must be in [0, 1], got ", dampening());
  TORCH_CHECK(!nesterov() || (momentum() > 0 && dampening() == 0), n,
              "nesterov needs momentum > 0 and dampening = 0, got momentum ", momentum(), ", dampening ",
              dampening());
  TORCH_CHECK(weight_decay() >= 0, n, "weight_decay must be >= 0, got ", weight_decay());
  TORCH_CHECK(q_min() >= 1, n, "q_min must be >= 1, got ", q_min());
  TORCH_CHECK(q_init() >= q_min() && q_init() <= q_max(), n, "q_init must be in [q_min, q_max] = [", q_min(),
              ", ", q_max(), "], got ", q_init());
  TORCH_CHECK(q_max() <= 65536, n, "q_max must be <= 65536, got ", q_max());
  TORCH_CHECK(rho_min() > 0 && rho_min() <= rho_max() && std::isfinite(rho_max()), n,
              "need 0 < rho_min <= rho_max < inf, got rho_min ", rho_min(), ", rho_max ", rho_max());
  TORCH_CHECK(kappa() > 0 && std::isfinite(kappa()), n, "kappa must be finite and > 0, got ", kappa());
  TORCH_CHECK(eps() > 0 && std::isfinite(eps()), n, "eps must be finite and > 0, got ", eps());
  TORCH_CHECK(granularity() == GradQueueGranularity::element || granularity() == GradQueueGranularity::tensor,
              n, "unknown granularity ", static_cast<int64_t>(granularity()));
  TORCH_CHECK(storage() == GradQueueStorage::exact || storage() == GradQueueStorage::ema, n,
              "unknown storage ", static_cast<int64_t>(storage()));
  TORCH_CHECK(scope() == GradQueueScope::per_tensor || scope() == GradQueueScope::global, n, "unknown scope ",
              static_cast<int64_t>(scope()));
  TORCH_CHECK(resync_every() >= 0, n, "resync_every must be >= 0, got ", resync_every());
  TORCH_CHECK(loss_beta() >= 0 && loss_beta() < 1, n, "loss_beta must be in [0, 1), got ", loss_beta());
  TORCH_CHECK(clusters() >= 1, n, "clusters must be >= 1, got ", clusters());
  TORCH_CHECK(kmeans_iters() >= 0, n, "kmeans_iters must be >= 0, got ", kmeans_iters());
  TORCH_CHECK(kmeans_tol() >= 0, n, "kmeans_tol must be >= 0, got ", kmeans_tol());
}

const std::vector<std::pair<const char*, GradQueueOptionScope>>& GradQueueSGDMOptions::fields() {
  static const std::vector<std::pair<const char*, GradQueueOptionScope>> list{
#define SGDX_GQ_NAME(T, name, init, where) {#name, GradQueueOptionScope::where},
      SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_NAME)
#undef SGDX_GQ_NAME
  };
  return list;
}

namespace {
// Archive values: enums as their integer, uint64 through int64 (bit pattern kept).
template <typename T>
c10::IValue to_ivalue(const T& x) {
  if constexpr (std::is_enum_v<T> || std::is_same_v<T, uint64_t>) {
    return c10::IValue(static_cast<int64_t>(x));
  } else {
    return c10::IValue(x);
  }
}
template <typename T>
T from_ivalue(const c10::IValue& v) {
  if constexpr (std::is_same_v<T, double>) {
    return v.toDouble();
  } else if constexpr (std::is_same_v<T, bool>) {
    return v.toBool();
  } else {
    return static_cast<T>(v.toInt());
  }
}
template <typename T>
std::ostream& print(std::ostream& out, const T& x) {
  if constexpr (std::is_enum_v<T>) {
    return out << static_cast<int64_t>(x);
  } else {
    return out << x;
  }
}
}  // namespace

void GradQueueSGDMOptions::serialize(torch::serialize::OutputArchive& archive) const {
  // process options choose how this process computes, like a backend: not saved.
#define SGDX_GQ_WRITE(T, name, init, where) \
  if (GradQueueOptionScope::where != GradQueueOptionScope::process) archive.write(#name, to_ivalue(name()));
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_WRITE)
#undef SGDX_GQ_WRITE
}

void GradQueueSGDMOptions::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue v;
#define SGDX_GQ_READ(T, name, init, where)                            \
  if (GradQueueOptionScope::where != GradQueueOptionScope::process) { \
    archive.read(#name, v);                                           \
    name(from_ivalue<T>(v));                                          \
  }
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_READ)
#undef SGDX_GQ_READ
  validate();
}

bool operator==(const GradQueueSGDMOptions& a, const GradQueueSGDMOptions& b) {
  bool same = true;
#define SGDX_GQ_EQ(T, name, init, where) same = same && a.name() == b.name();
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_EQ)
#undef SGDX_GQ_EQ
  return same;
}

std::ostream& operator<<(std::ostream& out, const GradQueueSGDMOptions& o) {
  const char* sep = "";
  out << "GradQueueSGDMOptions(";
#define SGDX_GQ_PRINT(T, name, init, where) \
  out << sep << #name "=";                  \
  print(out, o.name());                     \
  sep = ", ";
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_PRINT)
#undef SGDX_GQ_PRINT
  return out << ")";
}

double GradQueueSGDMOptions::get_lr() const {
  return lr();
}
void GradQueueSGDMOptions::set_lr(const double lr) {
  this->lr(lr);
}

namespace detail {
void check_optimizer_wide(const GradQueueSGDMOptions& group, const GradQueueSGDMOptions& optimizer,
                          size_t index) {
#define SGDX_GQ_CHECK(T, name, init, where)                                                                \
  if (GradQueueOptionScope::where != GradQueueOptionScope::group && !(group.name() == optimizer.name())) { \
    std::ostringstream g, o;                                                                               \
    print(g, group.name());                                                                                \
    print(o, optimizer.name());                                                                            \
    TORCH_CHECK(false, "GradQueueSGDM: parameter group ", index, " sets " #name " = ", g.str(),            \
                " but the optimizer's is ", o.str(),                                                       \
                "; " #name                                                                                 \
                " is optimizer-wide: set it on the options passed to the constructor or on "               \
                "defaults()");                                                                             \
  }
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_CHECK)
#undef SGDX_GQ_CHECK
}

void copy_optimizer_wide(GradQueueSGDMOptions& to, const GradQueueSGDMOptions& from) {
#define SGDX_GQ_COPY(T, name, init, where) \
  if (GradQueueOptionScope::where != GradQueueOptionScope::group) to.name(from.name());
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_COPY)
#undef SGDX_GQ_COPY
}
}  // namespace detail

}  // namespace sgdx::optim
