#pragma once
// Checks that every field of an optimizer's options reaches its checkpoint.
#include <gtest/gtest.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace sgdx::testing {

/// The keys options.serialize() writes, sorted.
template <typename Options>
std::vector<std::string> option_keys(const Options& options) {
  torch::serialize::OutputArchive out;
  options.serialize(out);
  std::stringstream buf;
  out.save_to(buf);
  torch::serialize::InputArchive in;
  in.load_from(buf);
  auto keys = in.keys();
  std::sort(keys.begin(), keys.end());
  return keys;
}

/// `keys` (the fields, written out by the test) are exactly what the options write;
/// `changed` differs from `defaults` in every field of the options' list; and an
/// optimizer made with `changed` saved and loaded into one made with `defaults` has
/// `changed` again. make(options) returns the optimizer (std::unique_ptr).
template <typename Options, typename Make>
void expect_every_field_round_trips(const Options& changed, const Options& defaults,
                                    std::vector<std::string> keys, Make make) {
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(option_keys(changed), keys);
  Options::for_each_field([](const char* key, const auto& a, const auto& b) { EXPECT_FALSE(a == b) << key; },
                          changed, defaults);
  auto saved = make(changed);
  std::stringstream buf;
  {
    torch::serialize::OutputArchive out;
    saved->save(out);
    out.save_to(buf);
  }
  auto loaded = make(defaults);
  {
    torch::serialize::InputArchive in;
    in.load_from(buf);
    loaded->load(in);
  }
  const auto& got = static_cast<const Options&>(loaded->param_groups()[0].options());
  EXPECT_TRUE(got == changed) << got << "\n" << changed;
}

}  // namespace sgdx::testing
