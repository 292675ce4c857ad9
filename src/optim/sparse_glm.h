#pragma once
// What the lazy sparse optimizers (sparse_svrg, sparse_dasvrda, sparse_katyusha) share:
// the GLM loss's derivative, the scalar elastic-net prox, and per-coordinate records on
// huge pages.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include <sys/mman.h>

#include "sgdx/optim/reference_optimum.h"

namespace sgdx::optim::detail {

/// phi'(z; y): z - y (squares) or -y sigmoid(-y z) (logistic, labels +-1), without overflow.
inline double glm_derivative(GlmLoss loss, double z, double y) {
  if (loss == GlmLoss::squares) return z - y;
  const double t = -y * z;
  const double s = t >= 0 ? 1.0 / (1.0 + std::exp(-t)) : std::exp(t) / (1.0 + std::exp(t));
  return -y * s;
}

/// prox_{c R}(v) for R = l1 |.| + l2/2 (.)^2, as elastic_net_prox_ computes it per element.
inline double elastic_net_prox(double v, double c, double l1, double l2) {
  if (l1 > 0) v = std::copysign(std::max(std::abs(v) - c * l1, 0.0), v);
  if (l2 > 0) v /= 1.0 + c * l2;
  return v;
}

/// Asks for the records of `row`'s columns ahead of use: the steps are bound by the latency
/// of these scattered reads, and issuing a whole row's at once overlaps them.
template <typename T>
inline void prefetch_row(const int64_t* indptr, const int64_t* indices, int64_t row, const T* records) {
  for (int64_t k = indptr[row]; k < indptr[row + 1]; ++k) __builtin_prefetch(records + indices[k], 1);
}

/// `count` value-initialised records on 2 MB pages where the kernel allows (a hint): a step
/// reads records at random columns, and huge pages keep the TLB from missing on most.
/// Deleter must release with std::free.
template <typename T, typename Deleter>
std::unique_ptr<T[], Deleter> huge_page_array(int64_t count, const char* who) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t bytes = ((static_cast<size_t>(count) * sizeof(T) + kHugePage - 1) / kHugePage) * kHugePage;
  void* raw = nullptr;
  TORCH_CHECK(posix_memalign(&raw, kHugePage, bytes) == 0, who, ": cannot allocate ", bytes, " bytes for ",
              count, " coordinates");
#ifdef MADV_HUGEPAGE
  (void)madvise(raw, bytes, MADV_HUGEPAGE);
#endif
  std::unique_ptr<T[], Deleter> out(static_cast<T*>(raw));
  std::uninitialized_fill_n(out.get(), count, T{});
  return out;
}

}  // namespace sgdx::optim::detail
