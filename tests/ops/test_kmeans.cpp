// k-means against an independent float64 brute-force Lloyd, k-means++ against
// its sampling law, empty inputs (on the input's device, checked with the meta
// device), and the error messages.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "sgdx/ops/kmeans.h"
#include "test_util.h"

namespace {

using Mat = std::vector<std::vector<double>>;

Mat to_mat(const at::Tensor& t) {
  auto c = t.to(at::kDouble).contiguous();
  Mat m(c.size(0), std::vector<double>(c.size(1)));
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) m[i][j] = c[i][j].item<double>();
  return m;
}

double sqdist(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += (a[j] - b[j]) * (a[j] - b[j]);
  return s;
}

std::vector<int64_t> brute_assign(const Mat& x, const Mat& c) {
  std::vector<int64_t> a(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double best = std::numeric_limits<double>::infinity();
    for (size_t k = 0; k < c.size(); ++k) {
      const double d = sqdist(x[i], c[k]);
      if (d < best) best = d, a[i] = static_cast<int64_t>(k);  // strict: ties keep the lowest index
    }
  }
  return a;
}

struct Brute {
  Mat c;
  std::vector<int64_t> a;
  int64_t iterations = 0;
};

// Textbook Lloyd in float64 with sgdx's documented rules (empty cluster ->
// farthest point from its centroid, ascending cluster order; stop on shift <= tol * mean var).
Brute brute_lloyd(const Mat& x, Mat c, int64_t iters, double tol) {
  const size_t n = x.size(), d = x[0].size(), k = c.size();
  double mean_var = 0;
  for (size_t j = 0; j < d; ++j) {
    double m = 0, v = 0;
    for (size_t i = 0; i < n; ++i) m += x[i][j];
    m /= n;
    for (size_t i = 0; i < n; ++i) v += (x[i][j] - m) * (x[i][j] - m);
    mean_var += v / n;
  }
  mean_var /= d;
  Brute out;
  for (int64_t it = 0; it < iters; ++it) {
    auto a = brute_assign(x, c);
    Mat next(k, std::vector<double>(d, 0.0));
    std::vector<int64_t> cnt(k, 0);
    for (size_t i = 0; i < n; ++i) {
      ++cnt[a[i]];
      for (size_t j = 0; j < d; ++j) next[a[i]][j] += x[i][j];
    }
    std::vector<double> far(n);
    for (size_t i = 0; i < n; ++i) far[i] = sqdist(x[i], c[a[i]]);
    for (size_t q = 0; q < k; ++q) {
      if (cnt[q] > 0) {
        for (auto& v : next[q]) v /= cnt[q];
      } else {
        size_t best = 0;
        for (size_t i = 1; i < n; ++i)
          if (far[i] > far[best]) best = i;
        next[q] = x[best];
        far[best] = -1;
      }
    }
    double shift = 0;
    for (size_t q = 0; q < k; ++q) shift += sqdist(next[q], c[q]);
    c = next;
    out.iterations = it + 1;
    if (shift <= tol * mean_var) break;
  }
  out.c = c;
  out.a = brute_assign(x, c);
  return out;
}

void expect_matches_brute(const at::Tensor& x, const at::Tensor& init, int64_t iters, double tol) {
  sgdx::ops::KMeansOptions o;
  o.init = init;
  o.max_iters = iters;
  o.tol = tol;
  const auto r = sgdx::ops::kmeans(x, init.size(0), o);
  const auto ref = brute_lloyd(to_mat(x), to_mat(init), iters, tol);
  EXPECT_EQ(r.iterations, ref.iterations);
  const auto c = to_mat(r.centroids);
  for (size_t q = 0; q < c.size(); ++q)
    for (size_t j = 0; j < c[q].size(); ++j) EXPECT_NEAR(c[q][j], ref.c[q][j], 1e-12) << "centroid " << q;
  for (size_t i = 0; i < ref.a.size(); ++i)
    EXPECT_EQ(r.assignment[i].item<int64_t>(), ref.a[i]) << "row " << i;
  auto counts = at::bincount(r.assignment, {}, init.size(0));
  EXPECT_TRUE(at::equal(counts, r.counts));
  double inertia = 0;
  const auto xm = to_mat(x);
  for (size_t i = 0; i < xm.size(); ++i) inertia += sqdist(xm[i], ref.c[ref.a[i]]);
  EXPECT_NEAR(r.inertia, inertia, 1e-9 * std::max(1.0, inertia));
}

TEST(KMeans, MatchesBruteForceLloydOnFixedData) {
  at::manual_seed(11);
  const auto x = at::randn({200, 5}, at::kDouble) + at::randint(0, 3, {200, 1}, at::kDouble) * 2.5;
  const auto init = x.index_select(0, at::tensor({3, 50, 97, 150}, at::kLong));
  expect_matches_brute(x, init, 25, 0.0);   // runs until the centroids stop moving
  expect_matches_brute(x, init, 3, 0.0);    // capped
  expect_matches_brute(x, init, 50, 1e-2);  // stopped by the tolerance
}

TEST(KMeans, TiesGoToTheLowestIndexAndEmptyClustersAreReseeded) {
  at::manual_seed(3);
  const auto x = at::randn({40, 3}, at::kDouble);
  // Clusters 1 and 2 duplicate cluster 0: every point ties, goes to 0, and 1, 2 are re-seeded.
  auto init = at::zeros({3, 3}, at::kDouble);
  const auto zero = sgdx::ops::nearest_centroid(x, init);
  EXPECT_TRUE(at::equal(zero, at::zeros({40}, at::kLong)));
  expect_matches_brute(x, init, 1, 0.0);
  expect_matches_brute(x, init, 20, 0.0);
  sgdx::ops::KMeansOptions o;
  o.init = init;
  o.max_iters = 1;
  const auto r = sgdx::ops::kmeans(x, 3, o);
  // Re-seeded at the two farthest points from the origin.
  const auto far = x.pow(2).sum(1).argsort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
  EXPECT_TRUE(at::equal(r.centroids[1], x[far[0].item<int64_t>()]));
  EXPECT_TRUE(at::equal(r.centroids[2], x[far[1].item<int64_t>()]));
}

TEST(KMeans, Float32AgreesWithFloat64) {
  at::manual_seed(5);
  const auto x = at::randn({300, 16}) + at::randint(0, 4, {300, 1}).to(at::kFloat) * 3;
  sgdx::ops::KMeansOptions o;
  o.seed = 9;
  const auto r32 = sgdx::ops::kmeans(x, 4, o);
  const auto r64 = sgdx::ops::kmeans(x.to(at::kDouble), 4, o);
  EXPECT_TRUE(at::equal(r32.assignment, r64.assignment));
  EXPECT_TRUE(at::allclose(r32.centroids.to(at::kDouble), r64.centroids, 1e-4, 1e-5));
}

TEST(KMeans, RecoversSeparatedBlobs) {
  at::manual_seed(1);
  const int64_t per = 50;
  auto labels = at::arange(4, at::kLong).repeat_interleave(per);
  auto centres = at::tensor({0.0, 0.0, 10.0, 0.0, 0.0, 10.0, 10.0, 10.0}, at::kDouble).view({4, 2});
  auto x = centres.index_select(0, labels) + 0.5 * at::randn({4 * per, 2}, at::kDouble);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    sgdx::ops::KMeansOptions o;
    o.seed = seed;
    o.max_iters = 30;
    const auto r = sgdx::ops::kmeans(x, 4, o);
    // A perfect clustering: each true blob maps to exactly one cluster.
    std::map<int64_t, int64_t> map;
    for (int64_t i = 0; i < 4 * per; ++i) {
      const auto t = labels[i].item<int64_t>(), a = r.assignment[i].item<int64_t>();
      auto [it, inserted] = map.emplace(t, a);
      ASSERT_EQ(it->second, a) << "seed " << seed << " split blob " << t;
    }
    std::set<int64_t> used;
    for (auto& [t, a] : map) used.insert(a);
    // k-means++ may still land two seeds in one blob; Lloyd then leaves a merged pair.
    EXPECT_EQ(used.size(), 4u) << "seed " << seed;
  }
}

TEST(KMeansPlusPlus, IsDeterministicPerSeedAndStream) {
  at::manual_seed(2);
  const auto x = at::randn({100, 4});
  const auto a = sgdx::ops::kmeans_plusplus(x, 5, 7, 0);
  EXPECT_TRUE(at::equal(a, sgdx::ops::kmeans_plusplus(x, 5, 7, 0)));
  EXPECT_FALSE(at::equal(a, sgdx::ops::kmeans_plusplus(x, 5, 7, 1)));
  EXPECT_FALSE(at::equal(a, sgdx::ops::kmeans_plusplus(x, 5, 8, 0)));
  EXPECT_EQ(std::get<0>(at::_unique(a)).numel(), 5);  // distinct rows of continuous data
}

// Points 0, 1, 3 on a line, k = 2: the first pick is uniform, the second has
// probability D^2 / sum D^2. The pair frequencies over 6000 seeds follow
// P({0,1}) = 1/3 (1/10 + 1/5), P({0,3}) = 1/3 (9/10 + 9/13), P({1,3}) = 1/3 (4/5 + 4/13);
// chi-square with 2 dof, p = 0.001 critical value 13.8.
TEST(KMeansPlusPlus, SecondPickFollowsSquaredDistances) {
  const auto x = at::tensor({0.0, 1.0, 3.0}, at::kDouble).view({3, 1});
  const int64_t N = 6000;
  std::map<std::pair<int64_t, int64_t>, int64_t> freq;
  for (int64_t s = 0; s < N; ++s) {
    auto a = sgdx::ops::kmeans_plusplus(x, 2, static_cast<uint64_t>(s), 0);
    auto i = a[0].item<int64_t>(), j = a[1].item<int64_t>();
    ASSERT_NE(i, j);
    freq[{std::min(i, j), std::max(i, j)}]++;
  }
  const std::map<std::pair<int64_t, int64_t>, double> p = {{{0, 1}, (1.0 / 10 + 1.0 / 5) / 3},
                                                           {{0, 2}, (9.0 / 10 + 9.0 / 13) / 3},
                                                           {{1, 2}, (4.0 / 5 + 4.0 / 13) / 3}};
  double chi2 = 0;
  for (auto& [pair, prob] : p) {
    const double e = prob * N;
    chi2 += (freq[pair] - e) * (freq[pair] - e) / e;
  }
  EXPECT_LT(chi2, 13.8);
}

// n = 0 or d = 0: nothing runs; every output is on x's device with the documented
// values. The meta device shows that nothing is made on the CPU by default.
TEST(KMeans, EmptyInputsReturnTensorsOnTheInputDevice) {
  for (const auto device : {at::Device(at::kCPU), at::Device(at::kMeta)}) {
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      for (auto shape :
           {std::vector<int64_t>{0, 5}, std::vector<int64_t>{9, 0}, std::vector<int64_t>{0, 0}}) {
        const auto x = at::empty(shape, at::TensorOptions().device(device).dtype(dtype));
        const int64_t n = shape[0], d = shape[1];
        const auto r = sgdx::ops::kmeans(x, 3);
        std::ostringstream what;
        what << device << " " << dtype << " n=" << n << " d=" << d;
        EXPECT_EQ(r.centroids.device(), device) << what.str();
        EXPECT_EQ(r.assignment.device(), device) << what.str();
        EXPECT_EQ(r.counts.device(), device) << what.str();
        EXPECT_EQ(r.centroids.sizes(), (std::vector<int64_t>{3, d})) << what.str();
        EXPECT_EQ(r.centroids.scalar_type(), dtype) << what.str();
        EXPECT_EQ(r.assignment.sizes(), (std::vector<int64_t>{n})) << what.str();
        EXPECT_EQ(r.assignment.scalar_type(), at::kLong) << what.str();
        EXPECT_EQ(r.counts.sizes(), (std::vector<int64_t>{3})) << what.str();
        EXPECT_EQ(r.counts.scalar_type(), at::kLong) << what.str();
        EXPECT_EQ(r.iterations, 0) << what.str();
        EXPECT_EQ(r.inertia, 0.0) << what.str();
        EXPECT_EQ(r.backend, sgdx::ops::KMeansBackend::aten) << what.str();
        if (device.is_cpu()) {
          EXPECT_TRUE(at::equal(r.assignment, at::zeros({n}, at::kLong))) << what.str();  // every point ties
          EXPECT_TRUE(at::equal(r.counts, at::tensor({n, int64_t{0}, int64_t{0}}))) << what.str();
          if (n == 0 && d > 0) EXPECT_TRUE(at::isnan(r.centroids).all().item<bool>()) << what.str();
        }
        // nearest_centroid on no rows or no features.
        const auto a = sgdx::ops::nearest_centroid(x, at::zeros({2, d}, x.options()));
        EXPECT_EQ(a.device(), device);
        EXPECT_EQ(a.sizes(), (std::vector<int64_t>{n}));
      }
    }
  }
  // Given initial centroids are the result, converted to x's dtype, not aliased.
  sgdx::ops::KMeansOptions o;
  o.init = at::randn({2, 4}, at::kDouble);
  const auto r = sgdx::ops::kmeans(at::empty({0, 4}), 2, o);
  EXPECT_EQ(r.centroids.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(r.centroids, o.init.to(at::kFloat)));
  r.centroids.fill_(0);
  EXPECT_FALSE(at::equal(r.centroids, o.init.to(at::kFloat)));
  SGDX_EXPECT_THROW_MSG(
      sgdx::ops::kmeans(at::empty({0, 4}), 2, sgdx::ops::KMeansOptions{.init = at::zeros({3, 4})}),
      "initial centroids must be [2, 4], got [3, 4]");
  // k is still >= 1; with no rows, k-means++ has nothing to choose from.
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(at::empty({0, 4}), 0), "must be >= 1, got 0");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_plusplus(at::empty({0, 4}), 1, 0, 0),
                        "no rows to choose 1 centroids from");
}

TEST(KMeans, ClearErrors) {
  const auto x = at::randn({3, 2});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(x, 5), "5 clusters exceed the number of samples 3");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(x, 0), "must be >= 1, got 0");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(at::randn({3}), 1), "must be 2-D");
  auto bad = x.clone();
  bad[2][1] = std::numeric_limits<float>::quiet_NaN();
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(bad, 2), "non-finite feature in row 2");
  bad[2][1] = std::numeric_limits<float>::infinity();
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(bad, 2), "non-finite feature in row 2");
  sgdx::ops::KMeansOptions o;
  o.init = at::zeros({3, 2});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(x, 2, o), "initial centroids must be [2, 2]");
  o.init = at::zeros({2, 2});
  o.init[1][0] = std::numeric_limits<float>::infinity();
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(x, 2, o), "initial centroids are not finite");
  o = {};
  o.tol = -1;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(x, 2, o), "tol must be finite and >= 0, got -1");
  o = {};
  o.max_iters = -1;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(x, 2, o), "max_iters must be >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(at::ones({3, 2}, at::kInt), 1), "floating point");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::nearest_centroid(x, at::zeros({2, 3})),
                        "centroids must be [k, 2], got [2, 3]");
}

}  // namespace
