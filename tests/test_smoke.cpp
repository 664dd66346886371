#include <gtest/gtest.h>

#include "qmm/qmm.h"

TEST(Smoke, QuantizeRoundTrip) {
  std::vector<float> v(2 * 64);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 7) - 3.0f;
  auto w = qmm::Tensor::from_floats(v, {2, 64}, qmm::Dtype::float32);
  auto q = qmm::quantize(w, 64, 4);
  EXPECT_EQ(q.w_q.shape(), (qmm::Shape{2, 8}));
  auto d = qmm::dequantize(q.w_q, q.scales, q.biases, 64, 4).to_floats();
  for (size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(d[i], v[i], 0.4f);  // the edge snaps: -3 clips to -2.625, as in MLX;
}
