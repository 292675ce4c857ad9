#pragma once
// An independent float64 reference of R-SGD (docs/rsgd.md), written with plain loops.
#include <cmath>
#include <cstdint>
#include <vector>

#include "sgdx/detail/philox.h"
#include "sgdx/optim/rsgd.h"

namespace sgdx::testing {

using sgdx::optim::RSGDGranularity;
using sgdx::optim::RSGDMemory;
using sgdx::optim::RSGDOptions;

// The documented 32-bit word U_e of element e (sgdx/detail/philox.h), built
// from the raw Philox function: high byte from the 16-element block, low 24
// bits from the flagged 4-element block.
inline uint64_t uniform_word(uint64_t seed, uint32_t k, uint32_t t, uint64_t e) {
  const auto key0 = uint32_t(seed), key1 = uint32_t(seed >> 32);
  const auto hi = sgdx::detail::philox4x32_10(uint32_t(e / 16), uint32_t((e / 16) >> 32), k, t, key0, key1);
  const uint32_t byte = (hi.v[(e % 16) / 4] >> (8 * (e % 4))) & 0xff;
  const auto lo =
      sgdx::detail::philox4x32_10(uint32_t(e / 4), uint32_t((e / 4) >> 32) | 0x80000000u, k, t, key0, key1);
  return (uint64_t{byte} << 24) | (lo.v[e % 4] >> 8);
}

// Independent float64 reference of the rule in rsgd.md, written with plain
// loops. The Bernoulli draws follow the documented counter-based stream.
struct ReferenceRSGD {
  RSGDOptions o;
  std::vector<std::vector<double>> memory;
  int64_t t = 0;

  explicit ReferenceRSGD(RSGDOptions opts) : o(opts) {}

  void step(std::vector<std::vector<double>>& params, const std::vector<std::vector<double>>& grads) {
    ++t;
    if (memory.empty()) {
      for (const auto& p : params) memory.emplace_back(p.size(), 0.0);
    }
    const double gamma_t = std::min(o.max_prob(), 1.0 - o.gamma0() * std::pow(o.gamma(), double(t)));
    const uint64_t threshold =
        gamma_t >= 1.0 ? (uint64_t{1} << 32)
                       : (gamma_t <= 0.0 ? 0 : static_cast<uint64_t>(std::floor(gamma_t * 4294967296.0)));
    for (size_t k = 0; k < params.size(); ++k) {
      for (size_t i = 0; i < params[k].size(); ++i) {
        const uint64_t e = o.granularity() == RSGDGranularity::element ? i : 0;
        const bool xi = uniform_word(o.seed(), uint32_t(k), uint32_t(t), e) < threshold;
        double g = grads[k][i];
        if (o.weight_decay() != 0.0) g += o.weight_decay() * params[k][i];
        const double h = xi ? g + memory[k][i] : g;
        params[k][i] -= o.lr() * h;
        memory[k][i] = o.memory() == RSGDMemory::previous ? g : h;
      }
    }
  }
};

}  // namespace sgdx::testing
