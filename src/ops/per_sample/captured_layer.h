#pragma once
// The private base of every per-sample layer rule (docs/per_sample_layers.md) and
// the small tensor helpers the rules share.
#include <ATen/ATen.h>
#include <c10/core/SymInt.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sgdx/ops/per_sample.h"
#include "sgdx/ops/per_sample_cuda.h"

namespace sgdx::ops {

/// The output gradient of one layer, written by a pre-hook during backward.
struct GradSlot {
  at::Tensor d;
};

/// One captured layer: what a rule kept in the forward (inputs, geometry) and the
/// output gradient the backward hands it; answers every per-sample question.
class CapturedLayer {
 public:
  virtual ~CapturedLayer() = default;
  std::string name;                    // module name
  std::string weight_name, bias_name;  // full parameter names; empty when left out
  std::shared_ptr<GradSlot> slot = std::make_shared<GradSlot>();
  int64_t batch = 0;

  bool ready() const { return slot->d.defined(); }
  /// Refuses what only the captured gradient shows (called once it is ready).
  virtual void check_captured() const {}
  /// [B] squared norm of this layer's included parameters.
  virtual at::Tensor sq_norms(NormStrategy strategy) const = 0;
  /// Per-sample gradients of the included parameters for samples `idx`: weight then bias.
  virtual std::vector<at::Tensor> grads(const at::Tensor& idx) const = 0;
  /// [s, s] Gram matrix of samples `idx` (default: materialise and multiply).
  virtual at::Tensor gram(const at::Tensor& idx) const;
  /// [B] inner products with (weight direction, bias direction); undefined = zero.
  virtual at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const = 0;
  /// The operands of the fused CUDA norm kernel, for the rules it implements.
  virtual std::optional<NormLayerOperands> fused_operands() const { return std::nullopt; }
  /// Sums of the per-sample gradients over each group, [K, *shape] (weight then
  /// bias). `order` lists the samples sorted by group, `sizes` the group sizes
  /// (host) and `onehot` [B, K] the membership. Default: materialise and reduce.
  virtual std::vector<at::Tensor> group_sums(const at::Tensor& order, const std::vector<int64_t>& sizes,
                                             const at::Tensor& onehot) const;

  bool has_weight() const { return !weight_name.empty(); }
  bool has_bias() const { return !bias_name.empty(); }
};

/// Rows of t selected by idx, without a copy when idx is the whole batch.
at::Tensor rows(const at::Tensor& t, const at::Tensor& idx);
/// A sum over all dims but the first: [B, ...] -> [B].
at::Tensor per_row_sum(const at::Tensor& t);
/// Splits the rows of t [B, ...] (taken in `order`) into consecutive groups of `sizes`.
std::vector<at::Tensor> split_groups(const at::Tensor& t, const at::Tensor& order,
                                     const std::vector<int64_t>& sizes);
/// [0, 1, ..., batch) on `device`.
at::Tensor all_samples(int64_t batch, const at::Device& device);

inline int64_t as_int(const c10::SymInt& s) {
  return s.expect_int();
}
std::vector<int64_t> as_ints(const std::vector<c10::SymInt>& v);

/// Where the batch lies in a layer input of shape `sizes` whose last dim is the
/// features. The capture reads the input row-major as [B, rows/B, F]: `first`
/// when the batch is the first dim not of size 1 and no other leading dim also
/// has size B (`ambiguous`: the shapes cannot say which one is the batch).
enum class BatchLayout { first, not_first, ambiguous };
BatchLayout batch_layout(c10::IntArrayRef sizes, int64_t batch);

}  // namespace sgdx::ops
