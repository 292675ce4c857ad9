// GradQueue-SGDM's clustered step (its fast path against its per-cluster-autograd
// reference, and K = 1 against the plain tensor variant), checkpoints of both variants,
// errors, and the fused CUDA paths against the ATen path.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <deque>
#include <optional>
#include <sstream>

#include "cuda/cuda_test_util.h"
#include "optim/optimizer_bytes.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/gradqueue.h"
#include "test_util.h"

namespace {

using sgdx::optim::GradQueueGranularity;
using sgdx::optim::GradQueueScope;
using sgdx::optim::GradQueueSGDM;
using sgdx::optim::GradQueueSGDMOptions;
using sgdx::optim::GradQueueStorage;

// A small net with every kind of layer the fast path handles.
struct Net : torch::nn::Module {
  torch::nn::Conv2d conv{nullptr};
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  Net() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1)));
    norm = register_module("norm", torch::nn::GroupNorm(2, 4));
    fc1 = register_module("fc1", torch::nn::Linear(4 * 5 * 5, 12));
    fc2 = register_module("fc2", torch::nn::Linear(12, 3));
  }
  // Returns logits and the input of the last Linear (the clustering features).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
    auto h = torch::relu(norm(conv(x))).flatten(1);
    auto f = torch::relu(fc1(h));
    return {fc2(f), f};
  }
};

struct Batch {
  torch::Tensor x, y;
};
std::vector<Batch> batches(int n, int64_t B) {
  torch::manual_seed(99);
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i)
    out.push_back({torch::randn({B, 2, 5, 5}, torch::kDouble), torch::randint(0, 3, {B}, torch::kLong)});
  return out;
}

std::shared_ptr<Net> make_net(torch::Device device = torch::kCPU, torch::ScalarType dtype = torch::kDouble) {
  torch::manual_seed(7);
  auto net = std::make_shared<Net>();
  net->to(device, dtype);
  return net;
}

enum class Path { plain, reference, fast };

std::vector<torch::Tensor> train(Path path, GradQueueSGDMOptions o, const std::vector<Batch>& data,
                                 std::vector<std::vector<int64_t>>* sizes = nullptr,
                                 torch::Device device = torch::kCPU,
                                 torch::ScalarType dtype = torch::kDouble) {
  auto net = make_net(device, dtype);
  GradQueueSGDM opt(net->parameters(), o);
  sgdx::ops::PerSampleGradients cap(*net);
  for (const auto& batch : data) {
    const Batch b{batch.x.to(device, dtype), batch.y.to(device)};
    opt.zero_grad();
    if (path == Path::plain) {
      opt.step([&] {
        auto loss = torch::nn::functional::cross_entropy(net->forward(b.x).first, b.y);
        loss.backward();
        return loss;
      });
    } else {
      auto [logits, feats] = net->forward(b.x);
      auto losses = torch::nn::functional::cross_entropy(
          logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
      opt.clustered_step(losses, feats.detach(), path == Path::fast ? &cap : nullptr);
      if (sizes) sizes->push_back(opt.last_step_info().cluster_sizes);
    }
  }
  std::vector<torch::Tensor> out;
  for (auto& p : net->parameters()) out.push_back(p.detach().to(torch::kCPU, torch::kDouble).clone());
  return out;
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, double rtol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::allclose(a[i], b[i], rtol, 1e-12))
        << "param " << i << " max diff " << (a[i] - b[i]).abs().max().item<double>();
}

TEST(GradQueueSGDMClustered, OneClusterIsThePlainTensorVariant) {
  const auto data = batches(12, 16);
  auto o = GradQueueSGDMOptions(0.05)
               .granularity(GradQueueGranularity::tensor)
               .q_min(2)
               .q_init(3)
               .weight_decay(1e-3)
               .clusters(1);
  const auto plain = train(Path::plain, o, data);
  expect_close(train(Path::reference, o, data), plain, 1e-9);
  expect_close(train(Path::fast, o, data), plain, 1e-9);
  // (scope = global measures scarcity on the whole model, so it is not the per-tensor rule even for K = 1.)
}

TEST(GradQueueSGDMClustered, FastPathEqualsPerClusterAutograd) {
  const auto data = batches(10, 24);
  for (auto scope : {GradQueueScope::per_tensor, GradQueueScope::global}) {
    auto o = GradQueueSGDMOptions(0.05).q_min(2).q_init(3).clusters(3).scope(scope).seed(5).nesterov(true);
    std::vector<std::vector<int64_t>> s_ref, s_fast;
    const auto ref = train(Path::reference, o, data, &s_ref);
    const auto fast = train(Path::fast, o, data, &s_fast);
    expect_close(fast, ref, 1e-9);
    EXPECT_EQ(s_ref, s_fast);
    // The clusters did split the batch (else this would only test K = 1).
    for (auto& s : s_ref) EXPECT_LT(*std::max_element(s.begin(), s.end()), 24);
    // And reweighting changed the trajectory compared with SGD-momentum.
    const auto sgdm = train(Path::reference, o.rho_min(1.0).rho_max(1.0), data);
    double diff = 0;
    for (size_t i = 0; i < ref.size(); ++i) diff += (ref[i] - sgdm[i]).abs().sum().item<double>();
    EXPECT_GT(diff, 1e-6);
  }
}

TEST(GradQueueSGDMClustered, GradHoldsTheBatchMeanGradient) {
  auto net = make_net();
  GradQueueSGDM opt(net->parameters(), GradQueueSGDMOptions(0.05).clusters(2).weight_decay(0.1));
  const auto b = batches(1, 12)[0];
  auto [logits, feats] = net->forward(b.x);
  auto losses = torch::nn::functional::cross_entropy(
      logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto expected = torch::autograd::grad({losses.mean()}, net->parameters(), {}, /*retain_graph=*/true);
  sgdx::ops::PerSampleGradients cap(*net);
  opt.clustered_step(losses, feats.detach(), &cap);
  auto params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(torch::allclose(params[i].grad(), expected[i], 1e-10, 1e-12));
}

std::string save(const GradQueueSGDM& opt) {
  return sgdx::testing::optimizer_bytes(opt);
}

TEST(GradQueueSGDM, SaveLoadResumesBitIdentically) {
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    for (const bool clustered : {false, true}) {
      const auto data = batches(14, 16);
      auto o = GradQueueSGDMOptions(0.05)
                   .q_min(2)
                   .q_init(3)
                   .q_max(6)
                   .storage(storage)
                   .clusters(clustered ? 3 : 1)
                   .resync_every(5)
                   .seed(3);
      auto run = [&](const std::shared_ptr<Net>& net, GradQueueSGDM& opt, int from, int to) {
        sgdx::ops::PerSampleGradients cap(*net);
        for (int i = from; i < to; ++i) {
          opt.zero_grad();
          if (clustered) {
            auto [logits, feats] = net->forward(data[i].x);
            auto losses = torch::nn::functional::cross_entropy(
                logits, data[i].y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
            opt.clustered_step(losses, feats.detach(), &cap);
          } else {
            opt.step([&] {
              auto loss = torch::nn::functional::cross_entropy(net->forward(data[i].x).first, data[i].y);
              loss.backward();
              return loss;
            });
          }
        }
      };
      auto net = make_net();
      GradQueueSGDM opt(net->parameters(), o);
      run(net, opt, 0, 7);
      const auto blob = save(opt);
      std::vector<torch::Tensor> mid;
      for (auto& p : net->parameters()) mid.push_back(p.detach().clone());
      run(net, opt, 7, 14);

      auto net2 = make_net();
      {
        torch::NoGradGuard ng;
        auto ps = net2->parameters();
        for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(mid[i]);
      }
      GradQueueSGDM opt2(net2->parameters(), GradQueueSGDMOptions(1.0));
      torch::serialize::InputArchive in;
      std::istringstream s(blob);
      in.load_from(s);
      opt2.load(in);
      run(net2, opt2, 7, 14);
      auto a = net->parameters(), b = net2->parameters();
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_TRUE(torch::equal(a[i], b[i]))
            << "param " << i << " storage " << int(storage) << " clustered " << clustered;
    }
  }
}

TEST(GradQueueSGDM, ClearErrors) {
  auto net = make_net();
  const auto b = batches(1, 4)[0];
  auto [logits, feats] = net->forward(b.x);
  auto losses = torch::nn::functional::cross_entropy(
      logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  GradQueueSGDM k5(net->parameters(), GradQueueSGDMOptions(0.1).clusters(5));
  SGDX_EXPECT_THROW_MSG(k5.clustered_step(losses, feats.detach()), "clusters = 5 exceeds the batch size 4");
  GradQueueSGDM k2(net->parameters(), GradQueueSGDMOptions(0.1).clusters(2));
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, feats.detach().slice(0, 0, 3)),
                        "features have 3 rows but there are 4 per-sample losses");
  auto bad = feats.detach().clone();
  bad[1][0] = std::nan("");
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, bad), "non-finite feature in row 1");
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses.detach(), feats.detach()), "no autograd graph");
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, feats.detach().flatten()), "features must be 2-D");
  auto other_net = make_net();
  sgdx::ops::PerSampleGradients other(*other_net);
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, feats.detach(), &other),
                        "not captured by the PerSampleGradients");

  auto p = torch::zeros({3}, torch::requires_grad());
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(0.1).q_init(40)),
                        "q_init must be in [q_min, q_max] = [4, 32], got 40");
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(0.1).rho_min(3.0)),
                        "need 0 < rho_min <= rho_max < inf, got rho_min 3");
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(-1)), "lr must be finite and >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(0.1).momentum(1.0)),
                        "momentum must be in [0, 1)");
  GradQueueSGDM ok({p}, GradQueueSGDMOptions(0.1));
  SGDX_EXPECT_THROW_MSG(ok.observe_loss(std::nan("")), "observed loss is not finite");
}

}  // namespace

namespace {
// A parameter that gets no gradient for a while keeps the same window length as
// the others (the loss trend applies to every tensor with state).
TEST(GradQueueSGDM, WindowFollowsTheLossWithoutAGradient) {
  auto a = torch::zeros({4}, torch::requires_grad());
  auto b = torch::zeros({4}, torch::requires_grad());
  GradQueueSGDM opt({a, b}, GradQueueSGDMOptions(0.1).q_min(2).q_init(3).q_max(10));
  auto st = [&](const torch::Tensor& p) -> const sgdx::optim::GradQueueSGDMParamState& {
    return static_cast<const sgdx::optim::GradQueueSGDMParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
  };
  for (int t = 0; t < 8; ++t) {
    a.mutable_grad() = torch::randn({4});
    if (t < 2)
      b.mutable_grad() = torch::randn({4});
    else
      b.mutable_grad() = torch::Tensor();
    opt.observe_loss(10.0 - t);  // falling: the window grows every step after the first
    opt.step();
    EXPECT_EQ(st(a).window(), st(b).window()) << "step " << t;
  }
  EXPECT_EQ(st(a).window(), 3 + 7);
  EXPECT_EQ(st(b).count(), 2);  // b pushed only twice
}
}  // namespace

// fused_cuda only changes what runs on CUDA parameters: on the CPU the results are
// bit-identical; like a backend, it is not taken from a checkpoint.
TEST(GradQueueSGDM, FusedCudaOptionLeavesCpuUntouchedAndRoundTrips) {
  const auto data = batches(8, 16);
  auto o = GradQueueSGDMOptions(0.05).q_min(2).q_init(3).clusters(3).seed(2);
  for (auto path : {Path::plain, Path::fast}) {
    const auto a = train(path, o, data);
    const auto b = train(path, GradQueueSGDMOptions(o).fused_cuda(true), data);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "param " << i;
  }
  auto net = make_net();
  for (const bool saved : {false, true}) {
    GradQueueSGDM opt(net->parameters(), GradQueueSGDMOptions(0.05).fused_cuda(saved));
    const auto blob = save(opt);
    GradQueueSGDM opt2(net->parameters(), GradQueueSGDMOptions(1.0).fused_cuda(!saved));
    torch::serialize::InputArchive in;
    std::istringstream s(blob);
    in.load_from(s);
    opt2.load(in);
    EXPECT_EQ(static_cast<const GradQueueSGDMOptions&>(opt2.defaults()).fused_cuda(), !saved);
    EXPECT_EQ(static_cast<const GradQueueSGDMOptions&>(opt2.defaults()).lr(), 0.05);
  }
}

// On a GPU: the fused kernels (multi-tensor step, k-means, cluster statistics) against
// the ATen path on the same device, float32, every storage and granularity.
TEST(GradQueueSGDMCuda, FusedKernelsMatchTheAtenPath) {
  SGDX_REQUIRE_CUDA();
  const auto data = batches(12, 32);
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    for (auto gran : {GradQueueGranularity::element, GradQueueGranularity::tensor}) {
      for (auto path : {Path::plain, Path::fast}) {
        auto o = GradQueueSGDMOptions(0.05)
                     .q_min(2)
                     .q_init(3)
                     .q_max(6)
                     .resync_every(5)
                     .storage(storage)
                     .granularity(gran)
                     .weight_decay(1e-3)
                     .clusters(path == Path::fast ? 3 : 1)
                     .seed(4);
        std::vector<std::vector<int64_t>> s_aten, s_fused;
        const auto aten = train(path, o, data, &s_aten, torch::kCUDA, torch::kFloat);
        const auto fused = train(path, GradQueueSGDMOptions(o).fused_cuda(true), data, &s_fused, torch::kCUDA,
                                 torch::kFloat);
        EXPECT_EQ(s_aten, s_fused);
        for (size_t i = 0; i < aten.size(); ++i) {
          EXPECT_TRUE(torch::allclose(fused[i], aten[i], 1e-4, 1e-5))
              << "param " << i << " storage " << int(storage) << " granularity " << int(gran) << " path "
              << int(path) << " max diff " << (fused[i] - aten[i]).abs().max().item<double>();
        }
      }
    }
  }
}

#if SGDX_WITH_CUDA
// One plain step on a GPU under CUDA's sync-debug mode: the only synchronising call
// permitted is the single read of found_inf (skip-safe host bookkeeping).
TEST(GradQueueSGDMCuda, StepSyncsOnlyToReadFoundInf) {
  SGDX_REQUIRE_CUDA();
  for (const bool fused : {false, true}) {
    torch::manual_seed(1);
    auto p1 = torch::randn({300, 17}, torch::kCUDA).requires_grad_(true);
    auto p2 = torch::randn({17}, torch::kCUDA).requires_grad_(true);
    GradQueueSGDM opt({p1, p2}, GradQueueSGDMOptions(0.05).q_min(2).fused_cuda(fused));
    const auto found_inf = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA));
    for (int t = 0; t < 6; ++t) {
      p1.mutable_grad() = torch::randn_like(p1);
      p2.mutable_grad() = torch::randn_like(p2);
      if (t < 5) {
        opt.step_scaled({}, found_inf);
        continue;
      }
      sgdx::testing::SyncCounter syncs;
      opt.step_scaled({}, found_inf);
      EXPECT_LE(syncs.syncs, 1) << "fused " << fused;
    }
  }
}
#endif
