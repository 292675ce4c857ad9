// Data-parallel optimizers (issue #17) against one process on the combined batch:
// every rank runs its share through the optimizer with a communicator and, beside
// it, the same optimizer without one on the whole global batch (the reference);
// parameters after K steps must agree within 1e-12 (float64) / 1e-6 (float32)
// relative, and every rank's optimizer state must be bit-identical. Plus the
// global agreements (the loss trend, found_inf) and checkpoints across world sizes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dist/dist_harness.h"
#include "optim/optimizer_bytes.h"
#include "sgdx/amp/grad_scaler.h"
#include "sgdx/dist/communicator.h"
#include "sgdx/dist/data_parallel.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/dasvrda.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/katyusha.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"
#include "test_util.h"

namespace {

using sgdx::dist::DataParallel;
using sgdx::testing::optimizer_bytes;
using sgdx::testing::rank_comm;
using sgdx::testing::rank_comm_ptr;

/// max |got - ref| / max |ref| over all tensors (float64).
double rel_err(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& ref) {
  double num = 0, den = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    num = std::max(
        num, (got[k].detach().to(at::kDouble) - ref[k].detach().to(at::kDouble)).abs().max().item<double>());
    den = std::max(den, ref[k].detach().to(at::kDouble).abs().max().item<double>());
  }
  return num / den;
}

/// FNV-1a of the bytes: equal on every rank iff (almost surely) the bytes are.
int64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return static_cast<int64_t>(h);
}

/// The archive's entries, recursively, with parameter keys (LibTorch writes TensorImpl
/// addresses, which differ between processes) replaced by their position, sorted.
void canonical_entries(torch::serialize::InputArchive& archive, const std::string& prefix,
                       const std::map<std::string, std::string>& renamed,
                       std::vector<std::pair<std::string, std::string>>& out) {
  for (const auto& key : archive.keys()) {
    const auto it = renamed.find(key);
    const std::string name = prefix + "/" + (it != renamed.end() ? it->second : key);
    torch::serialize::InputArchive sub;
    at::Tensor t;
    c10::IValue v;
    if (archive.try_read(key, sub)) {
      canonical_entries(sub, name, renamed, out);
    } else if (archive.try_read(key, t, /*is_buffer=*/true) || archive.try_read(key, t)) {
      const auto c = t.contiguous().cpu();
      out.emplace_back(name, std::string(c10::toString(c.scalar_type())) + c10::str(c.sizes()) +
                                 std::string(static_cast<const char*>(c.const_data_ptr()), c.nbytes()));
    } else if (archive.try_read(key, v)) {
      auto r = v.isString() ? renamed.find(v.toStringRef()) : renamed.end();
      out.emplace_back(name, r != renamed.end() ? r->second : c10::str(v));
    }
  }
}

/// The optimizer's saved state, independent of where its parameters live in memory:
/// equal on two processes iff the states are bit-identical.
std::string canonical_state(const torch::optim::Optimizer& opt) {
  std::map<std::string, std::string> renamed;
  int64_t k = 0;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params())
      renamed[std::to_string(reinterpret_cast<size_t>(p.unsafeGetTensorImpl()))] =
          "param" + std::to_string(k++);
  std::istringstream in(optimizer_bytes(opt));
  torch::serialize::InputArchive archive;
  archive.load_from(in);
  std::vector<std::pair<std::string, std::string>> entries;
  canonical_entries(archive, "", renamed, entries);
  std::sort(entries.begin(), entries.end());
  std::string out;
  for (const auto& [name, value] : entries)
    out += name + "=" + std::to_string(value.size()) + ":" + value + ";";
  return out;
}

/// Every rank holds the same optimizer state and the same tensors, bit for bit.
void expect_identical_on_every_rank(const torch::optim::Optimizer& opt,
                                    const std::vector<at::Tensor>& tensors, const std::string& what) {
  auto& comm = rank_comm();
  std::vector<at::Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.detach().flatten().to(at::kDouble));
  const auto state = canonical_state(opt);
  ASSERT_GT(state.size(), 100u) << what << ": the state is empty";
  const auto h = comm.all_gather(at::full({1}, fnv1a(state), at::kLong));
  const auto v = comm.all_gather(at::cat(flat));
  for (int k = 1; k < comm.world_size(); ++k) {
    EXPECT_EQ(h[k].item<int64_t>(), h[0].item<int64_t>())
        << what << ": rank " << k << "'s optimizer state differs";
    EXPECT_TRUE(v[k].equal(v[0])) << what << ": rank " << k << "'s parameters differ";
  }
}

void report(const std::string& what, double err, double tol) {
  std::printf("rank %d of %d: %-40s max relative error %.3g (tolerance %.0e)\n", rank_comm().rank(),
              rank_comm().world_size(), what.c_str(), err, tol);
  EXPECT_LE(err, tol) << what;
}

template <typename T>
double tolerance() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-6;
}

// ---- models trained on .grad: tanh regression, per-sample losses ----

template <typename T>
struct Net {
  at::Tensor a, b;  // [d, o], [o]
  explicit Net(uint64_t seed) {
    torch::manual_seed(seed);
    const auto dt = c10::CppTypeToScalarType<T>::value;
    a = (0.5 * torch::randn({6, 3}, dt)).requires_grad_();
    b = (0.1 * torch::randn({3}, dt)).requires_grad_();
  }
  std::vector<at::Tensor> params() const { return {a, b}; }
  at::Tensor per_sample(const at::Tensor& x, const at::Tensor& y) const {
    return ((x.mm(a) + b).tanh() - y).pow(2).sum(1);
  }
};

/// `steps` global batches of `rows` rows (heterogeneous: rank k's rows are shifted by k).
template <typename T>
struct Batches {
  at::Tensor x, y;  // [steps, rows, 6], [steps, rows, 3]
  Batches(int64_t steps, const std::vector<int64_t>& per_rank) {
    torch::manual_seed(4321);
    const auto dt = c10::CppTypeToScalarType<T>::value;
    int64_t rows = 0;
    for (auto r : per_rank) rows += r;
    x = torch::randn({steps, rows, 6}, dt);
    y = torch::randn({steps, rows, 3}, dt);
    int64_t o = 0;
    for (size_t k = 0; k < per_rank.size(); ++k) {
      x.narrow(1, o, per_rank[k]).add_(0.3 * double(k));
      o += per_rank[k];
    }
    offsets.push_back(0);
    for (auto r : per_rank) offsets.push_back(offsets.back() + r);
  }
  std::vector<int64_t> offsets;
  at::Tensor mine(const at::Tensor& t, int64_t s, int r) const {
    return t[s].narrow(0, offsets[r], offsets[r + 1] - offsets[r]);
  }
};

/// Runs K steps of `make(params)` with a DataParallel share per rank and, beside it, one
/// process on the combined batch; `step(opt, net, x, y, distributed)` takes one step.
template <typename T, typename Opt>
void check_grad_optimizer(
    const std::string& what, const std::function<std::unique_ptr<Opt>(Net<T>&)>& make,
    const std::function<void(Opt&, Net<T>&, DataParallel*, const at::Tensor&, const at::Tensor&)>& step,
    int64_t K = 10) {
  auto& comm = rank_comm();
  const int r = comm.rank(), w = comm.world_size();
  Net<T> net(7 + r), ref(7);  // different starts: broadcast must fix them
  DataParallel dp(net.params(), rank_comm_ptr());
  dp.broadcast_parameters();
  auto opt = make(net);
  auto ref_opt = make(ref);
  if (auto* d = dynamic_cast<sgdx::optim::DistributedStep*>(opt.get())) d->set_communicator(rank_comm_ptr());
  const Batches<T> data(K, std::vector<int64_t>(w, 4));
  for (int64_t s = 0; s < K; ++s) {
    step(*opt, net, &dp, data.mine(data.x, s, r), data.mine(data.y, s, r));
    step(*ref_opt, ref, nullptr, data.x[s], data.y[s]);
  }
  report(what, rel_err(net.params(), ref.params()), tolerance<T>());
  expect_identical_on_every_rank(*opt, net.params(), what);
}

/// The user's loop: backward on the own rows, average, step.
template <typename T, typename Opt>
void backward_average_step(Opt& opt, Net<T>& net, DataParallel* dp, const at::Tensor& x,
                           const at::Tensor& y) {
  opt.zero_grad();
  net.per_sample(x, y).mean().backward();
  if (dp != nullptr) dp->average_gradients();
  opt.step();
}

template <typename T>
void check_rsgd() {
  using sgdx::optim::RSGD;
  check_grad_optimizer<T, RSGD>(
      std::string("RSGD ") + c10::toString(c10::CppTypeToScalarType<T>::value),
      [](Net<T>& n) { return std::make_unique<RSGD>(n.params(), sgdx::optim::RSGDOptions(0.05).seed(3)); },
      backward_average_step<T, RSGD>);
}

template <typename T>
void check_torch_optimizers() {
  using torch::optim::Adam;
  using torch::optim::SGD;
  const std::string dt = c10::toString(c10::CppTypeToScalarType<T>::value);
  check_grad_optimizer<T, SGD>(
      "torch SGD " + dt,
      [](Net<T>& n) {
        return std::make_unique<SGD>(n.params(), torch::optim::SGDOptions(0.1).momentum(0.9));
      },
      backward_average_step<T, SGD>);
  check_grad_optimizer<T, Adam>(
      "torch Adam " + dt,
      [](Net<T>& n) { return std::make_unique<Adam>(n.params(), torch::optim::AdamOptions(0.01)); },
      backward_average_step<T, Adam>);
}

sgdx::optim::GradQueueSGDMOptions gq_options() {
  // A short window that moves with the loss trend within the run.
  return sgdx::optim::GradQueueSGDMOptions(0.1).q_min(3).q_init(4).q_max(6).loss_beta(0.5);
}

/// The closure's loss drives the window: the distributed loss is each rank's own.
template <typename T>
void gq_closure_step(sgdx::optim::GradQueueSGDM& opt, Net<T>& net, DataParallel* dp, const at::Tensor& x,
                     const at::Tensor& y) {
  opt.step([&] {
    opt.zero_grad();
    auto l = net.per_sample(x, y).mean();
    l.backward();
    if (dp != nullptr) dp->average_gradients();
    return l;
  });
}

template <typename T>
void check_gradqueue_plain() {
  using sgdx::optim::GradQueueSGDM;
  for (auto g : {sgdx::optim::GradQueueGranularity::element, sgdx::optim::GradQueueGranularity::tensor}) {
    std::vector<int64_t> windows, ref_windows;
    check_grad_optimizer<T, GradQueueSGDM>(
        std::string("GradQueue plain ") +
            (g == sgdx::optim::GradQueueGranularity::element ? "element " : "tensor ") +
            c10::toString(c10::CppTypeToScalarType<T>::value),
        [g](Net<T>& n) { return std::make_unique<GradQueueSGDM>(n.params(), gq_options().granularity(g)); },
        [&](GradQueueSGDM& opt, Net<T>& net, DataParallel* dp, const at::Tensor& x, const at::Tensor& y) {
          gq_closure_step<T>(opt, net, dp, x, y);
          (dp ? windows : ref_windows).push_back(opt.last_step_info().window);
        },
        14);
    EXPECT_EQ(windows, ref_windows) << "the window length follows the global loss";
    EXPECT_NE(std::set<int64_t>(ref_windows.begin(), ref_windows.end()).size(), 1u)
        << "the window never moved";
  }
}

TEST(DistRSGD, TwoRanks) {
  SGDX_AS_RANKS(2);
  check_rsgd<double>();
  check_rsgd<float>();
}
TEST(DistRSGD, ThreeRanks) {
  SGDX_AS_RANKS(3);
  check_rsgd<double>();
  check_rsgd<float>();
}
TEST(DistTorchOptimizers, TwoRanks) {
  SGDX_AS_RANKS(2);
  check_torch_optimizers<double>();
  check_torch_optimizers<float>();
}
TEST(DistTorchOptimizers, ThreeRanks) {
  SGDX_AS_RANKS(3);
  check_torch_optimizers<double>();
  check_torch_optimizers<float>();
}
TEST(DistGradQueuePlain, TwoRanks) {
  SGDX_AS_RANKS(2);
  check_gradqueue_plain<double>();
  check_gradqueue_plain<float>();
}
TEST(DistGradQueuePlain, ThreeRanks) {
  SGDX_AS_RANKS(3);
  check_gradqueue_plain<double>();
  check_gradqueue_plain<float>();
}

// ---- GradQueue's clustered step: the global batch clustered on every rank ----

template <typename T>
void check_gradqueue_clustered(const std::vector<int64_t>& per_rank, sgdx::optim::GradQueueScope scope) {
  using sgdx::optim::GradQueueSGDM;
  auto& comm = rank_comm();
  const int r = comm.rank();
  Net<T> net(7), ref(7);
  const auto o = gq_options().clusters(3).kmeans_iters(5).scope(scope).seed(11);
  GradQueueSGDM opt(net.params(), o), ref_opt(ref.params(), o);
  opt.set_communicator(rank_comm_ptr());
  const int64_t K = 12;
  const Batches<T> data(K, per_rank);
  std::vector<at::Tensor> grads, ref_grads;
  double loss_err = 0;
  for (int64_t s = 0; s < K; ++s) {
    const auto x = data.mine(data.x, s, r), y = data.mine(data.y, s, r);
    const auto l = opt.clustered_step(net.per_sample(x, y), x);
    const auto lr = ref_opt.clustered_step(ref.per_sample(data.x[s], data.y[s]), data.x[s]);
    loss_err = std::max(loss_err, rel_err({l}, {lr}));
    EXPECT_EQ(opt.last_step_info().cluster_sizes, ref_opt.last_step_info().cluster_sizes);
    EXPECT_EQ(opt.last_step_info().window, ref_opt.last_step_info().window);
    if (s == 0) {  // the first step's gradient: before the parameters drift apart at all
      grads = {net.a.grad().clone(), net.b.grad().clone()};
      ref_grads = {ref.a.grad().clone(), ref.b.grad().clone()};
    }
  }
  std::string what = std::string("GradQueue clustered ") +
                     (scope == sgdx::optim::GradQueueScope::global ? "global " : "per-tensor ") +
                     c10::toString(c10::CppTypeToScalarType<T>::value) +
                     (per_rank[0] == per_rank.back() ? "" : " unequal");
  report(what + " loss", loss_err, tolerance<T>());
  report(what + " .grad", rel_err(grads, ref_grads), tolerance<T>());
  report(what, rel_err(net.params(), ref.params()), tolerance<T>());
  expect_identical_on_every_rank(opt, {net.a, net.b, net.a.grad(), net.b.grad()}, what);
}

void check_gradqueue_clustered_all() {
  const int w = rank_comm().world_size();
  for (auto scope : {sgdx::optim::GradQueueScope::per_tensor, sgdx::optim::GradQueueScope::global}) {
    check_gradqueue_clustered<double>(std::vector<int64_t>(w, 5), scope);
    check_gradqueue_clustered<float>(std::vector<int64_t>(w, 5), scope);
  }
  std::vector<int64_t> unequal;  // 3, 4, 5, ... rows
  for (int k = 0; k < w; ++k) unequal.push_back(3 + k);
  check_gradqueue_clustered<double>(unequal, sgdx::optim::GradQueueScope::per_tensor);
}

/// The fast path (per-sample gradients captured in one backward) on each rank's rows
/// against one process's per-cluster autograd on the combined batch.
struct Mlp : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 3));
  }
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& x) {
    auto f = torch::tanh(fc1(x));
    return {fc2(f), f};
  }
};

void check_gradqueue_clustered_captured() {
  using sgdx::optim::GradQueueSGDM;
  auto& comm = rank_comm();
  const int r = comm.rank(), w = comm.world_size();
  auto make = [] {
    torch::manual_seed(7);
    auto m = std::make_shared<Mlp>();
    m->to(at::kDouble);
    return m;
  };
  auto net = make(), ref = make();
  sgdx::ops::PerSampleGradients capture(*net);
  const auto o = gq_options().clusters(3).kmeans_iters(5).seed(11);
  GradQueueSGDM opt(net->parameters(), o), ref_opt(ref->parameters(), o);
  opt.set_communicator(rank_comm_ptr());
  const int64_t K = 10;
  const Batches<double> data(K, std::vector<int64_t>(w, 5));
  for (int64_t s = 0; s < K; ++s) {
    const auto [out, f] = net->forward(data.mine(data.x, s, r));
    opt.clustered_step((out - data.mine(data.y, s, r)).pow(2).sum(1), f.detach(), &capture);
    const auto [ref_out, ref_f] = ref->forward(data.x[s]);
    ref_opt.clustered_step((ref_out - data.y[s]).pow(2).sum(1), ref_f.detach());
    EXPECT_EQ(opt.last_step_info().cluster_sizes, ref_opt.last_step_info().cluster_sizes);
  }
  report("GradQueue clustered captured Double", rel_err(net->parameters(), ref->parameters()), 1e-12);
  expect_identical_on_every_rank(opt, net->parameters(), "GradQueue clustered captured");
}

TEST(DistGradQueueClustered, CapturedTwoRanks) {
  SGDX_AS_RANKS(2);
  check_gradqueue_clustered_captured();
}
TEST(DistGradQueueClustered, CapturedThreeRanks) {
  SGDX_AS_RANKS(3);
  check_gradqueue_clustered_captured();
}

TEST(DistGradQueueClustered, TwoRanks) {
  SGDX_AS_RANKS(2);
  check_gradqueue_clustered_all();
}
TEST(DistGradQueueClustered, ThreeRanks) {
  SGDX_AS_RANKS(3);
  check_gradqueue_clustered_all();
}

// ---- the variance-reduced methods: closures on shards ----

/// Logistic regression (l1/l2 in the optimizers' prox) on rows split over ranks.
template <typename T>
struct Shards {
  at::Tensor a, y;               // all rows
  std::vector<int64_t> offsets;  // rank k: rows offsets[k] .. offsets[k + 1] - 1
  explicit Shards(const std::vector<int64_t>& per_rank) {
    torch::manual_seed(2024);
    int64_t n = 0;
    for (auto p : per_rank) n += p;
    const auto dt = c10::CppTypeToScalarType<T>::value;
    a = torch::randn({n, 5}, at::kDouble);
    a = (a / a.norm(2, 1, true)).to(dt);
    y = torch::sign(a.to(at::kDouble).mv(torch::randn({5}, at::kDouble)) +
                    0.3 * torch::randn({n}, at::kDouble))
            .to(dt);
    offsets.push_back(0);
    for (auto p : per_rank) offsets.push_back(offsets.back() + p);
  }
  int64_t n() const { return a.size(0); }
  at::Tensor loss(const at::Tensor& w, const at::Tensor& idx) const {
    return torch::nn::functional::softplus(-y.index_select(0, idx) * a.index_select(0, idx).mv(w)).mean();
  }
  at::Tensor rows_of(int r) const { return torch::arange(offsets[r], offsets[r + 1]); }
};

/// K steps of a VR optimizer on this rank's shard (full gradient) and share of each global
/// minibatch, against one process on all rows and the whole minibatch. `weighted`: the full
/// gradient from set_local_components (shards may differ in size).
template <typename T, typename Opt>
void check_vr(const std::string& what,
              const std::function<std::unique_ptr<Opt>(at::Tensor&, int64_t n, int64_t b)>& make,
              const std::vector<int64_t>& per_rank, bool weighted, int64_t K = 24) {
  auto& comm = rank_comm();
  const int r = comm.rank(), w = comm.world_size();
  const Shards<T> data(per_rank);
  const int64_t share = 2, b = share * w;  // each rank's share of the global minibatch
  const auto dt = c10::CppTypeToScalarType<T>::value;
  auto x = torch::zeros({5}, dt).requires_grad_(), xr = torch::zeros({5}, dt).requires_grad_();
  auto opt = make(x, data.n(), b);
  auto ref = make(xr, data.n(), b);
  opt->set_communicator(rank_comm_ptr());
  if (weighted) opt->set_local_components(per_rank[r]);
  const auto mine = data.rows_of(r), all = torch::arange(data.n());
  opt->set_full_gradient_closure([&] {
    auto l = data.loss(x, mine);
    l.backward();
    return l;
  });
  ref->set_full_gradient_closure([&] {
    auto l = data.loss(xr, all);
    l.backward();
    return l;
  });
  std::mt19937_64 rng(5);  // the same global minibatches on every rank
  std::uniform_int_distribution<int64_t> pick(0, data.n() - 1);
  double loss_err = 0;
  for (int64_t s = 0; s < K; ++s) {
    std::vector<int64_t> idx(b);
    for (auto& i : idx) i = pick(rng);
    const auto batch = torch::tensor(idx, at::kLong), my = batch.narrow(0, r * share, share);
    const auto l = opt->step([&] {
      auto l = data.loss(x, my);
      l.backward();
      return l;
    });
    const auto lr = ref->step([&] {
      auto l = data.loss(xr, batch);
      l.backward();
      return l;
    });
    loss_err = std::max(loss_err, rel_err({l}, {lr}));
  }
  report(what + " loss", loss_err, tolerance<T>());
  report(what, rel_err({x}, {xr}), tolerance<T>());
  EXPECT_EQ(opt->gradient_evaluations(), ref->gradient_evaluations());
  if constexpr (std::is_same_v<Opt, sgdx::optim::DASVRDA>) {
    if (what.find("none") == std::string::npos)
      EXPECT_GT(ref->restarts(), 0) << what << ": no restart to agree on";
    EXPECT_EQ(opt->restarts(), ref->restarts()) << what;
    std::printf("%s: %lld restarts\n", what.c_str(), static_cast<long long>(ref->restarts()));
  }
  expect_identical_on_every_rank(*opt, {x}, what);
}

template <typename T>
void check_vr_all() {
  using namespace sgdx::optim;
  const int w = rank_comm().world_size();
  const std::vector<int64_t> equal(w, 8);
  const std::string dt = c10::toString(c10::CppTypeToScalarType<T>::value);
  for (auto rule : {SnapshotRule::last, SnapshotRule::random}) {
    check_vr<T, SVRG>(
        std::string("SVRG ") + (rule == SnapshotRule::last ? "last " : "random ") + dt,
        [rule](at::Tensor& x, int64_t n, int64_t b) {
          return std::make_unique<SVRG>(
              std::vector<at::Tensor>{x},
              SVRGOptions(0.5).n(n).b(b).m(5).l1(1e-3).l2(1e-2).snapshot(rule).seed(9));
        },
        equal, false);
  }
  check_vr<T, Katyusha>(
      "Katyusha " + dt,
      [](at::Tensor& x, int64_t n, int64_t b) {
        return std::make_unique<Katyusha>(std::vector<at::Tensor>{x},
                                          KatyushaOptions(0.25).n(n).b(b).m(5).l1(1e-3).l2(1e-2));
      },
      equal, false);
  for (auto rule : {Restart::none, Restart::periodic, Restart::adaptive}) {
    check_vr<T, DASVRDA>(
        "DASVRDA " +
            std::string(rule == Restart::none       ? "none "
                        : rule == Restart::periodic ? "periodic "
                                                    : "adaptive ") +
            dt,
        [rule](at::Tensor& x, int64_t n, int64_t b) {
          return std::make_unique<DASVRDA>(
              std::vector<at::Tensor>{x},
              DASVRDAOptions(0.25).n(n).b(b).m(2).lr(4.0).l1(1e-3).l2(1e-2).restart(rule).restart_period(2));
        },
        equal, false, 40);
  }
}

TEST(DistVR, TwoRanks) {
  SGDX_AS_RANKS(2);
  check_vr_all<double>();
  check_vr_all<float>();
}
TEST(DistVR, ThreeRanks) {
  SGDX_AS_RANKS(3);
  check_vr_all<double>();
  check_vr_all<float>();
}

/// Unequal shards: the full gradient weighted by each rank's component count.
TEST(DistVR, UnequalShardsWeightTheFullGradient) {
  SGDX_AS_RANKS(3);
  using namespace sgdx::optim;
  check_vr<double, SVRG>(
      "SVRG weighted shards 5/8/11 float64",
      [](at::Tensor& x, int64_t n, int64_t b) {
        return std::make_unique<SVRG>(std::vector<at::Tensor>{x}, SVRGOptions(0.5).n(n).b(b).m(5).l2(1e-2));
      },
      {5, 8, 11}, true);
}

// ---- a world of one: a communicator changes nothing, bit for bit ----

TEST(DistSingle, WorldOfOneIsBitIdenticalToNoCommunicator) {
  using namespace sgdx::optim;
  const Batches<float> data(4, {6});
  Net<float> n1(7), n2(7);
  GradQueueSGDM a(n1.params(), gq_options().clusters(2)), b(n2.params(), gq_options().clusters(2));
  b.set_communicator(sgdx::dist::single_process());
  for (int64_t s = 0; s < 4; ++s) {
    a.clustered_step(n1.per_sample(data.x[s], data.y[s]), data.x[s]);
    b.clustered_step(n2.per_sample(data.x[s], data.y[s]), data.x[s]);
    gq_closure_step<float>(a, n1, nullptr, data.x[s], data.y[s]);
    gq_closure_step<float>(b, n2, nullptr, data.x[s], data.y[s]);
  }
  EXPECT_EQ(canonical_state(a), canonical_state(b));
  EXPECT_TRUE(n1.a.equal(n2.a));
}

// ---- the global agreements ----

/// One rank's gradient overflows: the scaler skips the step on every rank and backs off alike.
TEST(DistAgreement, FoundInfOnOneRankSkipsEveryRank) {
  SGDX_AS_RANKS(2);
  using sgdx::optim::GradQueueSGDM;
  auto& comm = rank_comm();
  Net<float> net(7);
  DataParallel dp(net.params(), rank_comm_ptr());
  GradQueueSGDM opt(net.params(), gq_options());
  opt.set_communicator(rank_comm_ptr());
  sgdx::amp::GradScaler scaler(sgdx::amp::GradScalerOptions().init_scale(1024));
  scaler.set_communicator(rank_comm_ptr());
  const Batches<float> data(3, {4, 4});
  for (int64_t s = 0; s < 3; ++s) {
    opt.zero_grad();
    scaler.scale(net.per_sample(data.mine(data.x, s, comm.rank()), data.mine(data.y, s, comm.rank())).mean())
        .backward();
    dp.average_gradients();
    const auto before = net.a.detach().clone();
    const auto state = canonical_state(opt);
    if (s == 1 && comm.rank() == 0) net.a.mutable_grad()[0][0] = std::numeric_limits<float>::infinity();
    scaler.step(opt);
    scaler.update();
    if (s == 1) {
      EXPECT_TRUE(net.a.detach().equal(before))
          << "rank " << comm.rank() << " stepped on an overflow of rank 0";
      EXPECT_EQ(canonical_state(opt), state);
      EXPECT_EQ(scaler.get_scale(), 512.0);
    } else {
      EXPECT_FALSE(net.a.detach().equal(before));
    }
  }
  expect_identical_on_every_rank(opt, net.params(), "GradQueue under GradScaler");
}

/// A VR closure overflows on one rank only: every rank restores its step.
TEST(DistAgreement, ClosureOverflowOnOneRankRestoresEveryRank) {
  SGDX_AS_RANKS(2);
  using namespace sgdx::optim;
  auto& comm = rank_comm();
  const Shards<float> data({8, 8});
  auto x = torch::zeros({5}, at::kFloat).requires_grad_();
  SVRG opt(std::vector<at::Tensor>{x}, SVRGOptions(0.5).n(16).b(4).m(3));
  opt.set_communicator(rank_comm_ptr());
  sgdx::amp::GradScaler scaler(sgdx::amp::GradScalerOptions().init_scale(256));
  scaler.set_communicator(rank_comm_ptr());
  const auto mine = data.rows_of(comm.rank());
  opt.set_full_gradient_closure([&] {
    auto l = data.loss(x, mine);
    scaler.scale(l).backward();
    return l;
  });
  scaler.scale(torch::zeros({}));  // S exists before the first closure runs
  bool overflow = false;
  for (int s = 0; s < 4; ++s) {
    overflow = s == 2;
    const auto before = x.detach().clone();
    const auto state = canonical_state(opt);
    const auto my = torch::arange(4 * s + 2 * comm.rank(), 4 * s + 2 * comm.rank() + 2) % 16;
    scaler.step(opt, [&] {
      auto l = data.loss(x, my);
      scaler.scale(l).backward();
      if (overflow && comm.rank() == 1) x.mutable_grad()[0] = std::numeric_limits<float>::infinity();
      return l;
    });
    scaler.update();
    if (overflow) {
      EXPECT_TRUE(x.detach().equal(before)) << "rank " << comm.rank();
      EXPECT_EQ(canonical_state(opt), state);
      EXPECT_EQ(scaler.get_scale(), 128.0);
    }
  }
  EXPECT_TRUE(x.detach().isfinite().all().item<bool>());
  expect_identical_on_every_rank(opt, {x}, "SVRG under GradScaler");
}

/// The loss that moves GradQueue's window comes from every rank or from none.
TEST(DistAgreement, LossOnSomeRanksOnlyIsRefused) {
  SGDX_AS_RANKS(2);
  Net<double> net(7);
  sgdx::optim::GradQueueSGDM opt(net.params(), gq_options());
  opt.set_communicator(rank_comm_ptr());
  net.per_sample(torch::ones({2, 6}, at::kDouble), torch::zeros({2, 3}, at::kDouble)).mean().backward();
  if (rank_comm().rank() == 0) opt.observe_loss(1.0);
  SGDX_EXPECT_THROW_MSG(opt.step(), "1 of 2 ranks observed a loss for this step");
}

// ---- checkpoints: rank 0 writes, every rank loads, and a world of one resumes alike ----

std::string shared_path(const std::string& name) {
  const char* port = std::getenv("MASTER_PORT");
  return (std::filesystem::temp_directory_path() /
          ("sgdx-dist-optim-" + std::string(port ? port : "0") + "-" + name))
      .string();
}

/// K1 distributed steps, rank 0 saves; then (a) every rank loads into a fresh distributed
/// optimizer and (b) a single process loads it, and both continue K2 steps: each must
/// match the uninterrupted one-process run.
TEST(DistCheckpoint, RankZeroWritesEveryRankAndAWorldOfOneResume) {
  SGDX_AS_RANKS(2);
  using sgdx::optim::GradQueueSGDM;
  auto& comm = rank_comm();
  const int r = comm.rank();
  const int64_t K1 = 6, K2 = 6;
  const Batches<double> data(K1 + K2, {4, 4});
  Net<double> net(7), ref(7), solo(7);
  DataParallel dp(net.params(), rank_comm_ptr());
  auto opt = std::make_unique<GradQueueSGDM>(net.params(), gq_options());
  opt->set_communicator(rank_comm_ptr());
  GradQueueSGDM ref_opt(ref.params(), gq_options());
  for (int64_t s = 0; s < K1; ++s) {
    gq_closure_step<double>(*opt, net, &dp, data.mine(data.x, s, r), data.mine(data.y, s, r));
    gq_closure_step<double>(ref_opt, ref, nullptr, data.x[s], data.y[s]);
  }
  const auto file = shared_path("gq.pt");
  if (r == 0) {
    torch::serialize::OutputArchive out;
    opt->save(out);
    out.save_to(file);
  }
  comm.barrier();
  {
    torch::NoGradGuard g;
    for (size_t k = 0; k < 2; ++k) solo.params()[k].copy_(net.params()[k]);
  }
  opt = std::make_unique<GradQueueSGDM>(net.params(), gq_options());
  opt->set_communicator(rank_comm_ptr());
  GradQueueSGDM solo_opt(solo.params(), gq_options());
  {
    torch::serialize::InputArchive in;
    in.load_from(file);
    opt->load(in);
  }
  {
    torch::serialize::InputArchive in;
    in.load_from(file);
    solo_opt.load(in);
  }
  comm.barrier();
  if (r == 0) std::filesystem::remove(file);
  for (int64_t s = K1; s < K1 + K2; ++s) {
    gq_closure_step<double>(*opt, net, &dp, data.mine(data.x, s, r), data.mine(data.y, s, r));
    gq_closure_step<double>(ref_opt, ref, nullptr, data.x[s], data.y[s]);
    gq_closure_step<double>(solo_opt, solo, nullptr, data.x[s], data.y[s]);
  }
  report("GradQueue resumed on 2 ranks", rel_err(net.params(), ref.params()), 1e-12);
  report("GradQueue resumed on 1 rank", rel_err(solo.params(), ref.params()), 1e-12);
  expect_identical_on_every_rank(*opt, net.params(), "GradQueue resumed");
}

}  // namespace
