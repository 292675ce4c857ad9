#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "../../examples/common/process_setup.h"

using sgdx_examples::wait_policy_action;
using sgdx_examples::WaitPolicyAction;

TEST(WaitPolicy, PassiveWhenNothingIsSet) {
  EXPECT_EQ(wait_policy_action(nullptr, nullptr, nullptr), WaitPolicyAction::kSetPassive);
  EXPECT_EQ(wait_policy_action(nullptr, nullptr, ""), WaitPolicyAction::kSetPassive);
  EXPECT_EQ(wait_policy_action(nullptr, nullptr, "0"), WaitPolicyAction::kSetPassive);
}

TEST(WaitPolicy, UserSettingWins) {
  EXPECT_EQ(wait_policy_action("active", nullptr, nullptr), WaitPolicyAction::kKeepUser);
  EXPECT_EQ(wait_policy_action("", nullptr, nullptr), WaitPolicyAction::kKeepUser);
  EXPECT_EQ(wait_policy_action(nullptr, "10000", nullptr), WaitPolicyAction::kKeepUser);
  EXPECT_EQ(wait_policy_action("active", nullptr, "1"), WaitPolicyAction::kKeepUser);
}

TEST(WaitPolicy, SwitchDisables) {
  EXPECT_EQ(wait_policy_action(nullptr, nullptr, "1"), WaitPolicyAction::kDisabled);
  EXPECT_EQ(wait_policy_action(nullptr, nullptr, "yes"), WaitPolicyAction::kDisabled);
}

// This binary links process_setup.cpp too: run it again under libgomp's OMP_DISPLAY_ENV and
// read the spin count libgomp settled on (300000: its default).
std::string spincount_of_child(const std::string& env) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string cmd = "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u SGDX_NO_PASSIVE_WAIT " + env +
                          " OMP_DISPLAY_ENV=verbose '" + self + "' --gtest_list_tests 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return "popen failed";
  std::string out;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  pclose(pipe);
  const auto at = out.find("GOMP_SPINCOUNT = '");
  if (at == std::string::npos) return "no GOMP_SPINCOUNT in: " + out.substr(0, 200);
  const auto from = at + 18;
  return out.substr(from, out.find('\'', from) - from);
}

TEST(WaitPolicy, ThreadsForFreeCores) {
  EXPECT_EQ(sgdx_examples::threads_for_free_cores(2, 1), 1);
  EXPECT_EQ(sgdx_examples::threads_for_free_cores(16, 3), 13);
  EXPECT_EQ(sgdx_examples::threads_for_free_cores(2, 5), 1);
}

// Whether a child without settings goes passive depends on the machine's load at that
// moment, so only the settings that must win are checked end to end.
TEST(WaitPolicy, ReachesLibgompBeforeItStarts) {
  EXPECT_EQ(spincount_of_child("SGDX_NO_PASSIVE_WAIT=1"), "300000");
  EXPECT_EQ(spincount_of_child("GOMP_SPINCOUNT=1234"), "1234");
}
