#include <sgdx/sgdx.h>

#include <cstdio>

int main() {
  auto w = torch::zeros({3}, torch::requires_grad());
  sgdx::optim::RSGD opt({w}, sgdx::optim::RSGDOptions(0.5).max_prob(0.0));
  w.mutable_grad() = torch::ones({3});
  opt.step();
  const bool ok = torch::allclose(w, torch::full({3}, -0.5));
  std::printf("consumer: sgdx %s (CUDA %d) linked; RSGD step %s\n", SGDX_VERSION, SGDX_WITH_CUDA,
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
