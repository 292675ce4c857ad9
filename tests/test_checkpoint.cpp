#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "sgdx/checkpoint.h"
#include "sgdx/models/models.h"
#include "sgdx/optim/rsgd.h"
#include "test_util.h"

using sgdx::testing::TempDir;

namespace {
void train_steps(sgdx::models::Classifier& model, torch::optim::Optimizer& opt, int from, int to) {
  for (int s = from; s < to; ++s) {
    torch::manual_seed(1000 + s);  // the data of step s, independent of the model
    auto x = torch::randn({16, 1, 8, 8});
    auto y = torch::randint(0, 10, {16});
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model.forward(x), y);
    loss.backward();
    opt.step();
  }
}
}  // namespace

TEST(Checkpoint, ModelAndRSGDRoundTripMidRunIsBitIdentical) {
  TempDir dir;
  const auto path = dir.file("ckpt.pt");
  torch::manual_seed(0);
  auto a = sgdx::models::make_model("cnn", {1, 8, 8}, 10);
  sgdx::optim::RSGD oa(a->parameters(), sgdx::optim::RSGDOptions(0.05).gamma(0.9).seed(3));
  train_steps(*a, oa, 0, 6);
  sgdx::save_checkpoint(path, *a, &oa);
  train_steps(*a, oa, 6, 12);

  torch::manual_seed(99);  // a different initialisation, overwritten by the load
  auto b = sgdx::models::make_model("cnn", {1, 8, 8}, 10);
  sgdx::optim::RSGD ob(b->parameters(), sgdx::optim::RSGDOptions(0.05).gamma(0.9).seed(3));
  sgdx::load_checkpoint(path, *b, &ob);
  train_steps(*b, ob, 6, 12);

  const auto pa = a->parameters(), pb = b->parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i])) << "parameter " << i;
  // No temporary file is left beside the checkpoint.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path), {}), 1);
}

TEST(Checkpoint, ExtraStateRoundTrips) {
  TempDir dir;
  auto m = sgdx::models::make_model("mlp", {4}, 2);
  sgdx::save_checkpoint(dir.file("c.pt"), *m, nullptr, [](torch::serialize::OutputArchive& ar) {
    ar.write("epoch", c10::IValue(int64_t{7}));
  });
  int64_t epoch = 0;
  sgdx::load_checkpoint(dir.file("c.pt"), *m, nullptr, [&](torch::serialize::InputArchive& ar) {
    c10::IValue v;
    ar.read("epoch", v);
    epoch = v.toInt();
  });
  EXPECT_EQ(epoch, 7);
}

TEST(Checkpoint, MismatchedModelGivesClearErrorAndChangesNothing) {
  TempDir dir;
  auto mlp = std::make_shared<sgdx::models::MLP>(4, std::vector<int64_t>{8}, 2);
  sgdx::save_checkpoint(dir.file("c.pt"), *mlp);

  auto deeper = std::make_shared<sgdx::models::MLP>(4, std::vector<int64_t>{8, 8}, 2);
  SGDX_EXPECT_THROW_MSG(sgdx::load_checkpoint(dir.file("c.pt"), *deeper),
                        "holds 4 parameters but the model has 6");

  auto wider = std::make_shared<sgdx::models::MLP>(4, std::vector<int64_t>{9}, 2);
  const auto before = wider->parameters()[0].clone();
  SGDX_EXPECT_THROW_MSG(sgdx::load_checkpoint(dir.file("c.pt"), *wider),
                        "has shape [8, 4] but the model's has [9, 4]");
  EXPECT_TRUE(torch::equal(before, wider->parameters()[0]));

  auto dbl = std::make_shared<sgdx::models::MLP>(4, std::vector<int64_t>{8}, 2);
  dbl->to(torch::kDouble);
  SGDX_EXPECT_THROW_MSG(sgdx::load_checkpoint(dir.file("c.pt"), *dbl),
                        "has dtype Float but the model's has Double");

  SGDX_EXPECT_THROW_MSG(sgdx::load_checkpoint(dir.file("missing.pt"), *mlp), "does not exist");
  sgdx::testing::write_bytes(dir.file("junk.pt"), {1, 2, 3, 4}, false);
  SGDX_EXPECT_THROW_MSG(sgdx::load_checkpoint(dir.file("junk.pt"), *mlp),
                        "is not a readable sgdx checkpoint");
  sgdx::optim::RSGD opt(mlp->parameters(), sgdx::optim::RSGDOptions(0.1));
  SGDX_EXPECT_THROW_MSG(sgdx::load_checkpoint(dir.file("c.pt"), *mlp, &opt), "holds no optimizer state");
}

TEST(Checkpoint, LoadThatFailsPartWayChangesNothing) {
  TempDir dir;
  torch::manual_seed(1);
  auto saved = std::make_shared<sgdx::models::MLP>(4, std::vector<int64_t>{8}, 2);
  torch::optim::SGD sgdm(saved->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  sgdx::save_checkpoint(dir.file("c.pt"), *saved, &sgdm,
                        [](torch::serialize::OutputArchive& a) { a.write("n", c10::IValue(int64_t{3})); });

  auto model = std::make_shared<sgdx::models::MLP>(4, std::vector<int64_t>{8}, 2);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  auto x = torch::randn({5, 4});
  opt.zero_grad();
  model->forward(x).sum().backward();
  opt.step();  // a momentum buffer that a failed load must keep
  std::vector<torch::Tensor> before;
  for (const auto& p : model->parameters()) before.push_back(p.detach().clone());
  auto buffer = [&] {
    auto& st = static_cast<torch::optim::SGDParamState&>(
        *opt.state().at(model->parameters()[0].unsafeGetTensorImpl()));
    return st.momentum_buffer().clone();
  };
  const auto momentum = buffer();
  // The model and optimizer parts load; the extra part then fails.
  EXPECT_ANY_THROW(
      sgdx::load_checkpoint(dir.file("c.pt"), *model, &opt, [](torch::serialize::InputArchive& a) {
        c10::IValue v;
        a.read("missing", v);
      }));
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_TRUE(torch::equal(before[i], model->parameters()[i])) << i;
  EXPECT_TRUE(torch::equal(momentum, buffer()));
  // And a load that succeeds does change them (the test above can fail).
  sgdx::load_checkpoint(dir.file("c.pt"), *model, &opt);
  EXPECT_TRUE(torch::equal(saved->parameters()[0], model->parameters()[0]));
  EXPECT_FALSE(torch::equal(before[0], model->parameters()[0]));
}

TEST(Checkpoint, FailedWriteLeavesPreviousFileIntact) {
  TempDir dir;
  auto m = sgdx::models::make_model("mlp", {4}, 2);
  const auto path = dir.file("c.pt");
  sgdx::save_checkpoint(path, *m);
  const auto bytes = sgdx::testing::read_bytes(path);
  EXPECT_ANY_THROW(sgdx::save_checkpoint(path, *m, nullptr, [](torch::serialize::OutputArchive&) {
    throw std::runtime_error("extra state failed");
  }));
  EXPECT_EQ(sgdx::testing::read_bytes(path), bytes);
  EXPECT_ANY_THROW(sgdx::save_checkpoint(dir.file("no/such/dir/c.pt"), *m));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path), {}), 1);
}
