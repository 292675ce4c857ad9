#include "captured_layer.h"

#include <c10/util/irange.h>

#include <algorithm>

namespace sgdx::ops {

at::Tensor CapturedLayer::gram(const at::Tensor& idx) const {
  std::vector<at::Tensor> flat;
  for (auto& g : grads(idx)) flat.push_back(g.reshape({g.size(0), -1}));
  auto f = at::cat(flat, 1);
  return f.mm(f.t());
}

std::vector<at::Tensor> CapturedLayer::group_sums(const at::Tensor& /*order*/,
                                                  const std::vector<int64_t>& /*sizes*/,
                                                  const at::Tensor& onehot) const {
  std::vector<at::Tensor> out;
  for (auto& g : grads(all_samples(batch, slot->d.device()))) {
    auto shape = g.sizes().vec();
    shape[0] = onehot.size(1);
    out.push_back(onehot.t().to(g.scalar_type()).mm(g.reshape({g.size(0), -1})).reshape(shape));
  }
  return out;
}

at::Tensor rows(const at::Tensor& t, const at::Tensor& idx) {
  if (idx.numel() == t.size(0)) {
    const auto n = idx.numel();
    if (n == 0 || (idx[0].item<int64_t>() == 0 && idx.equal(at::arange(n, idx.options())))) return t;
  }
  return t.index_select(0, idx);
}

at::Tensor per_row_sum(const at::Tensor& t) {
  return t.reshape({t.size(0), -1}).sum(1);
}

std::vector<at::Tensor> split_groups(const at::Tensor& t, const at::Tensor& order,
                                     const std::vector<int64_t>& sizes) {
  return t.index_select(0, order).split_with_sizes(sizes, 0);
}

at::Tensor all_samples(int64_t batch, const at::Device& device) {
  return at::arange(batch, at::TensorOptions().dtype(at::kLong).device(device));
}

std::vector<int64_t> as_ints(const std::vector<c10::SymInt>& v) {
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (const auto& s : v) out.push_back(s.expect_int());
  return out;
}

BatchLayout batch_layout(c10::IntArrayRef sizes, int64_t batch) {
  if (batch == 1) return BatchLayout::first;  // every row belongs to the one sample
  const auto lead = sizes.slice(0, sizes.size() - 1);
  const auto hits = std::count(lead.begin(), lead.end(), batch);
  if (hits > 1) return BatchLayout::ambiguous;
  for (const auto s : lead) {
    if (s == batch) return BatchLayout::first;
    if (s != 1) break;
  }
  return BatchLayout::not_first;
}

}  // namespace sgdx::ops
