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
#include <vector>

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

/// CSR rows as the lazy optimizers read them.
struct CsrRows {
  const int64_t* indptr;
  const int64_t* indices;
  const double* values;
  const double* labels;
};

/// The batch part of an inner step, shared by the lazy optimizers. Collects the batch's
/// distinct columns into `touched` (records marked with `step`), calling `prepare(j)` on each
/// once (bring it up to date, form the step's point) and zeroing its `grad`; then adds
/// (1/|B|) sum_i [phi'(a_i . point) - phi'(snapshot margin_i)] a_i to the records' `grad`,
/// with `point(record)` the coordinate of the step's point.
template <typename Record, typename Prepare, typename Point>
void batch_gradient(GlmLoss loss, const CsrRows& csr, const std::vector<int64_t>& batch,
                    const std::vector<double>& snapshot_margin, Record* records, int64_t step,
                    std::vector<int64_t>& touched, Prepare&& prepare, Point&& point) {
  touched.clear();
  prefetch_row(csr.indptr, csr.indices, batch[0], records);
  for (size_t r = 0; r < batch.size(); ++r) {
    const int64_t i = batch[r];
    if (r + 1 < batch.size()) prefetch_row(csr.indptr, csr.indices, batch[r + 1], records);
    for (int64_t k = csr.indptr[i]; k < csr.indptr[i + 1]; ++k) {
      const int64_t j = csr.indices[k];
      auto& c = records[j];
      if (c.mark == step) continue;
      c.mark = static_cast<int32_t>(step);
      touched.push_back(j);
      prepare(j);
      c.grad = 0.0;
    }
  }
  const double inv_b = 1.0 / static_cast<double>(batch.size());
  for (const auto i : batch) {
    double z = 0;
    for (int64_t k = csr.indptr[i]; k < csr.indptr[i + 1]; ++k)
      z += csr.values[k] * point(records[csr.indices[k]]);
    const double coef =
        (glm_derivative(loss, z, csr.labels[i]) - glm_derivative(loss, snapshot_margin[i], csr.labels[i])) *
        inv_b;
    for (int64_t k = csr.indptr[i]; k < csr.indptr[i + 1]; ++k)
      records[csr.indices[k]].grad += coef * csr.values[k];
  }
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
