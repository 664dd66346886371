// The step detector of `qmm bench` on synthetic timings.
#include <gtest/gtest.h>

#include "tools/qmm/step_detector.h"

namespace qmm::bench {
namespace {

StepRow row(int m, double us, const std::string& kernel = "k", std::int64_t blocks = 132, double waves = 1.0,
            std::int64_t bytes = 1000000) {
  StepRow r;
  r.m = m;
  r.time_us = us;
  r.time_min_us = us * 0.99;
  r.time_max_us = us * 1.01;
  r.kernel = kernel;
  r.blocks = blocks;
  r.waves = waves;
  r.weight_bytes = bytes;
  r.min_weight_bytes = 1000000;
  return r;
}

TEST(StepDetector, FlatCurveHasNoStep) {
  std::vector<StepRow> rows;
  for (int m = 1; m <= 16; ++m) rows.push_back(row(m, 15.0 + 0.05 * m));
  EXPECT_TRUE(detect_steps(rows).empty());
}

TEST(StepDetector, ThresholdIsStrict) {
  EXPECT_TRUE(detect_steps({row(1, 10.0), row(2, 11.0)}).empty());  // exactly 1.10
  const auto steps = detect_steps({row(1, 10.0), row(2, 11.2)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0].m, 2);
  EXPECT_EQ(steps[0].prev_m, 1);
  EXPECT_NEAR(steps[0].ratio, 1.12, 1e-9);
}

TEST(StepDetector, KernelChange) {
  const auto steps = detect_steps({row(7, 20.0, "qmv"), row(8, 30.0, "gemm16", 264, 2.0)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_TRUE(steps[0].kernel_changed);
  EXPECT_TRUE(steps[0].extra_wave);
  EXPECT_FALSE(steps[0].grid_changed);  // reported as the kernel change
  EXPECT_FALSE(steps[0].compute_bound);
  EXPECT_NE(steps[0].summary().find("qmv -> gemm16"), std::string::npos);
  EXPECT_EQ(steps[0].causes().front(), "kernel_change");
}

TEST(StepDetector, ExtraWave) {
  // 0.9 -> 1.1 waves: a second, partial wave.
  const auto steps = detect_steps({row(3, 10.0, "k", 120, 0.9), row(4, 13.0, "k", 146, 1.1)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_TRUE(steps[0].extra_wave);
  EXPECT_TRUE(steps[0].grid_changed);
  EXPECT_FALSE(steps[0].compute_bound);
}

TEST(StepDetector, PartialWaveGrowthIsNotAnExtraWave) {
  const auto steps = detect_steps({row(3, 10.0, "k", 100, 0.5), row(4, 13.0, "k", 120, 0.9)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_FALSE(steps[0].extra_wave);
  EXPECT_TRUE(steps[0].grid_changed);
}

TEST(StepDetector, BytesReadMoreThanOnce) {
  // MLX-style qmv: the grid spans M, so every extra row re-reads the weights.
  const auto steps = detect_steps({row(2, 10.0, "k", 132, 1.0, 2000000), row(3, 14.0, "k", 132, 1.0, 3000000)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_TRUE(steps[0].bytes_reread);
  EXPECT_FALSE(steps[0].compute_bound);
  EXPECT_NE(steps[0].summary().find("3.00x the minimum"), std::string::npos);
}

TEST(StepDetector, ComputeBoundWhenNothingElseChanged) {
  const auto steps = detect_steps({row(3, 25.1), row(4, 29.7)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_TRUE(steps[0].compute_bound);
  EXPECT_FALSE(steps[0].kernel_changed || steps[0].extra_wave || steps[0].bytes_reread || steps[0].grid_changed);
  EXPECT_EQ(steps[0].causes(), std::vector<std::string>{"compute_bound"});
}

TEST(StepDetector, OnlyAdjacentMAreCompared) {
  EXPECT_TRUE(detect_steps({row(16, 20.0), row(32, 40.0), row(64, 80.0)}).empty());
}

TEST(StepDetector, RowsInAnyOrder) {
  const auto steps = detect_steps({row(3, 13.0), row(1, 10.0), row(2, 10.1)});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0].m, 3);
}

TEST(StepDetector, NoiseFlag) {
  StepRow a = row(1, 10.0), b = row(2, 12.0);
  b.time_min_us = 9.5;  // the fastest M=2 sample beats the typical M=1 one
  const auto steps = detect_steps({a, b});
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_TRUE(steps[0].within_noise);
  EXPECT_FALSE(detect_steps({row(1, 10.0), row(2, 12.0)})[0].within_noise);
}

TEST(StepDetector, CustomThreshold) {
  EXPECT_TRUE(detect_steps({row(1, 10.0), row(2, 11.2)}, 1.15).empty());
  EXPECT_EQ(detect_steps({row(1, 10.0), row(2, 10.6)}, 1.05).size(), 1u);
}

}  // namespace
}  // namespace qmm::bench
