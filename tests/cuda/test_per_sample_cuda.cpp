// The fused per-sample norm kernel against an independent float64 reference on
// the CPU: per-sample gradients formed explicitly (D_i^T A_i for Linear, one
// convolution_backward per sample for Conv2d) and squared. Fresh random inputs,
// sizes that are not multiples of the 32-wide tiles, one position, one element,
// every rule (outer, ghost, materialise, bias only), groups, stride, padding,
// dilation, all layers in one launch, float32/float16/bfloat16, operands at an
// odd element offset, empty batches and layers without work; the allocator's
// cache is filled with NaN before each call so stale output would show; one
// capture + norms call under CUDA's sync-debug mode. The validation tests run
// without a GPU; the others skip.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <optional>

#include "cuda/cuda_test_util.h"
#include "sgdx/config.h"
#include "sgdx/models/models.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/ops/per_sample_cuda.h"
#include "test_util.h"

using sgdx::ops::NormLayerOperands;
using sgdx::ops::NormStrategy;
using Kind = NormLayerOperands::Kind;
using sgdx::ops::detail::NormRule;

namespace {

// Squared per-sample gradient norms in float64 from the (already rounded) operands.
at::Tensor reference(const NormLayerOperands& op, int64_t B) {
  auto d = op.grad_output.cpu().to(torch::kDouble);
  auto total = torch::zeros({B}, torch::kDouble);
  if (op.kind == Kind::linear) {
    const int64_t T = (d.dim() == 3 ? d.size(0) * d.size(1) : d.size(0)) / B;  // explicit: sizes may be 0
    auto d3 = d.reshape({B, T, d.size(-1)});
    if (op.weight) {
      auto a3 = op.input.cpu().to(torch::kDouble).reshape({B, T, op.input.size(-1)});
      total += d3.transpose(1, 2).bmm(a3).pow(2).sum({1, 2});
    }
    if (op.bias) total += d3.sum(1).pow(2).sum(1);
    return total;
  }
  auto x = op.weight ? op.input.cpu().to(torch::kDouble) : at::Tensor();
  for (int64_t i = 0; i < B; ++i) {
    double s = 0;
    if (op.weight) {
      auto w = torch::empty({d.size(1), x.size(1) / op.groups, op.kernel_h, op.kernel_w}, torch::kDouble);
      auto g = at::convolution_backward(d.slice(0, i, i + 1), x.slice(0, i, i + 1), w, std::nullopt,
                                        {op.stride_h, op.stride_w}, {op.pad_h, op.pad_w},
                                        {op.dilation_h, op.dilation_w}, false, {0, 0}, op.groups,
                                        {false, true, false});
      s += std::get<1>(g).pow(2).sum().item<double>();
    }
    if (op.bias) s += d[i].sum({1, 2}).pow(2).sum().item<double>();
    total[i] = s;
  }
  return total;
}

NormLayerOperands linear(int64_t B, int64_t T, int64_t K, int64_t P, bool weight, bool bias, NormStrategy s,
                         torch::ScalarType dt) {
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(dt);
  NormLayerOperands op;
  op.kind = Kind::linear;
  op.weight = weight;
  op.bias = bias;
  op.strategy = s;
  if (weight) op.input = torch::randn({B * T, K}, o);
  op.grad_output = torch::randn({B * T, P}, o);
  return op;
}

struct ConvCfg {
  int64_t cin, cout, k, stride, pad, dil, groups, h, w;
};

NormLayerOperands conv(int64_t B, const ConvCfg& c, bool weight, bool bias, NormStrategy s,
                       torch::ScalarType dt) {
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(dt);
  NormLayerOperands op;
  op.kind = Kind::conv2d;
  op.weight = weight;
  op.bias = bias;
  op.strategy = s;
  op.kernel_h = op.kernel_w = c.k;
  op.stride_h = op.stride_w = c.stride;
  op.pad_h = op.pad_w = c.pad;
  op.dilation_h = op.dilation_w = c.dil;
  op.groups = c.groups;
  const int64_t ho = (c.h + 2 * c.pad - c.dil * (c.k - 1) - 1) / c.stride + 1;
  const int64_t wo = (c.w + 2 * c.pad - c.dil * (c.k - 1) - 1) / c.stride + 1;
  op.input = torch::randn({B, c.cin, c.h, c.w}, o);
  if (!weight) op.input = at::Tensor();
  op.grad_output = torch::randn({B, c.cout, ho, wo}, o);
  return op;
}

// Relative to the float64 reference on the same (already rounded) operands. The
// kernel sums runs of <= 32 products in float32 (<= 32 roundings: ~2e-6 worst
// case, ~1e-7 typical) and everything longer in float64, then rounds once to
// float32: 1e-5 is the spec's bound with margin. float16/bfloat16 operands widen
// exactly to float32 (their products are even exact), so the input dtype adds no
// error and they are held to the same bound.
double tolerance(torch::ScalarType) {
  return 1e-5;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  auto g = got.cpu().to(torch::kDouble);
  ASSERT_EQ(g.sizes(), want.sizes()) << what;
  ASSERT_TRUE(torch::isfinite(g).all().item<bool>()) << what << ": " << g;
  const double scale = want.abs().max().item<double>() + 1e-30;
  const double err = ((g - want).abs() / (want.abs() + 1e-3 * scale)).max().item<double>();
  EXPECT_LE(err, tol) << what << "\ngot  " << g << "\nwant " << want;
}

std::vector<NormLayerOperands> all_cases(int64_t B, torch::ScalarType dt, std::vector<std::string>& names) {
  std::vector<NormLayerOperands> ops;
  auto add = [&](NormLayerOperands op, std::string name) {
    ops.push_back(std::move(op));
    names.push_back(std::move(name));
  };
  const std::vector<NormStrategy> strategies = {NormStrategy::ghost, NormStrategy::materialize,
                                                NormStrategy::automatic};
  struct Lin {
    int64_t T, K, P;
  };
  for (auto l : {Lin{1, 1, 1}, Lin{1, 33, 17}, Lin{1, 300, 65}, Lin{7, 33, 40}, Lin{65, 31, 3},
                 Lin{33, 64, 64}, Lin{2, 1, 1}}) {
    for (auto s : strategies) {
      for (int wb = 0; wb < 3; ++wb) {
        const bool w = wb != 2, b = wb != 0;
        add(linear(B, l.T, l.K, l.P, w, b, s, dt),
            "linear T=" + std::to_string(l.T) + " K=" + std::to_string(l.K) + " P=" + std::to_string(l.P) +
                " w=" + std::to_string(w) + " b=" + std::to_string(b) + " s=" + std::to_string(int(s)));
      }
    }
  }
  for (auto c : {ConvCfg{3, 16, 3, 1, 1, 1, 1, 32, 32}, ConvCfg{16, 32, 3, 2, 1, 1, 1, 16, 16},
                 ConvCfg{4, 6, 3, 2, 0, 1, 2, 7, 6}, ConvCfg{2, 4, 2, 1, 2, 2, 1, 5, 9},
                 ConvCfg{8, 8, 1, 1, 0, 1, 8, 9, 9}, ConvCfg{64, 64, 3, 1, 1, 1, 1, 8, 8},
                 ConvCfg{1, 1, 1, 1, 0, 1, 1, 1, 1}}) {
    for (auto s : strategies) {
      for (int wb = 0; wb < 3; ++wb) {
        const bool w = wb != 2, b = wb != 0;
        add(conv(B, c, w, b, s, dt), "conv " + std::to_string(c.cin) + "->" + std::to_string(c.cout) + " k" +
                                         std::to_string(c.k) + " s" + std::to_string(c.stride) + " p" +
                                         std::to_string(c.pad) + " d" + std::to_string(c.dil) + " g" +
                                         std::to_string(c.groups) + " " + std::to_string(c.h) + "x" +
                                         std::to_string(c.w) + " w=" + std::to_string(w) +
                                         " b=" + std::to_string(b) + " s=" + std::to_string(int(s)));
      }
    }
  }
  return ops;
}

}  // namespace

TEST(PerSampleNormsCuda, EveryRuleAgainstFloat64Reference) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(0);
  for (auto dt : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (int64_t B : {1, 3, 17}) {
      std::vector<std::string> names;
      auto ops = all_cases(B, dt, names);
      // One layer per call, then all of them in one launch.
      for (size_t k = 0; k < ops.size(); ++k) {
        sgdx::testing::poison_cuda_cache();
        auto got = sgdx::ops::per_sample_sq_norms_cuda({ops[k]}, B);
        ASSERT_EQ(got.scalar_type(), torch::kFloat);
        expect_close(got[0], reference(ops[k], B), tolerance(dt), names[k] + " B=" + std::to_string(B));
      }
      sgdx::testing::poison_cuda_cache();
      auto all = sgdx::ops::per_sample_sq_norms_cuda(ops, B);
      ASSERT_EQ(all.size(0), static_cast<int64_t>(ops.size()));
      for (size_t k = 0; k < ops.size(); ++k) {
        expect_close(all[k], reference(ops[k], B), tolerance(dt), "(one launch) " + names[k]);
      }
    }
  }
}

TEST(PerSampleNormsCuda, MixedDtypesAndDeterminism) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(1);
  const int64_t B = 9;
  std::vector<NormLayerOperands> ops = {
      linear(B, 5, 70, 20, true, true, NormStrategy::automatic, torch::kFloat),
      conv(B, {6, 10, 3, 1, 1, 1, 2, 11, 11}, true, true, NormStrategy::automatic, torch::kHalf),
      linear(B, 1, 129, 10, true, false, NormStrategy::automatic, torch::kBFloat16)};
  sgdx::testing::poison_cuda_cache();
  auto a = sgdx::ops::per_sample_sq_norms_cuda(ops, B);
  sgdx::testing::poison_cuda_cache();
  auto b = sgdx::ops::per_sample_sq_norms_cuda(ops, B);
  EXPECT_TRUE(torch::equal(a, b)) << "fixed-order reductions must give bit-identical results";
  for (size_t k = 0; k < ops.size(); ++k) {
    expect_close(a[k], reference(ops[k], B), tolerance(ops[k].grad_output.scalar_type()),
                 "layer " + std::to_string(k));
  }
}

// PerSampleGradients with the fused backend on the example trainer's models, against the ATen backend in
// float64.
TEST(PerSampleNormsCuda, PerSampleGradientsFusedBackend) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(2);
  for (const std::string name : {"mlp", "cnn", "resnet"}) {
    auto model = sgdx::models::make_model(name, {3, 32, 32}, 10);
    auto x = torch::randn({16, 3, 32, 32});
    auto y = torch::randint(0, 10, {16});
    auto norms_of = [&](torch::Device dev, torch::ScalarType dt, sgdx::ops::PerSampleBackend backend) {
      model->to(dev, dt);
      model->zero_grad();
      sgdx::ops::PerSampleOptions o;
      o.backend = backend;
      sgdx::ops::PerSampleGradients cap(*model, o);
      auto loss = torch::nn::functional::cross_entropy(model->forward(x.to(dev, dt)), y.to(dev));
      cap.attach(loss, 16);
      loss.backward();
      return cap.squared_norms().cpu().to(torch::kDouble);
    };
    // 1e-3 here is not the kernel's error (held to 1e-5 above) but the model's:
    // a float32 forward and backward on the GPU (cuDNN convolutions may use TF32)
    // against a float64 one on the CPU, and the ATen float32 rules on the GPU.
    auto want = norms_of(torch::kCPU, torch::kDouble, sgdx::ops::PerSampleBackend::aten);
    auto got = norms_of(torch::kCUDA, torch::kFloat, sgdx::ops::PerSampleBackend::fused_cuda);
    expect_close(got, want, 1e-3, name + " float32 fused vs float64");
    auto aten = norms_of(torch::kCUDA, torch::kFloat, sgdx::ops::PerSampleBackend::aten);
    expect_close(got, aten, 1e-3, name + " fused vs ATen on the GPU");
  }
}

// Activations and output gradients at an odd element offset (float32: 4- but
// not 8-byte aligned; half: 2- but not 4-byte) through every rule.
TEST(PerSampleNormsCuda, MisalignedOperands) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(5);
  const int64_t B = 5;
  for (auto dt : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    std::vector<NormLayerOperands> ops = {
        linear(B, 1, 37, 19, true, true, NormStrategy::automatic, dt),    // one position
        linear(B, 9, 40, 33, true, true, NormStrategy::ghost, dt),        // ghost
        linear(B, 9, 40, 33, true, true, NormStrategy::materialize, dt),  // per-sample gradient tiles
        linear(B, 9, 40, 33, false, true, NormStrategy::automatic, dt),   // bias only
        conv(B, {3, 5, 3, 1, 1, 1, 1, 9, 7}, true, true, NormStrategy::ghost, dt),
        conv(B, {4, 6, 3, 2, 0, 1, 2, 7, 6}, true, true, NormStrategy::materialize, dt)};
    for (auto& op : ops) {
      op.grad_output = sgdx::testing::at_odd_offset(op.grad_output);
      const auto align = static_cast<uintptr_t>(2 * op.grad_output.element_size());
      ASSERT_NE(reinterpret_cast<uintptr_t>(op.grad_output.data_ptr()) % align, 0u);
      if (op.input.defined()) op.input = sgdx::testing::at_odd_offset(op.input);
    }
    sgdx::testing::poison_cuda_cache();
    auto got = sgdx::ops::per_sample_sq_norms_cuda(ops, B);
    for (size_t k = 0; k < ops.size(); ++k) {
      expect_close(got[k], reference(ops[k], B), tolerance(dt),
                   "misaligned layer " + std::to_string(k) + " " + std::string(c10::toString(dt)));
    }
  }
}

// Nothing to compute still gives device tensors of the documented shape.
TEST(PerSampleNormsCuda, EmptyBatchesAndLayersWithoutWork) {
  SGDX_REQUIRE_CUDA();
  const auto o = torch::TensorOptions().device(torch::kCUDA);
  // No layers: [0, B] on the current CUDA device.
  auto none = sgdx::ops::per_sample_sq_norms_cuda({}, 4);
  EXPECT_TRUE(none.is_cuda());
  EXPECT_EQ(none.sizes(), (std::vector<int64_t>{0, 4}));
  // An empty batch: [layers, 0] on the operands' device.
  NormLayerOperands lin;
  lin.input = torch::randn({0, 3}, o);
  lin.grad_output = torch::randn({0, 5}, o);
  lin.bias = true;
  NormLayerOperands cv;
  cv.kind = Kind::conv2d;
  cv.kernel_h = cv.kernel_w = 3;
  cv.input = torch::randn({0, 2, 6, 6}, o);
  cv.grad_output = torch::randn({0, 4, 4, 4}, o);
  auto empty = sgdx::ops::per_sample_sq_norms_cuda({lin, cv}, 0);
  EXPECT_TRUE(empty.is_cuda());
  EXPECT_EQ(empty.sizes(), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(empty.scalar_type(), torch::kFloat);
  // Layers without work items: no inputs (K = 0), no outputs (P = 0), no positions (T = 0).
  const int64_t B = 3;
  std::vector<NormLayerOperands> ops(4);
  ops[0].input = torch::randn({B, 0}, o);
  ops[0].grad_output = torch::randn({B, 4}, o);
  ops[0].bias = true;  // the bias part is still there
  ops[1].input = torch::randn({B * 5, 6}, o);
  ops[1].grad_output = torch::randn({B * 5, 0}, o);
  ops[1].bias = true;
  ops[2].input = torch::randn({B, 0, 6}, o);
  ops[2].grad_output = torch::randn({B, 0, 2}, o);
  ops[2].bias = true;
  ops[3].kind = Kind::conv2d;
  ops[3].input = torch::randn({B, 2, 5, 5}, o);
  ops[3].grad_output = torch::randn({B, 0, 5, 5}, o);
  ops[3].bias = true;
  sgdx::testing::poison_cuda_cache();
  auto got = sgdx::ops::per_sample_sq_norms_cuda(ops, B);
  EXPECT_TRUE(got.is_cuda());
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{4, B}));
  expect_close(got[0], reference(ops[0], B), 1e-5, "no inputs: the bias part only");
  EXPECT_TRUE(torch::equal(got.slice(0, 1).cpu(), torch::zeros({3, B})));  // no outputs / positions: 0
}

// One capture (attach + backward) and one norms() call with the fused backend
// make no synchronizing CUDA call: sync-debug L_ERROR throws on any.
TEST(PerSampleNormsCuda, NoHostSyncInCaptureAndNorms) {
  SGDX_REQUIRE_CUDA();
#if SGDX_WITH_CUDA
  namespace nn = torch::nn;
  torch::manual_seed(4);
  nn::Sequential model(nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::GroupNorm(2, 8), nn::ReLU(),
                       nn::Conv2d(nn::Conv2dOptions(8, 8, 3).stride(2).groups(2)), nn::Flatten(),
                       nn::Linear(8 * 7 * 7, 10));
  model->to(torch::kCUDA);
  const auto x = torch::randn({6, 3, 16, 16}, torch::kCUDA);
  sgdx::ops::PerSampleOptions o;
  o.backend = sgdx::ops::PerSampleBackend::fused_cuda;
  auto run = [&](bool strict) {
    model->zero_grad();
    sgdx::ops::PerSampleGradients cap(*model, o);
    auto loss = model->forward(x).pow(2).mean();
    std::optional<sgdx::testing::SyncDebugScope> scope;
    if (strict) scope.emplace(c10::cuda::SyncDebugMode::L_ERROR);
    cap.attach(loss, 6);
    loss.backward();
    return cap.norms();
  };
  const auto warm = run(false);  // lazy initialisation (cuDNN, cuBLAS) outside the checked scope
  torch::cuda::synchronize();
  at::Tensor strict;
  EXPECT_NO_THROW(strict = run(true));
  ASSERT_TRUE(strict.defined());
  EXPECT_TRUE(strict.is_cuda());
  expect_close(strict, warm.cpu().to(torch::kDouble), 1e-5, "under sync-debug");
#endif
}

TEST(PerSampleNormsCuda, LimitsOnTheDevice) {
  SGDX_REQUIRE_CUDA();
  auto op = linear(2, 1, 3, 4, true, true, NormStrategy::automatic, torch::kDouble);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::per_sample_sq_norms_cuda({op}, 2), "takes float32, float16 or bfloat16");
  auto mixed = linear(2, 1, 3, 4, true, true, NormStrategy::automatic, torch::kFloat);
  mixed.input = mixed.input.to(torch::kHalf);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::per_sample_sq_norms_cuda({mixed}, 2), "input dtype Half");
}

// Validation runs before any device work: these need no GPU.
TEST(PerSampleNormsCuda, ClearErrors) {
  NormLayerOperands op;
  op.input = torch::randn({4, 3});
  op.grad_output = torch::randn({4, 5});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::per_sample_sq_norms_cuda({op}, 4), "needs CUDA tensors");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({op}, 3, false), "not batch-first for batch 3");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({op}, -1, false), "batch must be >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({op}, 0, false), "not batch-first for batch 0");
  // An empty batch is valid (and needs no division by it).
  NormLayerOperands none;
  none.input = torch::randn({0, 3});
  none.grad_output = torch::randn({0, 5});
  EXPECT_NO_THROW(sgdx::ops::detail::check_norm_layers({none}, 0, false));
  EXPECT_NO_THROW(sgdx::ops::detail::norm_rule(none, 0));
  SGDX_EXPECT_THROW_MSG(sgdx::ops::per_sample_sq_norms_cuda({none}, 0), "needs CUDA tensors");
  auto bad = op;
  bad.input = torch::randn({5, 3});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({bad}, 4, false), "5 input rows but 4");
  bad = op;
  bad.weight = bad.bias = false;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({bad}, 4, false), "neither weight nor bias");
  bad = op;
  bad.input = at::Tensor();
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({bad}, 4, false), "has no input");
  bad = op;
  bad.grad_output = torch::randn({4, 5}, torch::kDouble);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({bad}, 4, false), "has dtype Double");
  NormLayerOperands c;
  c.kind = Kind::conv2d;
  c.kernel_h = c.kernel_w = 3;
  c.input = torch::randn({2, 4, 8, 8});
  c.grad_output = torch::randn({2, 6, 7, 7});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({c}, 2, false), "gives output 6x6");
  c.grad_output = torch::randn({2, 6, 6, 6});
  c.groups = 4;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({c}, 2, false), "not a multiple of groups = 4");
  c.groups = 2;
  EXPECT_NO_THROW(sgdx::ops::detail::check_norm_layers({c}, 2, false));
  // A bias-only Conv2d (frozen or ignored weight) has no input to validate.
  auto bias_only = c;
  bias_only.weight = false;
  bias_only.bias = true;
  bias_only.input = at::Tensor();
  EXPECT_NO_THROW(sgdx::ops::detail::check_norm_layers({bias_only}, 2, false));
  EXPECT_EQ(sgdx::ops::detail::norm_rule(bias_only, 2), NormRule::bias_only);
  c.stride_h = 0;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_norm_layers({c}, 2, false), "invalid geometry");
  // The rule choice follows the CPU path: ghost when 2 T^2 <= K P.
  EXPECT_EQ(sgdx::ops::detail::norm_rule(op, 4), NormRule::outer_product);  // one position
  NormLayerOperands seq;
  seq.input = torch::randn({4 * 8, 64});
  seq.grad_output = torch::randn({4 * 8, 64});
  EXPECT_EQ(sgdx::ops::detail::norm_rule(seq, 4), NormRule::ghost);  // 2*64 <= 4096
  seq.input = torch::randn({4 * 100, 8});
  seq.grad_output = torch::randn({4 * 100, 8});
  EXPECT_EQ(sgdx::ops::detail::norm_rule(seq, 4), NormRule::materialize);
  seq.weight = false;
  EXPECT_EQ(sgdx::ops::detail::norm_rule(seq, 4), NormRule::bias_only);
  // The PerSampleGradients backend refuses CPU models with the reason.
  auto model = torch::nn::Sequential(torch::nn::Linear(3, 2));
  sgdx::ops::PerSampleOptions o;
  o.backend = sgdx::ops::PerSampleBackend::fused_cuda;
  sgdx::ops::PerSampleGradients cap(*model, o);
  auto loss = model->forward(torch::randn({4, 3})).pow(2).mean();
  cap.attach(loss, 4);
  loss.backward();
  SGDX_EXPECT_THROW_MSG(cap.norms(), "backend fused_cuda needs the model on a CUDA device");
}
