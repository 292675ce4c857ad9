#pragma once
// The one place a drawn importance batch is built (ImportanceSampler and
// DistributedImportanceSampler): b draws from `tree`, weights 1/(N p_i).
#include <c10/util/irange.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "sgdx/data/importance.h"

namespace sgdx::data::detail {

/// Batch `sequence` of `size` draws from `tree` with stream `seed`; also the
/// indices as the DataLoader takes them.
inline std::pair<ImportanceBatch, std::vector<size_t>> draw_importance_batch(const SumTree& tree, double mix,
                                                                             uint64_t seed, int64_t sequence,
                                                                             size_t size) {
  const auto n = static_cast<double>(tree.size());
  ImportanceBatch batch;
  batch.sequence = sequence;
  batch.indices.resize(size);
  batch.weights = at::empty({static_cast<int64_t>(size)}, at::kFloat);
  auto* w = batch.weights.data_ptr<float>();
  std::vector<size_t> out(size);
  for (const auto j : c10::irange(size)) {
    const auto d = importance_draw(tree, mix, seed, sequence, static_cast<int64_t>(j));
    batch.indices[j] = d.index;
    out[j] = static_cast<size_t>(d.index);
    w[j] = static_cast<float>(1.0 / (n * d.probability));
  }
  return {std::move(batch), std::move(out)};
}

}  // namespace sgdx::data::detail
