// Every x86 variant of the CPU kernels (sgdx/cpu_isa.h) that this machine can
// run: the Philox words against the scalar definition, the R-SGD step bit for
// bit against an independent per-element reference, and the GradQueue step
// against its ATen composition and bit for bit across variants.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../src/cpu/philox_simd.h"
#include "../ops/gradqueue_step_util.h"
#include "sgdx/cpu_isa.h"
#include "sgdx/detail/philox.h"
#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/ops/rsgd_step.h"

namespace {

using sgdx::CpuIsa;

// Restores the variant a test started with.
struct IsaGuard {
  CpuIsa saved = sgdx::cpu_isa();
  ~IsaGuard() { sgdx::set_cpu_isa(saved); }
};

std::string name(CpuIsa isa) {
  return std::string(sgdx::cpu_isa_name(isa));
}

TEST(CpuIsa, NamesRoundTripAndUnknownNamesAreRefused) {
  for (auto isa : {CpuIsa::Baseline, CpuIsa::Avx2, CpuIsa::Avx512})
    EXPECT_EQ(sgdx::parse_cpu_isa(sgdx::cpu_isa_name(isa)), isa);
  try {
    sgdx::parse_cpu_isa("avx-512");
    FAIL() << "an unknown name was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown CPU ISA variant 'avx-512'"), std::string::npos) << e.what();
  }
}

TEST(CpuIsa, TheActiveVariantIsSupportedAndUnsupportedOnesAreRefused) {
  IsaGuard guard;
  const auto supported = sgdx::cpu_isas_supported();
  ASSERT_FALSE(supported.empty());
  EXPECT_EQ(supported.front(), CpuIsa::Baseline);
  EXPECT_NE(std::find(supported.begin(), supported.end(), sgdx::cpu_isa()), supported.end());
  for (auto isa : {CpuIsa::Baseline, CpuIsa::Avx2, CpuIsa::Avx512}) {
    if (std::find(supported.begin(), supported.end(), isa) != supported.end()) {
      sgdx::set_cpu_isa(isa);
      EXPECT_EQ(sgdx::cpu_isa(), isa);
    } else {
      try {
        sgdx::set_cpu_isa(isa);
        FAIL() << name(isa) << " was accepted on a CPU that cannot run it";
      } catch (const c10::Error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot run the " + name(isa)), std::string::npos) << e.what();
      }
    }
  }
  std::printf("variants this CPU runs:");
  for (auto isa : supported) std::printf(" %s", name(isa).c_str());
  std::printf("\n");
}

// Run by ctest with SGDX_CPU_ISA set (tests/CMakeLists.txt): the variable chooses the variant.
TEST(CpuIsa, TheEnvironmentChoosesTheVariant) {
  const char* env = std::getenv("SGDX_CPU_ISA");
  if (env == nullptr) GTEST_SKIP() << "SGDX_CPU_ISA is not set";
  EXPECT_EQ(name(sgdx::cpu_isa()), env);
}

// Counters that cross a 2^32 boundary inside a vector, and every tail length.
TEST(CpuIsa, PhiloxWordsOfEveryVariantEqualTheScalarDefinition) {
  const uint64_t seed = 0x9abcdef012345678ull;
  for (uint64_t first : {uint64_t{0}, uint64_t{12345}, (uint64_t{1} << 32) - 5, (uint64_t{7} << 32) - 13}) {
    for (int64_t blocks : {1, 7, 8, 9, 15, 16, 17, 33, 64}) {
      std::vector<uint32_t> want(4 * blocks);
      for (int64_t b = 0; b < blocks; ++b) {
        const auto r = sgdx::detail::philox4x32_10(
            static_cast<uint32_t>(first + b), static_cast<uint32_t>((first + b) >> 32), 77u, 4000000000u,
            static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
        for (int j = 0; j < 4; ++j) want[4 * b + j] = r.v[j];
      }
      for (auto isa : sgdx::cpu_isas_supported()) {
        std::vector<uint32_t> got(4 * blocks + 1, 0xdeadbeefu);  // one guard word
#if SGDX_X86_VARIANTS
        if (isa == CpuIsa::Avx512)
          sgdx::cpu::rsgd_high_words_avx512(seed, 77, 4000000000u, first, blocks, got.data());
        else if (isa == CpuIsa::Avx2)
          sgdx::cpu::rsgd_high_words_avx2(seed, 77, 4000000000u, first, blocks, got.data());
        else
#endif
          sgdx::cpu::rsgd_high_words_scalar(seed, 77, 4000000000u, first, blocks, got.data());
        EXPECT_EQ(got.back(), 0xdeadbeefu) << name(isa) << " wrote past the end";
        got.pop_back();
        EXPECT_EQ(got, want) << name(isa) << " first " << first << " blocks " << blocks;
      }
    }
  }
}

// R-SGD in the tensor's own type, element by element, from the stream's definition.
template <typename T>
void rsgd_scalar_reference(T* p, const T* g, T* m, int64_t n, uint64_t seed, uint32_t id, uint32_t step,
                           double prob, bool per_element, const sgdx::ops::RSGDStepConfig& c) {
  const uint64_t threshold = sgdx::detail::bernoulli_threshold(prob);
  const bool tensor_xi = sgdx::detail::rsgd_draw(seed, id, step, 0, threshold);
  const T lr = static_cast<T>(c.lr), wd = static_cast<T>(c.weight_decay);
  for (int64_t i = 0; i < n; ++i) {
    const bool xi = per_element ? sgdx::detail::rsgd_draw(seed, id, step, static_cast<uint64_t>(i), threshold)
                                : tensor_xi;
    const T gi = wd != T(0) ? g[i] + wd * p[i] : g[i];
    const T h = xi ? gi + m[i] : gi;
    const T scaled = lr * h;
    p[i] = p[i] - scaled;
    m[i] = c.memory_previous ? gi : h;
  }
}

TEST(CpuIsa, RSGDStepOfEveryVariantEqualsTheScalarReferenceBitForBit) {
  IsaGuard guard;
  const std::vector<int64_t> sizes = {1, 15, 16, 17, 127, 128, 129, 1023, 1024, 1025, 4097, 100003};
  // 0.5 and 0.25 put the threshold's low 24 bits at zero (every tie resolved by the low bits).
  const std::vector<double> probs = {0.37, 0.5, 0.25, 0.999, 1e-3, 0.0, 1.0};
  int cases = 0;
  for (auto dt : {at::kFloat, at::kDouble}) {
    for (bool per_element : {true, false}) {
      for (bool previous : {false, true}) {
        sgdx::ops::RSGDStepConfig c;
        c.lr = 0.05;
        c.weight_decay = previous ? 0.0 : 0.01;
        c.seed = 0x123456789abcdef0ull;
        c.per_element = per_element;
        c.memory_previous = previous;
        at::manual_seed(11);
        std::vector<at::Tensor> p0, g, m0;
        std::vector<int64_t> ids, steps;
        std::vector<double> pr;
        for (size_t k = 0; k < sizes.size(); ++k) {
          p0.push_back(at::randn({sizes[k]}, dt));
          g.push_back(at::randn({sizes[k]}, dt));
          m0.push_back(at::randn({sizes[k]}, dt));
          ids.push_back(static_cast<int64_t>((uint64_t{1} << 31) + k));
          steps.push_back(4000000000ll - static_cast<int64_t>(k));
          pr.push_back(probs[k % probs.size()]);
        }
        std::vector<at::Tensor> pw, mw;
        for (size_t k = 0; k < sizes.size(); ++k) {
          pw.push_back(p0[k].clone());
          mw.push_back(m0[k].clone());
          AT_DISPATCH_FLOATING_TYPES(dt, "reference", [&] {
            rsgd_scalar_reference<scalar_t>(pw[k].data_ptr<scalar_t>(), g[k].data_ptr<scalar_t>(),
                                            mw[k].data_ptr<scalar_t>(), sizes[k], c.seed,
                                            static_cast<uint32_t>(ids[k]), static_cast<uint32_t>(steps[k]),
                                            pr[k], per_element, c);
          });
        }
        for (auto isa : sgdx::cpu_isas_supported()) {
          sgdx::set_cpu_isa(isa);
          std::vector<at::Tensor> p, m;
          for (size_t k = 0; k < sizes.size(); ++k) p.push_back(p0[k].clone()), m.push_back(m0[k].clone());
          sgdx::ops::rsgd_step_cpu_(p, g, m, ids, steps, pr, c);
          for (size_t k = 0; k < sizes.size(); ++k) {
            const std::string where = name(isa) + " " + std::string(c10::toString(dt)) + " n " +
                                      std::to_string(sizes[k]) + " prob " + std::to_string(pr[k]) +
                                      " per_element " + std::to_string(per_element) + " previous " +
                                      std::to_string(previous);
            ASSERT_TRUE(at::equal(p[k], pw[k])) << "param " << where;
            ASSERT_TRUE(at::equal(m[k], mw[k])) << "memory " << where;
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_GE(cases, 8 * static_cast<int>(sizes.size()));
}

TEST(CpuIsa, GradQueueStepOfEveryVariantMatchesAtenAndTheOtherVariantsBitForBit) {
  IsaGuard guard;
  int cases = 0;
  for (auto dt : {at::kFloat, at::kDouble}) {
    const double tol = dt == at::kFloat ? 2e-6 : 1e-13;
    for (int64_t n : {1, 17, 256, 1000, 32768 + 13}) {
      for (bool elem : {true, false}) {
        for (bool exact : {true, false}) {
          for (int old_mode : {0, 1, 2}) {
            if (!exact && old_mode != 0) continue;
            for (int mom : {0, 1, 2, 3}) {
              const auto c = sgdx::testing::gq_config(mom, elem, n % 2 == 0 ? 1.0 : 1.5, 0.5, 2.0);
              const int64_t stats = n % 3 == 0 ? 0 : 5;
              at::manual_seed(n + 7 * mom);
              auto base = sgdx::testing::make_gq_operands(n, dt, 4, exact);
              auto ref = base.clone();
              auto tr = sgdx::testing::gq_view(ref, exact, old_mode, stats, mom == 1);
              const double rho_ref = sgdx::ops::gradqueue_step_aten_(tr, c).item<double>();
              std::vector<at::Tensor> first;
              double rho_first = 0;
              for (auto isa : sgdx::cpu_isas_supported()) {
                sgdx::set_cpu_isa(isa);
                auto o = base.clone();
                auto t = sgdx::testing::gq_view(o, exact, old_mode, stats, mom == 1);
                const double rho = sgdx::ops::gradqueue_step_(t, c).item<double>();
                const std::string where = name(isa) + " " + std::string(c10::toString(dt)) + " n " +
                                          std::to_string(n) + " elem " + std::to_string(elem) + " exact " +
                                          std::to_string(exact) + " old " + std::to_string(old_mode) +
                                          " mom " + std::to_string(mom);
                const std::vector<at::Tensor> got = {o.p, o.v, o.s1, o.s2, o.queue};
                const std::vector<at::Tensor> want = {ref.p, ref.v, ref.s1, ref.s2, ref.queue};
                for (size_t j = 0; j < got.size(); ++j)
                  ASSERT_TRUE(at::allclose(got[j], want[j], tol, tol)) << "operand " << j << " " << where;
                EXPECT_NEAR(rho, rho_ref, 1e-5 * static_cast<double>(n)) << where;
                if (first.empty()) {
                  first = got;
                  rho_first = rho;
                } else {
                  for (size_t j = 0; j < got.size(); ++j)
                    ASSERT_TRUE(at::equal(got[j], first[j]))
                        << "operand " << j << " differs from baseline, " << where;
                  EXPECT_EQ(std::memcmp(&rho, &rho_first, sizeof rho), 0) << where;
                }
                ++cases;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 200);
}

}  // namespace
