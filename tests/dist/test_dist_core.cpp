// sgdx::dist against references: collectives against sums computed by hand, and
// DataParallel against one process on the combined batch (float64 and float32).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dist/dist_harness.h"
#include "sgdx/dist/communicator.h"
#include "sgdx/dist/data_parallel.h"
#include "test_util.h"

#include <csignal>

namespace {

using sgdx::dist::DataParallel;

TEST(DistSingle, WorldOfOneNeedsNoSetup) {
  auto comm = sgdx::dist::single_process();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);
  std::vector<at::Tensor> t = {at::arange(3, at::kFloat)};
  comm->all_reduce_sum(t);
  EXPECT_TRUE(t[0].equal(at::arange(3, at::kFloat)));
  EXPECT_EQ(sgdx::dist::global_mean(comm.get(), 2.5), 2.5);
  EXPECT_EQ(sgdx::dist::global_sum(nullptr, 2.5), 2.5);
}

TEST(DistSingle, EnvironmentIsCheckedByName) {
  ::setenv("WORLD_SIZE", "two", 1);
  SGDX_EXPECT_THROW_MSG(sgdx::dist::options_from_env(), "WORLD_SIZE='two'");
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "5", 1);
  SGDX_EXPECT_THROW_MSG(sgdx::dist::options_from_env(), "RANK='5'");
  ::setenv("RANK", "1", 1);
  ::setenv("MASTER_PORT", "70000", 1);
  SGDX_EXPECT_THROW_MSG(sgdx::dist::options_from_env(), "MASTER_PORT='70000'");
  ::unsetenv("MASTER_PORT");
  const auto o = sgdx::dist::options_from_env();
  EXPECT_EQ(o.world_size, 2);
  EXPECT_EQ(o.rank, 1);
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
}

/// Collectives against hand-computed values: rank r contributes r + 1.
void check_collectives() {
  auto& comm = sgdx::testing::rank_comm();
  const int r = comm.rank(), w = comm.world_size();
  std::vector<at::Tensor> t = {at::full({5}, r + 1.0, at::kDouble), at::full({2, 3}, float(r), at::kFloat)};
  comm.all_reduce_sum(t);
  EXPECT_TRUE(t[0].equal(at::full({5}, w * (w + 1) / 2.0, at::kDouble)));
  EXPECT_TRUE(t[1].equal(at::full({2, 3}, float(w * (w - 1) / 2), at::kFloat)));
  std::vector<at::Tensor> m = {at::full({4}, double(r), at::kDouble)};
  comm.all_reduce_max(m);
  EXPECT_TRUE(m[0].equal(at::full({4}, double(w - 1), at::kDouble)));
  std::vector<at::Tensor> b = {at::full({3}, double(r) + 7, at::kDouble)};
  comm.broadcast(b, w - 1);
  EXPECT_TRUE(b[0].equal(at::full({3}, double(w - 1) + 7, at::kDouble)));
  at::Tensor g = comm.all_gather(at::full({2}, int64_t{r}, at::kLong));
  ASSERT_EQ(g.sizes(), (at::IntArrayRef{w, 2}));
  for (int k = 0; k < w; ++k) EXPECT_EQ(g[k][0].item<int64_t>(), k);
  EXPECT_EQ(sgdx::dist::global_mean(&comm, r), (w - 1) / 2.0);
  EXPECT_EQ(sgdx::dist::global_any(&comm, r == w - 1), true);
  EXPECT_EQ(sgdx::dist::global_any(&comm, false), false);
  comm.barrier();
  EXPECT_GT(comm.bytes_sent(), 0u);
}

TEST(DistCollectives, TwoRanks) {
  SGDX_AS_RANKS(2);
  check_collectives();
}
TEST(DistCollectives, ThreeRanks) {
  SGDX_AS_RANKS(3);
  check_collectives();
}

/// A two-layer net whose second layer's bias only some ranks use, and a third
/// parameter nobody uses: averaged gradients against one process on the
/// combined batch (each rank computes that reference itself).
template <typename T>
void check_data_parallel(double tol, int64_t bucket_bytes, bool overlap = false) {
  auto& comm = sgdx::testing::rank_comm();
  const int r = comm.rank(), w = comm.world_size();
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  torch::manual_seed(1234 + r);  // different start on every rank: broadcast must fix it
  auto a = torch::randn({8, 5}, dtype).requires_grad_();
  auto bias = torch::randn({5}, dtype).requires_grad_();
  auto unused = torch::randn({3}, dtype).requires_grad_();
  DataParallel dp({a, bias, unused}, sgdx::testing::rank_comm_ptr(), {bucket_bytes, overlap});
  dp.broadcast_parameters();
  torch::manual_seed(99);  // the combined batch, identical on every rank
  const int64_t b = 4;
  auto x = torch::randn({w * b, 8}, dtype);
  auto y = torch::randn({w * b, 5}, dtype);
  auto loss_of = [&](const at::Tensor& xs, const at::Tensor& ys, bool use_bias) {
    auto z = xs.mm(a);
    if (use_bias) z = z + bias;
    return (z.tanh() - ys).pow(2).sum(1).mean();
  };
  // Reference: one process, combined batch; rank k's rows use the bias iff k is even.
  std::vector<at::Tensor> ref_terms;
  for (int k = 0; k < w; ++k) {
    ref_terms.push_back(loss_of(x.narrow(0, k * b, b), y.narrow(0, k * b, b), k % 2 == 0));
  }
  auto ref_loss = at::stack(ref_terms).mean();
  auto ref = torch::autograd::grad({ref_loss}, {a, bias});
  // Data-parallel: own rows, then average.
  if (overlap) dp.prepare_backward();
  loss_of(x.narrow(0, r * b, b), y.narrow(0, r * b, b), r % 2 == 0).backward();
  dp.average_gradients();
  EXPECT_FALSE(unused.grad().defined()) << "no rank touched it";
  ASSERT_TRUE(bias.grad().defined()) << "rank 0 used it";
  const double ea = ((a.grad() - ref[0]).abs().max() / ref[0].abs().max()).template item<double>();
  const double eb = ((bias.grad() - ref[1]).abs().max() / ref[1].abs().max()).template item<double>();
  std::printf("rank %d of %d, %s, bucket %lld B: relative error a %.3g bias %.3g (%lld buckets)\n", r, w,
              c10::toString(dtype), static_cast<long long>(bucket_bytes), ea, eb,
              static_cast<long long>(dp.bucket_count()));
  EXPECT_LE(ea, tol);
  EXPECT_LE(eb, tol);
  // Every rank holds the same parameters and gradients, bit for bit.
  auto all = comm.all_gather(at::cat({a.detach().flatten(), a.grad().flatten(), bias.grad().flatten()}));
  for (int k = 1; k < w; ++k) EXPECT_TRUE(all[k].equal(all[0])) << "rank " << k << " differs from rank 0";
}

TEST(DistDataParallel, TwoRanksFloat64MatchesCombinedBatch) {
  SGDX_AS_RANKS(2);
  check_data_parallel<double>(1e-12, 64);  // 64 B: every tensor in its own bucket
}
TEST(DistDataParallel, ThreeRanksFloat64MatchesCombinedBatch) {
  SGDX_AS_RANKS(3);
  check_data_parallel<double>(1e-12, 1 << 20);
}
TEST(DistDataParallel, TwoRanksFloat32MatchesCombinedBatch) {
  SGDX_AS_RANKS(2);
  check_data_parallel<float>(1e-6, 1 << 20);
}
TEST(DistDataParallel, ThreeRanksFloat32MatchesCombinedBatch) {
  SGDX_AS_RANKS(3);
  check_data_parallel<float>(1e-6, 100);
}
TEST(DistDataParallel, OverlappedWithBackwardTwoRanksFloat64) {
  SGDX_AS_RANKS(2);
  check_data_parallel<double>(1e-12, 64, /*overlap=*/true);
}
TEST(DistDataParallel, OverlappedWithBackwardThreeRanksFloat32) {
  SGDX_AS_RANKS(3);
  check_data_parallel<float>(1e-6, 1 << 20, /*overlap=*/true);
}

/// Half-precision gradients are divided before the sum: two finite 40000s average
/// to 40000, where summing first would overflow float16 (max 65504) to inf.
TEST(DistDataParallel, HalfPrecisionAveragesWithoutOverflow) {
  SGDX_AS_RANKS(2);
  auto w = torch::zeros({4}, torch::kHalf).requires_grad_();
  DataParallel dp({w}, sgdx::testing::rank_comm_ptr());
  w.mutable_grad() = torch::full({4}, 40000.0, torch::kHalf);
  dp.average_gradients();
  EXPECT_TRUE(w.grad().equal(torch::full({4}, 40000.0, torch::kHalf))) << w.grad();
}

/// Overlap refuses a gradient that would be added to an old one (the hook sees
/// only this backward's part).
TEST(DistDataParallel, OverlapRefusesGradientsThatWereNotCleared) {
  SGDX_AS_RANKS(2);
  auto w = torch::ones({3}, torch::kDouble).requires_grad_();
  DataParallel dp({w}, sgdx::testing::rank_comm_ptr(), {1 << 20, true});
  dp.prepare_backward();
  (w * 2).sum().backward();
  dp.average_gradients();
  EXPECT_TRUE(w.grad().equal(torch::full({3}, 2.0, torch::kDouble)));
  dp.prepare_backward();
  SGDX_EXPECT_THROW_MSG((w * 2).sum().backward(), "already holds a gradient");
}

// ---- faults: a clear error naming the rank, within the timeout, never a hang ----

/// Expects `stmt` to throw DistError containing every needle, within `limit`.
template <typename F>
void expect_dist_error(F&& stmt, const std::vector<std::string>& needles, std::chrono::seconds limit) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    stmt();
    ADD_FAILURE() << "expected sgdx::dist::DistError";
  } catch (const sgdx::dist::DistError& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    std::printf("error after %.1f s: %s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), e.what());
  }
  EXPECT_LE(std::chrono::steady_clock::now() - t0, limit);
}

sgdx::dist::GroupOptions lonely(int rank, int world) {
  sgdx::dist::GroupOptions o;
  o.master_port = sgdx::testing::free_port();
  o.rank = rank;
  o.world_size = world;
  o.timeout = std::chrono::seconds(3);
  return o;
}

TEST(DistFaults, ARankThatNeverArrivesIsNamed) {
  const auto o = lonely(0, 3);
  expect_dist_error([&] { sgdx::dist::connect(o); }, {"rank(s) 1, 2 of 3 never arrived"},
                    std::chrono::seconds(20));
}

TEST(DistFaults, AnUnreachableMasterIsNamed) {
  const auto o = lonely(1, 2);  // nothing listens on that port
  expect_dist_error([&] { sgdx::dist::connect(o); }, {"rank 1 cannot reach the master", "127.0.0.1:"},
                    std::chrono::seconds(30));
}

TEST(DistFaults, NcclIsRefusedUntilVerified) {
  auto o = lonely(0, 2);
  o.backend = sgdx::dist::Backend::Nccl;
  SGDX_EXPECT_THROW_MSG(sgdx::dist::connect(o), "NCCL backend has not been verified");
}

/// Rank 1 of a 2-rank run says WORLD_SIZE=3: both ranks refuse, naming the mismatch.
TEST(DistFaults, AWrongWorldSizeIsRefusedOnEveryRank) {
  if (sgdx::testing::is_rank_process()) {
    expect_dist_error([] { sgdx::testing::rank_comm(); }, {"WORLD_SIZE"}, std::chrono::seconds(40));
    return;
  }
  const auto runs = sgdx::testing::run_ranks(2, sgdx::testing::current_test_name(), std::chrono::seconds(90),
                                             {{}, {"WORLD_SIZE=3"}});
  for (size_t r = 0; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].exit_code, 0) << runs[r].output;
    EXPECT_NE(runs[r].output.find("another run"), std::string::npos) << runs[r].output;
  }
}

/// Rank 1 of a 2-rank run says another run id: refused by name.
TEST(DistFaults, ARankFromAnotherRunIsRefused) {
  if (sgdx::testing::is_rank_process()) {
    expect_dist_error([] { sgdx::testing::rank_comm(); }, {"run id"}, std::chrono::seconds(40));
    return;
  }
  const auto runs = sgdx::testing::run_ranks(2, sgdx::testing::current_test_name(), std::chrono::seconds(90),
                                             {{}, {"SGDX_RUN_ID=someone-else"}});
  for (size_t r = 0; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].exit_code, 0) << runs[r].output;
    EXPECT_NE(runs[r].output.find("someone-else"), std::string::npos) << runs[r].output;
  }
}

/// The last rank dies after one all-reduce; the others' next collective throws
/// naming it, well within 60 s.
void die_or_name_the_dead(int world) {
  auto& comm = sgdx::testing::rank_comm();
  std::vector<at::Tensor> t = {at::ones({1000})};
  comm.all_reduce_sum(t);
  if (comm.rank() == world - 1) ::raise(SIGKILL);
  expect_dist_error(
      [&] {
        for (int i = 0; i < 100; ++i) comm.all_reduce_sum(t);  // the dead rank never answers
      },
      {"rank(s) " + std::to_string(world - 1) + " stopped"}, std::chrono::seconds(60));
}

TEST(DistFaults, ADeadRankIsNamedWithinAMinute) {
  if (sgdx::testing::is_rank_process()) {
    die_or_name_the_dead(3);
    return;
  }
  const auto runs =
      sgdx::testing::run_ranks(3, sgdx::testing::current_test_name(), std::chrono::seconds(120));
  EXPECT_EQ(runs[2].exit_code, 128 + SIGKILL) << runs[2].output;
  for (int r = 0; r < 2; ++r) EXPECT_EQ(runs[r].exit_code, 0) << "rank " << r << ":\n" << runs[r].output;
}

/// Rank 0 (it hosts the store) dies: rank 1 names it.
TEST(DistFaults, ADeadMasterIsNamed) {
  if (sgdx::testing::is_rank_process()) {
    auto& comm = sgdx::testing::rank_comm();
    std::vector<at::Tensor> t = {at::ones({10})};
    comm.all_reduce_sum(t);
    if (comm.rank() == 0) ::raise(SIGKILL);
    expect_dist_error([&] { comm.all_reduce_sum(t); }, {"rank 0 stopped"}, std::chrono::seconds(60));
    return;
  }
  const auto runs =
      sgdx::testing::run_ranks(2, sgdx::testing::current_test_name(), std::chrono::seconds(120));
  EXPECT_EQ(runs[0].exit_code, 128 + SIGKILL) << runs[0].output;
  EXPECT_EQ(runs[1].exit_code, 0) << runs[1].output;
}

}  // namespace
