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
  EXPECT_TRUE(torch::allclose(resnet->forward(x).slice(0, 0, 1), resnet->forward(x.slice(0, 0, 1)), 1e-4, 1e-5));
}

TEST(Models, BadNamesAndShapes) {
  SGDX_EXPECT_THROW_MSG(sgdx::models::make_model("vgg", {1, 28, 28}, 10), "unknown model 'vgg'");
  SGDX_EXPECT_THROW_MSG(sgdx::models::make_model("cnn", {100}, 10), "needs image inputs");
}
