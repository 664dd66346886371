// The README's API example, built twice by the tests: in qmm's own build (qmm_readme_example) and
// as a separate CMake project against an installed qmm (tests/consumer_check.cmake).
#include <qmm/qmm.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  std::vector<float> w(256 * 512), x(3 * 512);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.01f * i);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.02f * i);
  auto W = qmm::Tensor::from_floats(w, {256, 512}, qmm::Dtype::float16);  // N x K weight
  auto X = qmm::Tensor::from_floats(x, {3, 512}, qmm::Dtype::float16);    // M x K activations
  auto q = qmm::quantize(W, /*group_size=*/64, /*bits=*/4);                // w_q, scales, biases
  auto y = qmm::quantized_matmul(X, q.w_q, q.scales, q.biases);           // (3, 256) float16
  std::printf("qmm %s: y[0][0] = %.4f\n", QMM_VERSION_STRING, y.to_floats()[0]);
}
