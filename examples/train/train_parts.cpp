#include "train_parts.h"

#include "sgdx/data/importance.h"
#include "sgdx/ops/per_sample.h"

namespace sgdx_train {

void evaluate(sgdx::models::Classifier& model, const sgdx::data::TensorDataset& test, int64_t classes,
              const std::vector<int64_t>& train_counts, const torch::Device& device, EpochMetrics& m,
              const World& world) {
  torch::NoGradGuard no_grad;
  model.eval();
  const int64_t n = test.inputs().size(0);
  const auto [offset, share] = world.share(n);
  auto loss_sum = torch::zeros({classes}, torch::kDouble), correct = torch::zeros({classes}, torch::kDouble);
  auto count = torch::zeros({classes}, torch::kDouble);
  for (int64_t i = 0; i < share; i += 1000) {
    const int64_t len = std::min<int64_t>(1000, share - i);
    auto x = test.inputs().narrow(0, offset + i, len).to(device);
    auto y = test.targets().narrow(0, offset + i, len).to(device);
    auto logits = model.forward(x);
    auto losses = torch::nn::functional::cross_entropy(
        logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    auto yc = y.cpu();
    loss_sum.index_add_(0, yc, losses.to(torch::kDouble).cpu());
    correct.index_add_(0, yc, logits.argmax(1).eq(y).to(torch::kDouble).cpu());
    count.index_add_(0, yc, torch::ones({len}, torch::kDouble));
  }
  model.train();
  if (world.multi()) {
    std::vector<at::Tensor> sums = {loss_sum, correct, count};
    world.comm().all_reduce_sum(sums);
    loss_sum = sums[0], correct = sums[1], count = sums[2];
  }
  m.test_loss = loss_sum.sum().item<double>() / double(n);
  m.test_accuracy = correct.sum().item<double>() / double(n);
  auto acc = correct / count.clamp_min(1), cls_loss = loss_sum / count.clamp_min(1);
  m.class_accuracy.assign(acc.data_ptr<double>(), acc.data_ptr<double>() + classes);
  m.class_loss.assign(cls_loss.data_ptr<double>(), cls_loss.data_ptr<double>() + classes);
  auto sorted = train_counts;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.empty() ? 0 : double(sorted[sorted.size() / 2]);
  double head_c = 0, head_n = 0, tail_c = 0, tail_n = 0;
  for (int64_t c = 0; c < classes && c < static_cast<int64_t>(train_counts.size()); ++c) {
    const bool head = double(train_counts[c]) >= median;
    (head ? head_c : tail_c) += correct[c].item<double>();
    (head ? head_n : tail_n) += count[c].item<double>();
  }
  m.head_accuracy = head_n > 0 ? head_c / head_n : std::nan("");
  m.tail_accuracy = tail_n > 0 ? tail_c / tail_n : std::nan("");
}

std::optional<at::ScalarType> amp_dtype(const std::string& amp) {
  if (amp == "bf16") return at::kBFloat16;
  if (amp == "fp16") return at::kHalf;
  return std::nullopt;
}

at::Tensor per_example_ce(const at::Tensor& logits, const at::Tensor& y) {
  return torch::nn::functional::cross_entropy(
      logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
}

at::Tensor forward_scores(const std::string& sampling, const at::Tensor& logits, const at::Tensor& y) {
  if (sampling == "upper-bound") return sgdx::data::upper_bound_scores(logits, y);
  return per_example_ce(logits.detach(), y);
}

at::Tensor exact_norms(sgdx::models::Classifier& model, const at::Tensor& x, const at::Tensor& y) {
  sgdx::ops::PerSampleGradients cap(model);
  auto loss = torch::nn::functional::cross_entropy(model.forward(x), y);
  cap.attach(loss, x.size(0));
  loss.backward();
  model.zero_grad();
  return cap.norms();
}

}  // namespace sgdx_train
