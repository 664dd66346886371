// Bad input gets a clear error, never a crash or a silent wrong answer: one test per condition of
// issue 2 item 6. Each checks that the exception is a qmm::Error (a std::invalid_argument), that
// its message starts with the op's tag and names the offending values, and that the poisoned
// output buffers are byte-for-byte untouched.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "qmm/qmm.h"
#include "tests/test_support.h"

namespace qmm::test {
namespace {

static_assert(std::is_base_of_v<std::invalid_argument, Error>, "qmm::Error must be a std::invalid_argument");

/// Runs f, which must throw qmm::Error tagged "[op] " whose message contains every string of
/// `mentions`; the tensors of `untouched` must keep their bytes.
void expect_error(const std::string& op, const std::function<void()>& f, const std::vector<std::string>& mentions,
                  const std::vector<Tensor>& untouched = {}) {
  std::vector<std::vector<unsigned char>> before;
  for (const auto& t : untouched) before.push_back(bytes_of(t));
  bool thrown = false;
  try {
    f();
  } catch (const Error& e) {
    thrown = true;
    const std::string msg = e.what();
    if (std::getenv("QMM_SHOW_ERRORS")) std::printf("%s\n", msg.c_str());  // to review the wording
    const std::invalid_argument* as_std = &e;  // the documented base type
    EXPECT_NE(as_std, nullptr);
    EXPECT_EQ(msg.rfind("[" + op + "] ", 0), 0u) << "message does not start with [" << op << "]: " << msg;
    for (const auto& m : mentions) EXPECT_NE(msg.find(m), std::string::npos) << "message lacks '" << m << "': " << msg;
  } catch (const std::exception& e) {
    thrown = true;
    ADD_FAILURE() << "threw a " << typeid(e).name() << " that is not qmm::Error: " << e.what();
  }
  EXPECT_TRUE(thrown) << "no exception";
  for (std::size_t i = 0; i < untouched.size(); ++i) {
    EXPECT_TRUE(before[i] == bytes_of(untouched[i])) << "output " << i << " was written although the op threw";
  }
}

/// A valid problem: W (8, 128) float16 quantized at 4 bits, group 64; x (2, 3, 128).
class Validation : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(11);
    w = random_tensor({8, 128}, Dtype::float16, rng);
    q = quantize(w, 64, 4);
    x = random_tensor({2, 3, 128}, Dtype::float16, rng);
    out = poisoned({2, 3, 8}, Dtype::float16);
    deq = poisoned({8, 128}, Dtype::float16);
    oq = poisoned({8, 16}, Dtype::uint32);
    os = poisoned({8, 2}, Dtype::float16);
    ob = poisoned({8, 2}, Dtype::float16);
  }
  void matmul_into(const TensorView& xv, const TensorView& wq, const TensorView& s, const TensorView& b,
                   const TensorView& o, bool transpose = true, int group_size = 64, int bits = 4,
                   const CallOptions& opt = {}) {
    quantized_matmul_into(xv, wq, s, b, o, transpose, group_size, bits, opt);
  }
  std::vector<Tensor> outputs() const { return {out, deq, oq, os, ob}; }

  Tensor w, x, out, deq, oq, os, ob;
  QuantizedWeights q;
};

TEST_F(Validation, ValidProblemRuns) {
  // The fixture itself is valid: every op accepts it (so each test below fails for its own reason).
  EXPECT_NO_THROW(matmul_into(x, q.w_q, q.scales, q.biases, out));
  EXPECT_NO_THROW(dequantize_into(q.w_q, q.scales, q.biases, deq, 64, 4));
  EXPECT_NO_THROW(quantize_into(w, oq, os, ob, 64, 4));
}

TEST_F(Validation, QuantizedWeightNotUint32) {
  const Tensor wq_f32 = Tensor::empty(q.w_q.shape(), Dtype::float32);
  expect_error("quantized_matmul", [&] { matmul_into(x, wq_f32, q.scales, q.biases, out); }, {"uint32", "float32"},
               outputs());
  expect_error("dequantize", [&] { dequantize_into(wq_f32, q.scales, q.biases, deq, 64, 4); }, {"uint32"}, outputs());
  expect_error("quantized_matmul", [&] { quantized_matmul(x, wq_f32, q.scales, q.biases); }, {"uint32"});
}

TEST_F(Validation, ScalesAndBiasesShapesDiffer) {
  const Tensor b3 = Tensor::empty({8, 3}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, b3, out); }, {"(8, 2)", "(8, 3)"}, outputs());
  expect_error("dequantize", [&] { dequantize(q.w_q, q.scales, b3, 64, 4); }, {"(8, 2)", "(8, 3)"});
}

TEST_F(Validation, ScalesAndBiasesDtypesDiffer) {
  const Tensor b32 = Tensor::empty({8, 2}, Dtype::float32);
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, b32, out); }, {"float16", "float32"},
               outputs());
}

TEST_F(Validation, ScalesNotFloat) {
  const Tensor su = Tensor::empty({8, 2}, Dtype::uint32);
  expect_error("dequantize", [&] { dequantize_into(q.w_q, su, su, deq, 64, 4); }, {"scales", "uint32"}, outputs());
}

TEST_F(Validation, BatchShapesCannotBroadcast) {
  // x batch (2,) against a weight batch (3,).
  std::mt19937 rng(3);
  const auto q3 = quantize(random_tensor({3, 8, 128}, Dtype::float16, rng), 64, 4);
  const Tensor o = poisoned({2, 3, 8}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, q3.w_q, q3.scales, q3.biases, o); }, {"(2,)", "(3,)"}, {o});
  expect_error("quantized_matmul", [&] { quantized_matmul_output(x, q3.w_q, q3.scales, q3.biases); }, {"broadcast"});
}

TEST_F(Validation, WeightAndScalesBatchShapesDiffer) {
  // w_q (3, 8, 16) with scales (2, 8, 2): the weight's own batch shapes disagree.
  const Tensor wq3 = Tensor::empty({3, 8, 16}, Dtype::uint32);
  const Tensor s2 = Tensor::empty({2, 8, 2}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, wq3, s2, s2, out); }, {"(3, 8, 16)", "(2, 8, 2)"}, outputs());
  expect_error("dequantize", [&] { dequantize(wq3, s2, s2, 64, 4); }, {"(3, 8, 16)", "(2, 8, 2)"});
}

TEST_F(Validation, ShapesIncompatibleWithBitsAndGroup) {
  // (8, 16) words at 4 bits are 128 columns: two groups of 64, not one group (group_size=128 ok)
  // nor three. Claiming 8 bits halves the columns, so 2 scales no longer fit either.
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out, true, 32, 4); },
               {"group_size=32", "bits=4", "(8, 16)", "(8, 2)", "need scales of shape (8, 4)"}, outputs());
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, 8); },
               {"group_size=64", "bits=8"}, outputs());
  expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, q.biases, deq, 128, 4); }, {"group_size=128"},
               outputs());
  // 3 bits need a whole number of 32-bit words per row: 5 words are 160 bits = 53.3 elements.
  const Tensor wq5 = Tensor::empty({8, 5}, Dtype::uint32);
  const Tensor s1 = Tensor::empty({8, 1}, Dtype::float16);
  expect_error("dequantize", [&] { dequantize(wq5, s1, s1, 32, 3); }, {"bits=3", "160 bits"});
}

TEST_F(Validation, LastDimensionOfXDoesNotMatch) {
  std::mt19937 rng(5);
  const Tensor x100 = random_tensor({2, 3, 100}, Dtype::float16, rng);
  expect_error("quantized_matmul", [&] { matmul_into(x100, q.w_q, q.scales, q.biases, out); },
               {"(2, 3, 100)", "K=128", "transpose=true"}, outputs());
  // transpose=false reads W as (K=8, N=128): x must end in 8.
  expect_error("quantized_matmul", [&] { quantized_matmul(x, q.w_q, q.scales, q.biases, false, 64, 4); },
               {"(2, 3, 128)", "K=8", "transpose=false"});
}

TEST_F(Validation, UnsupportedBits) {
  for (int bits : {0, 1, 7, 16, 32}) {
    SCOPED_TRACE("bits=" + std::to_string(bits));
    const std::string b = "bits=" + std::to_string(bits);
    expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, bits); }, {b},
                 outputs());
    expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, q.biases, deq, 64, bits); }, {b}, outputs());
    expect_error("quantize", [&] { quantize_into(w, oq, os, ob, 64, bits); }, {b}, outputs());
    expect_error("quantize", [&] { quantize(w, 64, bits); }, {b});
  }
}

TEST_F(Validation, UnsupportedGroupSize) {
  for (int g : {0, 16, 96, 256, -64}) {
    SCOPED_TRACE("group_size=" + std::to_string(g));
    const std::string m = "group_size=" + std::to_string(g);
    expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out, true, g, 4); }, {m},
                 outputs());
    expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, q.biases, deq, g, 4); }, {m}, outputs());
    expect_error("quantize", [&] { quantize_into(w, oq, os, ob, g, 4); }, {m}, outputs());
    expect_error("quantize", [&] { quantize(w, g, 4); }, {m});
  }
}

TEST_F(Validation, NonFloatInputs) {
  const Tensor xu = Tensor::empty({2, 3, 128}, Dtype::uint32);
  expect_error("quantized_matmul", [&] { matmul_into(xu, q.w_q, q.scales, q.biases, out); }, {"x", "uint32"},
               outputs());
  const Tensor wu = Tensor::empty({8, 128}, Dtype::uint32);
  expect_error("quantize", [&] { quantize(wu, 64, 4); }, {"uint32"});
  expect_error("quantize", [&] { quantize_into(wu, oq, os, ob, 64, 4); }, {"uint32"}, outputs());
  expect_error("dequantize", [&] { dequantize(q.w_q, q.scales, q.biases, 64, 4, Dtype::uint32); }, {"uint32"});
}

TEST_F(Validation, WeightOfRankBelowTwo) {
  const Tensor wq1 = Tensor::empty({16}, Dtype::uint32);
  const Tensor s1 = Tensor::empty({2}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, wq1, s1, s1, out); }, {"(16,)"}, outputs());
  expect_error("dequantize", [&] { dequantize(wq1, s1, s1, 64, 4); }, {"(16,)"});
  const Tensor w1 = Tensor::empty({128}, Dtype::float16);
  expect_error("quantize", [&] { quantize(w1, 64, 4); }, {"(128,)", "2 dimensions"});
  expect_error("quantize", [&] { quantize_into(w1, oq, os, ob, 64, 4); }, {"(128,)"}, outputs());
}

TEST_F(Validation, ScalarX) {
  const Tensor x0 = Tensor::empty({}, Dtype::float16);
  expect_error("quantized_matmul", [&] { quantized_matmul(x0, q.w_q, q.scales, q.biases); }, {"x"});
}

TEST_F(Validation, QuantizeLastDimensionNotDivisibleByGroup) {
  const Tensor w96 = Tensor::empty({8, 96}, Dtype::float16);
  expect_error("quantize", [&] { quantize(w96, 64, 4); }, {"(8, 96)", "group_size=64"});
  expect_error("quantize", [&] { quantize_into(w96, oq, os, ob, 64, 4); }, {"(8, 96)", "group_size=64"}, outputs());
}

TEST_F(Validation, NullData) {
  const TensorView x_null(nullptr, {2, 3, 128}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x_null, q.w_q, q.scales, q.biases, out); }, {"x", "null"},
               outputs());
  const TensorView wq_null(nullptr, q.w_q.shape(), Dtype::uint32);
  expect_error("quantized_matmul", [&] { matmul_into(x, wq_null, q.scales, q.biases, out); }, {"w_q", "null"},
               outputs());
  const TensorView b_null(nullptr, q.biases.shape(), Dtype::float16);
  expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, b_null, deq, 64, 4); }, {"biases", "null"},
               outputs());
  const TensorView w_null(nullptr, {8, 128}, Dtype::float16);
  expect_error("quantize", [&] { quantize_into(w_null, oq, os, ob, 64, 4); }, {"w", "null"}, outputs());
  expect_error("quantize", [&] { quantize(w_null, 64, 4); }, {"null"});
  const TensorView out_null(nullptr, {2, 3, 8}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out_null); }, {"out", "null"},
               outputs());
  const TensorView s_null(nullptr, {8, 2}, Dtype::float16);
  expect_error("quantize", [&] { quantize_into(w, oq, s_null, ob, 64, 4); }, {"scales", "null"}, outputs());
}

TEST_F(Validation, UnsupportedStrides) {
  // x viewed as a transposed (K, M) buffer, w_q with a padded row pitch, a strided output.
  std::mt19937 rng(9);
  const Tensor xt = random_tensor({128, 3}, Dtype::float16, rng);
  const TensorView x_transposed(xt.data(), {3, 128}, {1, 3}, Dtype::float16);
  const Tensor o2 = poisoned({3, 8}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x_transposed, q.w_q, q.scales, q.biases, o2); },
               {"x", "(3, 128)", "(1, 3)", "contiguous"}, {o2});
  const Tensor padded = Tensor::empty({8, 20}, Dtype::uint32);
  const TensorView wq_pitch(padded.data(), {8, 16}, {20, 1}, Dtype::uint32);
  expect_error("dequantize", [&] { dequantize_into(wq_pitch, q.scales, q.biases, deq, 64, 4); },
               {"w_q", "(20, 1)"}, outputs());
  const Tensor big = poisoned({2, 3, 16}, Dtype::float16);
  const TensorView out_strided(big.data(), {2, 3, 8}, {48, 16, 1}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out_strided); },
               {"out", "(48, 16, 1)"}, {big});
  const Tensor wbig = random_tensor({8, 256}, Dtype::float16, rng);
  const TensorView w_strided(wbig.data(), {8, 128}, {256, 1}, Dtype::float16);
  expect_error("quantize", [&] { quantize_into(w_strided, oq, os, ob, 64, 4); }, {"w", "(256, 1)"}, outputs());
  const TensorView wrong_rank(x.data(), {2, 3, 128}, {384, 128}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(wrong_rank, q.w_q, q.scales, q.biases, out); }, {"strides"},
               outputs());
}

TEST_F(Validation, OutputAliasesInput) {
  // out placed over x's own memory (x is larger than out: the first 6*8 halves of x).
  const TensorView out_on_x(x.data(), {2, 3, 8}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out_on_x); }, {"out", "x", "overlaps"},
               {x});
  // Dequantizing one row of 32 elements over the memory of its own scales.
  const TensorView wq_row(q.w_q.data(), {1, 4}, Dtype::uint32);
  const TensorView s_row(q.scales.data(), {1, 1}, Dtype::float16);
  const TensorView b_row(q.biases.data(), {1, 1}, Dtype::float16);
  const TensorView deq_over(q.scales.data(), {1, 32}, Dtype::float16);
  expect_error("dequantize", [&] { dequantize_into(wq_row, s_row, b_row, deq_over, 32, 4); }, {"out", "scales"},
               {q.scales});
  // quantize with scales and biases sharing one buffer, and w_q over the input.
  expect_error("quantize", [&] { quantize_into(w, oq, os, os, 64, 4); }, {"scales", "biases", "overlaps"}, outputs());
  const TensorView oq_on_w(w.data(), {8, 16}, Dtype::uint32);
  expect_error("quantize", [&] { quantize_into(w, oq_on_w, os, ob, 64, 4); }, {"w_q", "overlaps"}, {w, os, ob});
}

TEST_F(Validation, WrongOutputShapeOrDtype) {
  const Tensor o_shape = poisoned({2, 3, 9}, Dtype::float16);
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, o_shape); },
               {"(2, 3, 8)", "(2, 3, 9)"}, {o_shape});
  const Tensor o_dtype = poisoned({2, 3, 8}, Dtype::float32);  // promote(fp16, fp16) is fp16
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, o_dtype); },
               {"float16", "float32"}, {o_dtype});
  const Tensor d_shape = poisoned({8, 64}, Dtype::float16);
  expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, q.biases, d_shape, 64, 4); },
               {"(8, 128)", "(8, 64)"}, {d_shape});
  const Tensor d_u32 = poisoned({8, 128}, Dtype::uint32);
  expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, q.biases, d_u32, 64, 4); }, {"uint32"}, {d_u32});
  const Tensor oq_wrong = poisoned({8, 8}, Dtype::uint32);
  expect_error("quantize", [&] { quantize_into(w, oq_wrong, os, ob, 64, 4); }, {"w_q", "(8, 16)", "(8, 8)"},
               {oq_wrong, os, ob});
  const Tensor os_dtype = poisoned({8, 2}, Dtype::float32);  // scales take w's dtype
  expect_error("quantize", [&] { quantize_into(w, oq, os_dtype, ob, 64, 4); }, {"scales", "float16", "float32"},
               {oq, os_dtype, ob});
  const Tensor ob_shape = poisoned({8, 3}, Dtype::float16);
  expect_error("quantize", [&] { quantize_into(w, oq, os, ob_shape, 64, 4); }, {"biases", "(8, 3)"},
               {oq, os, ob_shape});
}

TEST_F(Validation, UnknownKernelName) {
  CallOptions bogus;
  bogus.kernel = "bogus";
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, 4, bogus); },
               {"'bogus'", "reference"}, outputs());
  expect_error("dequantize", [&] { dequantize(q.w_q, q.scales, q.biases, 64, 4, std::nullopt, bogus); }, {"'bogus'"});
  expect_error("quantize", [&] { quantize_into(w, oq, os, ob, 64, 4, bogus); }, {"'bogus'"}, outputs());
  expect_error("quantize", [&] { quantize(w, 64, 4, bogus); }, {"'bogus'"});
  // A name of another op is not a kernel of this op.
  CallOptions other;
  other.kernel = kernel_names(Device::cpu(), "quantize").front();
  expect_error("quantized_matmul", [&] { matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, 4, other); },
               {other.kernel}, outputs());
  expect_error("kernel_names", [&] { kernel_names(Device::cpu(), "matmul"); }, {"'matmul'"});
}

TEST_F(Validation, TensorsOnDifferentDevices) {
  // A view that claims to live on a CUDA device: on a CPU-only build or machine the op must refuse
  // it, and on a CUDA machine mixing devices is refused; either way nothing is dereferenced.
  const TensorView wq_cuda(q.w_q.data(), q.w_q.shape(), Dtype::uint32, Device::cuda(0));
  expect_error("quantized_matmul", [&] { matmul_into(x, wq_cuda, q.scales, q.biases, out); }, {"cuda:0"}, outputs());
  const TensorView deq_cuda(deq.data(), deq.shape(), Dtype::float16, Device::cuda(0));
  expect_error("dequantize", [&] { dequantize_into(q.w_q, q.scales, q.biases, deq_cuda, 64, 4); }, {"cuda:0"},
               outputs());
}

TEST_F(Validation, DescribeValidatesLikeTheOp) {
  const Tensor xu = Tensor::empty({2, 3, 128}, Dtype::uint32);
  expect_error("quantized_matmul", [&] { describe_quantized_matmul(xu, q.w_q, q.scales, q.biases); }, {"uint32"});
  CallOptions bogus;
  bogus.kernel = "bogus";
  expect_error("quantized_matmul", [&] { describe_quantized_matmul(x, q.w_q, q.scales, q.biases, true, 64, 4, bogus); },
               {"'bogus'"});
}

}  // namespace
}  // namespace qmm::test
