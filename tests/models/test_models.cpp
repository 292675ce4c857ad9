#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sgdx/models/models.h"
#include "test_util.h"

TEST(Models, ShapesAndParameterCounts) {
  auto mlp = sgdx::models::make_model("mlp", {1, 28, 28}, 10);
  EXPECT_EQ(mlp->forward(torch::randn({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
  int64_t n = 0;
  for (auto& p : mlp->parameters()) n += p.numel();
  EXPECT_EQ(n, 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10);
  auto cnn = sgdx::models::make_model("cnn", {1, 28, 28}, 10);
  EXPECT_EQ(cnn->forward(torch::randn({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
  auto resnet = sgdx::models::make_model("resnet", {3, 32, 32}, 10);
  EXPECT_EQ(resnet->forward(torch::randn({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 10}));
  // GroupNorm, not BatchNorm: one sample's output does not depend on the others.
  auto x = torch::randn({4, 3, 32, 32});
  EXPECT_TRUE(
      torch::allclose(resnet->forward(x).slice(0, 0, 1), resnet->forward(x.slice(0, 0, 1)), 1e-4, 1e-5));
}

TEST(Models, BadNamesAndShapes) {
  SGDX_EXPECT_THROW_MSG(sgdx::models::make_model("vgg", {1, 28, 28}, 10), "unknown model 'vgg'");
  SGDX_EXPECT_THROW_MSG(sgdx::models::make_model("cnn", {100}, 10), "needs image inputs");
}

// forward_features returns the logits of forward() and the input of the last Linear.
TEST(Models, ForwardFeaturesIsTheLastLinearInput) {
  torch::manual_seed(0);
  struct Case {
    const char* name;
    std::vector<int64_t> shape;
    int64_t width;
  };
  for (const auto& c :
       {Case{"mlp", {1, 28, 28}, 128}, Case{"cnn", {1, 28, 28}, 128}, Case{"resnet", {3, 32, 32}, 64}}) {
    auto m = sgdx::models::make_model(c.name, c.shape, 10);
    std::vector<int64_t> xs = {3};
    xs.insert(xs.end(), c.shape.begin(), c.shape.end());
    auto x = torch::randn(xs);
    auto [logits, feats] = m->forward_features(x);
    EXPECT_TRUE(torch::equal(logits, m->forward(x))) << c.name;
    EXPECT_EQ(feats.sizes(), (std::vector<int64_t>{3, c.width})) << c.name;
    // The last Linear maps the features to the logits.
    std::shared_ptr<torch::nn::Module> last;
    for (auto& mod : m->modules(false))
      if (mod->as<torch::nn::Linear>()) last = mod;
    ASSERT_TRUE(last);
    EXPECT_TRUE(torch::allclose(last->as<torch::nn::Linear>()->forward(feats), logits, 1e-5, 1e-6)) << c.name;
  }
}
