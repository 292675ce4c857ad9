// The CUDA defaults: which paths run by default on a GPU, pinned here, and the
// guard that keeps a fused kernel on by default only while its sources are the
// ones a GPU run verified (sgdx/ops/cuda_kernels.h).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "sgdx/config.h"
#include "sgdx/ops/cuda_kernels.h"
#include "sgdx/ops/kmeans.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/ops/rsgd_step.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/rsgd.h"

using sgdx::ops::CudaKernel;

// The CI guard: a kernel switched on by default must have been verified on a GPU
// with exactly the sources of this build.
TEST(CudaKernels, DefaultOnKernelsRunTheirVerifiedSources) {
  for (const auto& r : sgdx::ops::cuda_kernel_records()) {
    if (!r.fused_by_default) continue;
    EXPECT_FALSE(r.verified_hash.empty()) << r.name << " is on by default but no GPU run verified it "
                                          << "(cuda/verified_kernels.txt)";
    EXPECT_EQ(r.source_hash, r.verified_hash)
        << r.name << "'s sources changed since their GPU verification: rerun scripts/gpu_check.sh on a GPU, "
        << "or switch it off in src/ops/cuda_kernels.cpp";
  }
}

// What runs by default on CUDA today. No kernel has passed a GPU run yet, so every
// default is the ATen composition; changing a default must change this test.
TEST(CudaKernels, DefaultsArePinned) {
  const std::map<CudaKernel, bool> expected{{CudaKernel::rsgd_step, false},
                                            {CudaKernel::gradqueue_step, false},
                                            {CudaKernel::gradqueue_cluster_stats, false},
                                            {CudaKernel::kmeans, false},
                                            {CudaKernel::per_sample_norms, false}};
  ASSERT_EQ(expected.size(), sgdx::ops::cuda_kernel_records().size());
  for (const auto& [kernel, fused] : expected) {
    EXPECT_EQ(sgdx::ops::fused_cuda_default(kernel), fused) << sgdx::ops::cuda_kernel_record(kernel).name;
  }
  EXPECT_FALSE(sgdx::ops::RSGDStepConfig{}.fused_cuda);
  EXPECT_FALSE(sgdx::optim::RSGDOptions(0.1).fused_cuda());
  EXPECT_FALSE(sgdx::optim::GradQueueSGDMOptions(0.1).fused_cuda());
  EXPECT_EQ(sgdx::ops::KMeansOptions{}.backend, sgdx::ops::KMeansBackend::automatic);
  EXPECT_EQ(sgdx::ops::PerSampleOptions{}.backend, sgdx::ops::PerSampleBackend::automatic);
  // automatic is ATen off CUDA (on CUDA: fused_cuda_default, pinned above); explicit choices pass through.
  const auto x = at::zeros({64, 8});
  EXPECT_EQ(sgdx::ops::resolve_kmeans_backend(x, 4, sgdx::ops::KMeansBackend::automatic),
            sgdx::ops::KMeansBackend::aten);
  EXPECT_EQ(sgdx::ops::resolve_kmeans_backend(x, 4, sgdx::ops::KMeansBackend::fused_cuda),
            sgdx::ops::KMeansBackend::fused_cuda);
}

// The hash compiled in is the one scripts/kernel_hashes.sh computes from the tree
// (the script that writes cuda/verified_kernels.txt after a GPU run).
TEST(CudaKernels, SourceHashesMatchTheScript) {
  if (!SGDX_WITH_CUDA) GTEST_SKIP() << "built without CUDA: no kernel sources compiled in";
  const std::string cmd = std::string("bash ") + SGDX_SOURCE_DIR + "/scripts/kernel_hashes.sh";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  ASSERT_TRUE(pipe) << cmd;
  std::map<std::string, std::string> script;
  std::array<char, 256> line{};
  while (fgets(line.data(), line.size(), pipe.get()) != nullptr) {
    const std::string s(line.data());
    const auto sp = s.find(' ');
    if (sp != std::string::npos) script[s.substr(0, sp)] = s.substr(sp + 1, 64);
  }
  for (const auto& r : sgdx::ops::cuda_kernel_records()) {
    ASSERT_EQ(r.source_hash.size(), 64u) << r.name;
    EXPECT_EQ(script[std::string(r.name)], std::string(r.source_hash)) << r.name;
  }
}
