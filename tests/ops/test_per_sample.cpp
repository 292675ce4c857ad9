#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sgdx/models/models.h"
#include "sgdx/ops/per_sample.h"
#include "test_util.h"

using sgdx::ops::LossReduction;
using sgdx::ops::NormStrategy;
using sgdx::ops::PerSampleGradients;
using sgdx::ops::PerSampleOptions;
namespace nn = torch::nn;

namespace {

// Per-sample loss l_i = 0.5 * ||f(x_i) - y_i||^2 for any output shape.
at::Tensor per_sample_losses(const at::Tensor& out, const at::Tensor& y) {
  return 0.5 * (out - y).pow(2).reshape({out.size(0), -1}).sum(1);
}

struct Brute {
  std::vector<std::string> names;  // included parameters, named_parameters() order
  std::vector<at::Tensor> grads;   // per parameter: [B, *shape]
  at::Tensor flat;                 // [B, P]
};

// One backward per sample, in the model's dtype.
Brute brute_force(nn::Module& model, const at::Tensor& x, const at::Tensor& y,
                  const std::vector<std::string>& ignore = {}) {
  Brute b;
  std::vector<at::Tensor> params;
  for (auto& p : model.named_parameters()) {
    if (!p.value().requires_grad() || std::count(ignore.begin(), ignore.end(), p.key())) continue;
    b.names.push_back(p.key());
    params.push_back(p.value());
  }
  std::vector<std::vector<at::Tensor>> per(params.size());
  auto& seq = dynamic_cast<nn::SequentialImpl&>(model);
  for (int64_t i = 0; i < x.size(0); ++i) {
    auto li = per_sample_losses(seq.forward(x.slice(0, i, i + 1)), y.slice(0, i, i + 1)).sum();
    auto g = torch::autograd::grad({li}, params, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                   /*allow_unused=*/true);
    for (size_t k = 0; k < params.size(); ++k)
      per[k].push_back(g[k].defined() ? g[k] : torch::zeros_like(params[k]));
  }
  std::vector<at::Tensor> flat;
  for (auto& v : per) {
    b.grads.push_back(torch::stack(v));
    flat.push_back(b.grads.back().reshape({x.size(0), -1}));
  }
  b.flat = torch::cat(flat, 1);
  return b;
}

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  // Norm-wise relative error ||got - want|| / ||want||.
  const double scale = want.norm().item<double>();
  return (got.to(want.scalar_type()) - want).norm().item<double>() / (scale > 0 ? scale : 1.0);
}

// Runs the capture on `model` and checks everything against brute force.
void check(nn::Sequential model, at::Tensor x, double tol, LossReduction reduction = LossReduction::mean,
           NormStrategy strategy = NormStrategy::automatic, std::vector<std::string> ignore = {}) {
  torch::manual_seed(7);
  auto y = torch::randn_like(model->forward(x));
  const int64_t B = x.size(0);
  // The reference is always float64: a float32 model is checked against its float64 copy.
  auto ref_model = std::dynamic_pointer_cast<nn::SequentialImpl>(model->clone());
  ref_model->to(torch::kDouble);
  for (auto& p : model->named_parameters())
    ref_model->named_parameters()[p.key()].requires_grad_(p.value().requires_grad());
  auto brute =
      brute_force(*ref_model, x.is_floating_point() ? x.to(torch::kDouble) : x, y.to(torch::kDouble), ignore);

  // The ordinary gradients, without capture.
  model->zero_grad();
  auto losses = per_sample_losses(model->forward(x), y);
  (reduction == LossReduction::mean ? losses.mean() : losses.sum()).backward();
  std::vector<at::Tensor> plain;
  for (auto& p : model->parameters()) plain.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());

  model->zero_grad();
  PerSampleGradients cap(*model, PerSampleOptions{reduction, strategy, ignore});
  losses = per_sample_losses(model->forward(x), y);
  auto loss = reduction == LossReduction::mean ? losses.mean() : losses.sum();
  cap.attach(loss, B);
  loss.backward();
  ASSERT_TRUE(cap.ready());

  // The model's gradients are unchanged by the capture.
  auto params = model->parameters();
  for (size_t k = 0; k < params.size(); ++k) {
    if (plain[k].defined()) EXPECT_TRUE(torch::equal(params[k].grad(), plain[k])) << "parameter " << k;
  }
  EXPECT_LE(rel_err(cap.norms(), brute.flat.norm(2, 1)), tol);
  EXPECT_LE(rel_err(cap.squared_norms(), brute.flat.pow(2).sum(1)), tol);
  EXPECT_LE(rel_err(cap.layer_squared_norms().sum(0), brute.flat.pow(2).sum(1)), tol);
  for (size_t k = 0; k < brute.names.size(); ++k) {
    EXPECT_LE(rel_err(cap.per_sample_grad(brute.names[k]), brute.grads[k]), tol)
        << brute.names[k] << " " << x.sizes();
  }
  auto subset = torch::tensor({0L, B - 1, 1L}, torch::kLong);
  auto fs = brute.flat.index_select(0, subset);
  EXPECT_LE(rel_err(cap.gram(subset), fs.mm(fs.t())), tol);
  std::vector<at::Tensor> direction;
  std::vector<at::Tensor> included_dir;
  for (auto& p : model->named_parameters()) {
    auto v = torch::randn_like(p.value());
    direction.push_back(v);
    if (std::count(brute.names.begin(), brute.names.end(), p.key()))
      included_dir.push_back(v.reshape(-1).to(torch::kDouble));
  }
  EXPECT_LE(rel_err(cap.dot(direction), brute.flat.mv(torch::cat(included_dir))), tol);

  // Per-group sums (groups may be empty) against sums of the brute-force gradients.
  const int64_t G = 3;
  auto assignment = torch::randint(0, G, {B}, torch::kLong);
  auto onehot = torch::one_hot(assignment, G).to(torch::kDouble);  // [B, G]
  auto sums = cap.group_sums(assignment, G);
  auto named = model->named_parameters();
  ASSERT_EQ(sums.size(), named.size());
  for (size_t k = 0; k < named.size(); ++k) {
    const std::string name = named.keys()[k];
    const auto it = std::find(brute.names.begin(), brute.names.end(), name);
    if (it == brute.names.end()) {
      EXPECT_FALSE(sums[k].defined()) << name;
      continue;
    }
    const auto& g = brute.grads[it - brute.names.begin()];
    auto want = onehot.t().mm(g.reshape({B, -1})).reshape(sums[k].sizes());
    EXPECT_LE(rel_err(sums[k], want), tol) << "group sums of " << name;
  }
  SGDX_EXPECT_THROW_MSG(cap.group_sums(torch::zeros({B + 1}, torch::kLong), G), "assignment of");
  SGDX_EXPECT_THROW_MSG(cap.group_sums(torch::full({B}, G, torch::kLong), G),
                        "group indices must be in [0, 3)");
}

constexpr double kTol64 = 1e-10, kTol32 = 1e-5;

nn::Sequential dbl(nn::Sequential s) {
  s->to(torch::kDouble);
  return s;
}

}  // namespace

TEST(PerSample, Linear2D) {
  torch::manual_seed(0);
  for (bool bias : {true, false}) {
    auto m =
        dbl(nn::Sequential(nn::Linear(nn::LinearOptions(6, 4).bias(bias)), nn::Tanh(), nn::Linear(4, 3)));
    check(m, torch::randn({5, 6}, torch::kDouble), kTol64);
    check(m, torch::randn({5, 6}, torch::kDouble), kTol64, LossReduction::sum);
  }
}

TEST(PerSample, Linear3DSequenceBothStrategies) {
  torch::manual_seed(1);
  for (bool bias : {true, false}) {
    for (auto strategy : {NormStrategy::ghost, NormStrategy::materialize, NormStrategy::automatic}) {
      auto m =
          dbl(nn::Sequential(nn::Linear(nn::LinearOptions(6, 4).bias(bias)), nn::ReLU(), nn::Linear(4, 2)));
      check(m, torch::randn({4, 5, 6}, torch::kDouble), kTol64, LossReduction::mean, strategy);
    }
  }
}

TEST(PerSample, Conv2dStridePaddingDilationGroups) {
  torch::manual_seed(2);
  struct Cfg {
    int64_t cin, cout, k, stride, pad, dil, groups;
    bool bias;
  };
  for (auto c : {Cfg{3, 4, 3, 1, 1, 1, 1, true}, Cfg{4, 6, 3, 2, 0, 1, 2, false},
                 Cfg{2, 4, 2, 1, 2, 2, 1, true}, Cfg{4, 4, 3, 2, 1, 2, 4, true}}) {
    for (auto strategy : {NormStrategy::ghost, NormStrategy::materialize}) {
      auto m = dbl(nn::Sequential(nn::Conv2d(nn::Conv2dOptions(c.cin, c.cout, c.k)
                                                 .stride(c.stride)
                                                 .padding(c.pad)
                                                 .dilation(c.dil)
                                                 .groups(c.groups)
                                                 .bias(c.bias)),
                                  nn::Tanh(), nn::Flatten()));
      check(m, torch::randn({3, c.cin, 7, 6}, torch::kDouble), kTol64, LossReduction::mean, strategy);
    }
  }
}

TEST(PerSample, EmbeddingWithRepeatsAndPadding) {
  torch::manual_seed(3);
  for (int64_t padding : {-1, 2}) {
    auto opts = nn::EmbeddingOptions(6, 4);
    if (padding >= 0) opts.padding_idx(padding);
    auto m = nn::Sequential(nn::Embedding(opts), nn::Linear(4, 3));
    m->to(torch::kDouble);
    auto idx = torch::tensor({0, 2, 2, 5, 1, 1, 1, 3, 2, 0, 4, 4}, torch::kLong).reshape({3, 4});
    check(m, idx, kTol64);
  }
}

TEST(PerSample, LayerNormAndGroupNorm) {
  torch::manual_seed(4);
  auto ln = dbl(nn::Sequential(nn::Linear(5, 6), nn::LayerNorm(nn::LayerNormOptions({6})), nn::Linear(6, 2)));
  check(ln, torch::randn({4, 3, 5}, torch::kDouble), kTol64);
  check(ln, torch::randn({4, 5}, torch::kDouble), kTol64);
  auto gn = dbl(nn::Sequential(nn::Conv2d(nn::Conv2dOptions(2, 6, 3).padding(1)),
                               nn::GroupNorm(nn::GroupNormOptions(3, 6)), nn::ReLU(), nn::Flatten()));
  check(gn, torch::randn({3, 2, 5, 5}, torch::kDouble), kTol64);
}

TEST(PerSample, SmallMlpAndCnnFloat64AndFloat32) {
  torch::manual_seed(5);
  auto mlp = nn::Sequential(nn::Flatten(), nn::Linear(16, 8), nn::ReLU(), nn::Linear(8, 4));
  auto cnn = nn::Sequential(nn::Conv2d(nn::Conv2dOptions(1, 4, 3).padding(1)), nn::ReLU(), nn::MaxPool2d(2),
                            nn::Conv2d(nn::Conv2dOptions(4, 4, 3).groups(2)), nn::GroupNorm(2, 4),
                            nn::Flatten(), nn::Linear(16, 3));
  check(mlp, torch::randn({6, 4, 4}), kTol32);
  check(cnn, torch::randn({6, 1, 8, 8}), kTol32);
  mlp->to(torch::kDouble);
  cnn->to(torch::kDouble);
  check(mlp, torch::randn({6, 4, 4}, torch::kDouble), kTol64);
  check(cnn, torch::randn({6, 1, 8, 8}, torch::kDouble), kTol64);
}

TEST(PerSample, FrozenAndIgnoredParametersAreExcluded) {
  torch::manual_seed(6);
  auto m = dbl(nn::Sequential(nn::Linear(4, 5), nn::ReLU(), nn::Linear(5, 2)));
  m->named_parameters()["0.bias"].requires_grad_(false);
  check(m, torch::randn({4, 4}, torch::kDouble), kTol64);
  check(m, torch::randn({4, 4}, torch::kDouble), kTol64, LossReduction::mean, NormStrategy::automatic,
        {"2.weight"});
}

TEST(PerSample, ExampleTrainerModels) {
  torch::manual_seed(8);
  for (const std::string name : {"mlp", "cnn", "resnet"}) {
    auto model = sgdx::models::make_model(name, {1, 12, 12}, 10);
    model->to(torch::kDouble);
    auto x = torch::randn({3, 1, 12, 12}, torch::kDouble);
    auto y = torch::randint(0, 10, {3});
    PerSampleGradients cap(*model);
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    cap.attach(loss, 3);
    loss.backward();
    for (int64_t i = 0; i < 3; ++i) {
      model->zero_grad();
      torch::nn::functional::cross_entropy(model->forward(x.slice(0, i, i + 1)), y.slice(0, i, i + 1))
          .backward();
      double sq = 0;
      for (auto& p : model->parameters()) sq += p.grad().pow(2).sum().item<double>();
      EXPECT_NEAR(cap.norms()[i].item<double>(), std::sqrt(sq), 1e-10 * std::sqrt(sq))
          << name << " sample " << i;
    }
  }
}

TEST(PerSample, ClearErrors) {
  auto bn = nn::Sequential(nn::Linear(3, 4), nn::BatchNorm1d(4), nn::Linear(4, 2));
  auto x = torch::randn({5, 3});
  {
    PerSampleGradients cap(*bn);
    auto loss = bn->forward(x).pow(2).mean();
    SGDX_EXPECT_THROW_MSG(cap.attach(loss, 5), "BatchNorm layer '1'");
  }
  {  // ignoring its parameters is the opt-out
    PerSampleGradients cap(
        *bn, PerSampleOptions{LossReduction::mean, NormStrategy::automatic, {"1.weight", "1.bias"}});
    auto loss = bn->forward(x).pow(2).mean();
    cap.attach(loss, 5);
    SGDX_EXPECT_THROW_MSG(cap.norms(), "call backward on the attached loss first");
    loss.backward();
    EXPECT_EQ(cap.norms().size(0), 5);
  }
  auto prelu = nn::Sequential(nn::Linear(3, 4), nn::PReLU(), nn::Linear(4, 2));
  {
    PerSampleGradients cap(*prelu);
    SGDX_EXPECT_THROW_MSG(
        cap.attach(prelu->forward(x).sum(), 5),
        "layer '1' of type torch::nn::PReLUImpl has trainable parameters but is not supported");
  }
  SGDX_EXPECT_THROW_MSG(
      PerSampleGradients(*prelu, PerSampleOptions{LossReduction::mean, NormStrategy::automatic, {"nope"}}),
      "ignored parameter 'nope' is not a parameter");
  auto lin = nn::Sequential(nn::Linear(3, 2));
  PerSampleGradients cap(*lin);
  SGDX_EXPECT_THROW_MSG(cap.norms(), "call attach(loss, batch_size) before backward");
  SGDX_EXPECT_THROW_MSG(cap.attach(lin->forward(x), 5), "attach needs the scalar loss");
  SGDX_EXPECT_THROW_MSG(cap.attach(lin->forward(x).sum(), 3), "not a multiple of the batch size 3");
  auto loss = lin->forward(x).sum();
  cap.attach(loss, 5);
  loss.backward();
  SGDX_EXPECT_THROW_MSG(cap.gram(torch::tensor({0, 7}, torch::kLong)), "subset indices must be in [0, 5)");
  SGDX_EXPECT_THROW_MSG(cap.dot({torch::zeros({2, 3})}),
                        "direction has 1 tensors but the model has 2 parameters");
  // A weight used twice (tied) is refused; a module on the stack works as the root.
  struct Twice : nn::Module {
    nn::Linear l{nullptr};
    Twice() : l(register_module("l", nn::Linear(3, 3))) {}
  } twice;
  PerSampleGradients cap2(twice);
  SGDX_EXPECT_THROW_MSG(cap2.attach(twice.l->forward(twice.l->forward(x)).sum(), 5),
                        "used 2 times in the graph");
}

namespace {

// Per-sample gradients of every trainable parameter of `model` (named_parameters()
// order, [B, *shape]), one backward per sample: `loss_of(i)` is sample i's loss.
std::vector<at::Tensor> loop_grads(nn::Module& model, int64_t B,
                                   const std::function<at::Tensor(int64_t)>& loss_of) {
  std::vector<at::Tensor> params;
  for (auto& p : model.parameters()) params.push_back(p);
  std::vector<std::vector<at::Tensor>> per(params.size());
  for (int64_t i = 0; i < B; ++i) {
    auto g = torch::autograd::grad({loss_of(i)}, params, {}, false, false, /*allow_unused=*/true);
    for (size_t k = 0; k < params.size(); ++k)
      per[k].push_back(g[k].defined() ? g[k] : torch::zeros_like(params[k]));
  }
  std::vector<at::Tensor> out;
  for (auto& v : per) out.push_back(torch::stack(v));
  return out;
}

// Captures `model` on x with a summed loss and compares every per-sample gradient
// and norm with `want` (from loop_grads).
void expect_matches(nn::Sequential& model, const at::Tensor& x, const at::Tensor& y, int64_t B,
                    const std::vector<at::Tensor>& want) {
  PerSampleOptions options;
  options.reduction = LossReduction::sum;
  PerSampleGradients cap(*model, options);
  auto loss = 0.5 * (model->forward(x) - y).pow(2).sum();
  cap.attach(loss, B);
  loss.backward();
  std::vector<at::Tensor> flat;
  const auto named = model->named_parameters();
  for (size_t k = 0; k < named.size(); ++k) {
    EXPECT_LE(rel_err(cap.per_sample_grad(named.keys()[k]), want[k]), kTol64) << named.keys()[k];
    flat.push_back(want[k].reshape({B, -1}));
  }
  EXPECT_LE(rel_err(cap.norms(), torch::cat(flat, 1).norm(2, 1)), kTol64);
}

nn::Functional fn(std::function<at::Tensor(at::Tensor)> f) {
  return nn::Functional(std::move(f));
}

}  // namespace

// A Linear layer on sequence-first [T, B, F] input used to give wrong norms silently.
TEST(PerSample, SequenceFirstLinearIsRefused) {
  torch::manual_seed(9);
  const int64_t T = 5, B = 3;
  auto m = dbl(nn::Sequential(nn::Linear(4, 3), nn::Tanh(), nn::Linear(3, 2)));
  for (bool grad_in : {false, true}) {
    auto x = torch::randn({T, B, 4}, torch::kDouble).requires_grad_(grad_in);
    PerSampleGradients cap(*m);
    auto loss = m->forward(x).pow(2).sum();
    SGDX_EXPECT_THROW_MSG(cap.attach(loss, B), "Linear layer '0' input of shape [5, 3, 4]");
    SGDX_EXPECT_THROW_MSG(cap.attach(loss, B),
                          "is not batch-first for batch size 3 (sequence-first [T, B, F] input?)");
    // With the first layer left out, the second one (on [T, B, 3]) is refused.
    PerSampleGradients cap2(
        *m, PerSampleOptions{LossReduction::mean, NormStrategy::automatic, {"0.weight", "0.bias"}});
    SGDX_EXPECT_THROW_MSG(cap2.attach(loss, B),
                          "Linear layer '2' input of shape [5, 3, 3] (a reshape of a tensor of "
                          "shape [5, 3, 3]) is not batch-first");
  }
  // T == B: the shapes cannot tell [T, B, F] from [B, T, F].
  PerSampleGradients cap(*m);
  SGDX_EXPECT_THROW_MSG(cap.attach(m->forward(torch::randn({B, B, 4}, torch::kDouble)).sum(), B),
                        "has more than one leading dimension of the batch size 3");
}

TEST(PerSample, BatchFirstLinearMatchesLoopOverSamples) {
  torch::manual_seed(10);
  const int64_t B = 3, T = 5;
  for (bool bias : {true, false}) {
    for (bool grad_in : {false, true}) {
      auto m =
          dbl(nn::Sequential(nn::Linear(nn::LinearOptions(4, 3).bias(bias)), nn::Tanh(), nn::Linear(3, 2)));
      auto x = torch::randn({B, T, 4}, torch::kDouble).requires_grad_(grad_in);
      check(m, x, kTol64);
      auto y = torch::randn({B, T, 2}, torch::kDouble);
      auto want = loop_grads(*m, B, [&](int64_t i) {
        return 0.5 * (m->forward(x.slice(0, i, i + 1)) - y.slice(0, i, i + 1)).pow(2).sum();
      });
      expect_matches(m, x, y, B, want);
    }
  }
  // A batch sliced out of a larger contiguous data set (a view with an offset).
  auto m = dbl(nn::Sequential(nn::Linear(4, 3), nn::Tanh(), nn::Linear(3, 2)));
  auto data = torch::randn({7, T, 4}, torch::kDouble);
  check(m, data.slice(0, 2, 2 + B), kTol64);
}

TEST(PerSample, FlattenedBatchFirstReshape) {
  torch::manual_seed(11);
  const int64_t B = 3, T = 5;
  // [B, T, 4] -> [B*T, 4] -> two Linear layers -> [B, T*2]: the rows are traced to the reshape.
  auto m = dbl(nn::Sequential(fn([](at::Tensor x) {
                                return x.reshape({-1, x.size(-1)});
                              }),
                              nn::Linear(4, 3), nn::Tanh(), nn::Linear(3, 2), fn([](at::Tensor x) {
                                return x.reshape({-1, 5 * 2});
                              })));
  for (bool grad_in : {false, true}) {
    auto x = torch::randn({B, T, 4}, torch::kDouble).requires_grad_(grad_in);
    check(m, x, kTol64);
    check(m, x, kTol64, LossReduction::mean, NormStrategy::automatic, {"1.weight", "1.bias"});
  }
  // The same reshape of sequence-first input is refused, with or without gradients.
  for (bool grad_in : {false, true}) {
    auto x = torch::randn({T, B, 4}, torch::kDouble).requires_grad_(grad_in);
    PerSampleGradients cap(*m);
    SGDX_EXPECT_THROW_MSG(cap.attach(m->forward(x).sum(), B), "Linear layer '1' input of shape [5, 3, 4]");
    SGDX_EXPECT_THROW_MSG(cap.attach(m->forward(x).sum(), B), "is not batch-first for batch size 3");
  }
  // Rows that are a multiple of B from nowhere traceable: a [B*T, F] matrix handed over as is.
  auto lin = dbl(nn::Sequential(nn::Linear(4, 2)));
  PerSampleGradients cap(*lin);
  SGDX_EXPECT_THROW_MSG(
      cap.attach(lin->forward(torch::randn({B * T, 4}, torch::kDouble)).sum(), B),
      "Linear layer '0' multiplies a [15, 4] matrix whose 15 rows (a multiple of the batch size 3) "
      "come from a matrix with no recorded reshape");
  // An op that is not known to keep rows apart (here a cumulative sum over rows) stops the trace.
  auto sq = dbl(nn::Sequential(fn([](at::Tensor x) {
                                 return x.reshape({-1, x.size(-1)}).cumsum(0);
                               }),
                               nn::Linear(4, 2)));
  PerSampleGradients cap_sq(*sq);
  SGDX_EXPECT_THROW_MSG(
      cap_sq.attach(sq->forward(torch::randn({B, T, 4}, torch::kDouble).requires_grad_()).sum(), B),
      "come from a 2-D tensor made by CumsumBackward0");
  // Nor is a product with a matrix made from the data (here r r^T r) a row-wise op.
  auto mix = dbl(nn::Sequential(fn([](at::Tensor x) {
                                  auto r = x.reshape({-1, x.size(-1)});
                                  return r.mm(r.t().mm(r));
                                }),
                                nn::Linear(4, 2)));
  PerSampleGradients cap_mix(*mix);
  SGDX_EXPECT_THROW_MSG(
      cap_mix.attach(mix->forward(torch::randn({B, T, 4}, torch::kDouble).requires_grad_()).sum(), B),
      "come from a 2-D tensor made by MmBackward0");
}

TEST(PerSample, TransposedSequenceFirstInput) {
  torch::manual_seed(12);
  const int64_t B = 3, T = 5;
  auto to_batch_first = fn([](at::Tensor x) { return x.transpose(0, 1); });
  auto m = dbl(nn::Sequential(to_batch_first, nn::Linear(4, 3), nn::Tanh(), nn::Linear(3, 2)));
  auto y = torch::randn({B, T, 2}, torch::kDouble);
  // With gradients into the input, the graph shows the transpose's copy as [B, T, F]: exact.
  auto x = torch::randn({T, B, 4}, torch::kDouble).requires_grad_();
  auto want = loop_grads(*m, B, [&](int64_t i) {
    return 0.5 * (m->forward(x.slice(1, i, i + 1)) - y.slice(0, i, i + 1)).pow(2).sum();
  });
  expect_matches(m, x, y, B, want);
  const auto want_m = want;
  // Without, matmul copies the non-contiguous input where the graph cannot see it: refused...
  auto x0 = x.detach();
  {
    PerSampleGradients cap(*m);
    SGDX_EXPECT_THROW_MSG(
        cap.attach(m->forward(x0).sum(), B),
        "Linear layer '1' multiplies a [15, 4] matrix whose 15 rows (a multiple of the batch size 3) "
        "come from a matrix with no recorded reshape");
  }
  // ...and exact once made contiguous.
  auto mc = dbl(nn::Sequential(fn([](at::Tensor x) { return x.transpose(0, 1).contiguous(); }),
                               nn::Linear(4, 3), nn::Tanh(), nn::Linear(3, 2)));
  want = loop_grads(*mc, B, [&](int64_t i) {
    return 0.5 * (mc->forward(x0.slice(1, i, i + 1)) - y.slice(0, i, i + 1)).pow(2).sum();
  });
  expect_matches(mc, x0, y, B, want);
  // Bias only (weight left out): matmul then add, the layout read from the captured output gradient.
  {
    PerSampleOptions options;
    options.reduction = LossReduction::sum;
    options.ignore = {"1.weight"};
    PerSampleGradients cap(*m, options);
    auto loss = 0.5 * (m->forward(x) - y).pow(2).sum();
    cap.attach(loss, B);
    loss.backward();
    EXPECT_LE(rel_err(cap.per_sample_grad("1.bias"), want_m[1]), kTol64);
  }
  // A transpose that leaves the batch second is refused.
  auto wrong = dbl(nn::Sequential(fn([](at::Tensor x) { return x.transpose(0, 1); }), nn::Linear(4, 2)));
  auto xb = torch::randn({B, T, 4}, torch::kDouble).requires_grad_();
  PerSampleGradients cap(*wrong);
  SGDX_EXPECT_THROW_MSG(
      cap.attach(wrong->forward(xb).sum(), B),
      "Linear layer '1' input of shape [5, 3, 4] (a reshape of a tensor of shape [5, 3, 4]) is not "
      "batch-first");
  PerSampleOptions bias_only;
  bias_only.ignore = {"1.weight"};
  PerSampleGradients cap_b(*wrong, bias_only);
  auto loss = wrong->forward(xb).sum();
  cap_b.attach(loss, B);
  loss.backward();
  SGDX_EXPECT_THROW_MSG(cap_b.norms(),
                        "Linear layer '1' (bias only) has output of shape [5, 3, 2], whose batch "
                        "dimension cannot be established");
}

// Eval-mode BatchNorm is the per-channel affine map gamma * (x - running_mean) /
// sqrt(running_var + eps) + beta: exact per-sample gradients. Training mode couples samples.
TEST(PerSample, BatchNormEvalIsExactTrainingIsRefused) {
  torch::manual_seed(13);
  auto warm = [](nn::Sequential m, at::Tensor x) {
    m->train();
    for (int k = 0; k < 3; ++k) m->forward(x * (k + 1) + k);  // running statistics far from (0, 1)
    m->eval();
    for (auto& p : m->parameters()) p.data().normal_();  // gamma, beta away from (1, 0)
    return m;
  };
  auto bn1 = warm(dbl(nn::Sequential(nn::Linear(3, 4), nn::BatchNorm1d(4), nn::Tanh(), nn::Linear(4, 2))),
                  torch::randn({8, 3}, torch::kDouble));
  check(bn1, torch::randn({5, 3}, torch::kDouble), kTol64);
  auto bn1l = warm(dbl(nn::Sequential(nn::BatchNorm1d(4), nn::Flatten(), nn::Linear(4 * 6, 2))),
                   torch::randn({8, 4, 6}, torch::kDouble));
  check(bn1l, torch::randn({5, 4, 6}, torch::kDouble), kTol64);
  auto bn2 = warm(dbl(nn::Sequential(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).padding(1)), nn::BatchNorm2d(3),
                                     nn::ReLU(), nn::Flatten(), nn::Linear(3 * 4 * 4, 2))),
                  torch::randn({8, 2, 4, 4}, torch::kDouble));
  check(bn2, torch::randn({4, 2, 4, 4}, torch::kDouble), kTol64);
  check(bn2, torch::randn({4, 2, 4, 4}, torch::kDouble), kTol64, LossReduction::sum, NormStrategy::automatic,
        {"1.weight"});

  bn1->train();
  {
    PerSampleGradients cap(*bn1);
    SGDX_EXPECT_THROW_MSG(
        cap.attach(bn1->forward(torch::randn({5, 3}, torch::kDouble)).sum(), 5),
        "per-sample gradients are not defined for BatchNorm layer '1': in training mode (or with "
        "track_running_stats=false) it normalises with the statistics of the batch");
  }
  auto nostats = dbl(nn::Sequential(nn::BatchNorm1d(nn::BatchNormOptions(3).track_running_stats(false))));
  nostats->eval();
  PerSampleGradients cap(*nostats);
  SGDX_EXPECT_THROW_MSG(cap.attach(nostats->forward(torch::randn({5, 3}, torch::kDouble)).sum(), 5),
                        "BatchNorm layer '0': in training mode (or with track_running_stats=false)");
}

// The layer rules are registered by the autograd node type they read.
TEST(PerSample, RegistryListsTheNodeTypesItServes) {
  std::vector<std::string> layers;
  std::map<std::string, std::vector<std::string>> nodes;
  for (const auto& r : sgdx::ops::per_sample_layer_rules()) {
    layers.push_back(r.layer);
    nodes[r.layer] = r.nodes;
  }
  EXPECT_EQ(layers, (std::vector<std::string>{"Linear", "Conv2d", "Embedding", "LayerNorm", "GroupNorm",
                                              "BatchNorm in eval mode"}));
  EXPECT_EQ(nodes["Linear"], (std::vector<std::string>{"AddmmBackward0", "MmBackward0", "AddBackward0"}));
  EXPECT_EQ(nodes["Conv2d"], (std::vector<std::string>{"ConvolutionBackward0"}));
  EXPECT_EQ(nodes["Embedding"], (std::vector<std::string>{"EmbeddingBackward0"}));
  EXPECT_EQ(nodes["LayerNorm"], (std::vector<std::string>{"NativeLayerNormBackward0"}));
  EXPECT_EQ(nodes["GroupNorm"], (std::vector<std::string>{"NativeGroupNormBackward0"}));
  EXPECT_EQ(nodes["BatchNorm in eval mode"],
            (std::vector<std::string>{"NativeBatchNormBackward0", "CudnnBatchNormBackward0",
                                      "MiopenBatchNormBackward0"}));
}

namespace {

// A module of no torch::nn type whose forward computes through addmm.
struct Dense : nn::Module {
  at::Tensor weight, bias;
  Dense(int64_t in, int64_t out) {
    weight = register_parameter("weight", torch::randn({out, in}, torch::kDouble));
    bias = register_parameter("bias", torch::randn({out}, torch::kDouble));
  }
  at::Tensor forward(const at::Tensor& x) { return torch::addmm(bias, x, weight.t()); }
};

// A module with a parameter that is neither a weight nor a bias.
struct Scale : nn::Module {
  at::Tensor scale;
  Scale() { scale = register_parameter("scale", torch::ones({3})); }
};

}  // namespace

// The node, not the module type, picks the rule: any module computing through a
// registered node is captured; anything else is refused, naming the module.
TEST(PerSample, RulesFollowTheNodeUnsupportedLayersAreRefusedByName) {
  torch::manual_seed(21);
  const int64_t B = 4;
  auto dense = std::make_shared<Dense>(3, 2);
  auto x = torch::randn({B, 3}, torch::kDouble);
  PerSampleOptions options;
  options.reduction = LossReduction::sum;
  PerSampleGradients cap(*dense, options);
  auto loss = dense->forward(x).pow(2).sum();
  cap.attach(loss, B);
  loss.backward();
  const auto want =
      loop_grads(*dense, B, [&](int64_t i) { return dense->forward(x.slice(0, i, i + 1)).pow(2).sum(); });
  EXPECT_LE(rel_err(cap.per_sample_grad("weight"), want[0]), kTol64);
  EXPECT_LE(rel_err(cap.per_sample_grad("bias"), want[1]), kTol64);
  EXPECT_EQ(cap.layer_names(), std::vector<std::string>{"<root>"});

  auto prelu = nn::Sequential(nn::Linear(3, 4), nn::PReLU(), nn::Linear(4, 2));
  PerSampleGradients cap_prelu(*prelu);
  SGDX_EXPECT_THROW_MSG(
      cap_prelu.attach(prelu->forward(torch::randn({5, 3})).sum(), 5),
      "which no layer rule reads; supported: Linear, Conv2d, Embedding, LayerNorm, GroupNorm, "
      "BatchNorm in eval mode); ignore its parameters with PerSampleOptions::ignore");
  auto scaled = nn::Sequential(nn::Linear(3, 3));
  auto scale = scaled->register_module("s", std::make_shared<Scale>());
  PerSampleGradients cap_scale(*scaled);
  auto y = scaled->forward(torch::randn({5, 3})) * scale->scale;
  SGDX_EXPECT_THROW_MSG(cap_scale.attach(y.sum(), 5), "layer 's' of type ");
  SGDX_EXPECT_THROW_MSG(
      cap_scale.attach(y.sum(), 5),
      "Scale has trainable parameters but is not supported (its parameter 'scale' is neither "
      "a weight nor a bias");
}
