// CUDA backend against the CPU: quantize/dequantize bit for bit, every quantized_matmul kernel
// configuration forced directly against the fp64 reference on fresh random data (outputs
// poisoned first), awkward M/N/K, batch invariance, CUDA-graph capture, batched inputs.
// Label `cuda`: every test skips itself where there is no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qmm/qmm.h"
#include "tests/test_support.h"

#if defined(QMM_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace qmm::test {
namespace {

#define QMM_REQUIRE_GPU() \
  if (!qmm::cuda_available()) GTEST_SKIP() << "no CUDA device"

const Device kGpu = Device::cuda(0);

void store_element(const Tensor& t, std::int64_t i, double v) {
  const auto f = static_cast<float>(v);
  switch (t.dtype()) {
    case Dtype::float16:
      t.data_as<std::uint16_t>()[i] = float_to_float16_bits(f);
      break;
    case Dtype::bfloat16:
      t.data_as<std::uint16_t>()[i] = float_to_bfloat16_bits(f);
      break;
    default:
      t.data_as<float>()[i] = f;
      break;
  }
}

Tensor poisoned_on(const Shape& shape, Dtype dtype, Device device) {
  Tensor host = poisoned(shape, dtype);
  return device.type == DeviceType::cpu ? host : host.to(device);
}

/// Error bound of a CUDA path that forms each dequantized weight in the 16-bit weight dtype
/// (one rounding of s*q + b, relative u_w) and accumulates in fp32: the fp32-path bound plus
/// u_w times the magnitude.
double cuda_tolerance(std::int64_t K, Dtype w_dtype, Dtype out_dtype, double exact, double magnitude) {
  const double uw = w_dtype == Dtype::float32 ? 0.0 : unit_roundoff(w_dtype);
  return float32_path_tolerance(K, out_dtype, exact, magnitude) + 2.0 * uw * magnitude;
}

struct Case {
  std::int64_t M, N, K;
  int bits, group;
  Dtype xd, wd;
  bool transpose;
  std::string kernel;
};

std::string describe(const Case& c) {
  return "M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
         " bits=" + std::to_string(c.bits) + " g=" + std::to_string(c.group) + " x=" + dtype_name(c.xd) +
         " w=" + dtype_name(c.wd) + " transpose=" + (c.transpose ? "true" : "false") + " kernel=" + c.kernel;
}

/// Runs one case on the GPU and compares it element by element with the CPU fp64 reference.
void check_case(const Case& c, std::mt19937& rng) {
  SCOPED_TRACE(describe(c));
  const Shape wshape = c.transpose ? Shape{c.N, c.K} : Shape{c.K, c.N};
  CallOptions ref;
  ref.kernel = "reference";
  const QuantizedWeights q = quantize(random_tensor(wshape, c.wd, rng, 0.5f, 0.02f), c.group, c.bits, ref);
  const Tensor x = random_tensor({c.M, c.K}, c.xd, rng);
  const Dtype out_dtype = promote_types(c.xd, c.wd);
  const Tensor expected = Tensor::empty({c.M, c.N}, out_dtype);
  quantized_matmul_into(x, q.w_q, q.scales, q.biases, expected, c.transpose, c.group, c.bits, ref);

  const Tensor xg = x.to(kGpu), wq = q.w_q.to(kGpu), sg = q.scales.to(kGpu), bg = q.biases.to(kGpu);
  const Tensor out = poisoned_on({c.M, c.N}, out_dtype, kGpu);
  CallOptions opts;
  opts.kernel = c.kernel;
  quantized_matmul_into(xg, wq, sg, bg, out, c.transpose, c.group, c.bits, opts);
  synchronize();
  const Tensor got = out.to(Device::cpu());

  const MatmulMagnitudes mags = matmul_magnitudes(x, q.w_q, q.scales, q.biases, c.transpose, c.group, c.bits, c.M, c.K, c.N);
  int failures = 0;
  for (std::int64_t i = 0; i < c.M * c.N && failures < 5; ++i) {
    const double g = element(got, i);
    const double e = mags.exact[static_cast<std::size_t>(i)];
    const double tol = cuda_tolerance(c.K, c.wd, out_dtype, e, mags.magnitude[static_cast<std::size_t>(i)]) +
                       unit_roundoff(out_dtype) * std::fabs(element(expected, i) - e);
    if (!(std::fabs(g - e) <= tol)) {  // NaN (an unwritten, poisoned element) fails too
      ADD_FAILURE() << "at (" << i / c.N << ", " << i % c.N << "): got " << g << ", exact " << e << ", reference "
                    << element(expected, i) << ", tolerance " << tol;
      ++failures;
    }
  }
}

std::vector<std::string> mma_kernels() {
  return {"qmv_tma_m8",       "qmv_tma_m16",      "qmv_staged_m8", "qmv_staged_m16", "qmv_staged_m32",
          "qmv_staged_m64",   "qmv_mma_m8",       "qmv_mma_m16",   "qmv_mma_m32",    "qmv_mma_m64",
          "qmv_mma_m8_c3",    "qmv_mma_m16_c8",   "qmv_mma_m32_c2", "qmv_mma_m64_c16", "qmv_mma_m8_wg",
          "qmv_mma_m16_wg",   "qmv_mma_m32_wg",   "qmv_mma_m64_wg", "qmv_mma_m32_c3_wg", "qmv_mma_m64_c8_wg",
          "qmv_mma_m64_b7_wg", "qmv_mma_m8_c2_k2", "qmv_mma_m16_c3_k2"};
}
/// qmv_tma and qmv_mma's cluster split ("_c<C>") need an sm_90 device, qmv_mma's wgmma MMAs
/// ("_wg") compute capability 9.0 exactly and a build with sm_90a code (then kernel_names lists
/// them); elsewhere their cases are skipped (dispatch never picks them there).
bool device_runs(const std::string& kernel) {
  const int cc = device_info(kGpu).compute_capability;
  if (kernel.size() > 3 && kernel.compare(kernel.size() - 3, 3, "_wg") == 0) {
    const auto names = kernel_names(kGpu, "quantized_matmul");
    return cc == 90 && std::find(names.begin(), names.end(), "qmv_mma_m64_wg") != names.end();
  }
  if (kernel.rfind("qmv_tma", 0) != 0 && kernel.find("_c") == std::string::npos) return true;
  return cc >= 90;
}
/// K for the every-format sweep: qmv_tma takes K in 256-value slices (a 512-value K still splits
/// rows across stream-K blocks); a block K split in two ("_k2") gets 11 segments, so that with 2
/// or 3 ranks both halves of every block have work; the others get a K that ends inside a
/// 256-value slice.
std::int64_t sweep_k(const std::string& kernel) {
  if (kernel.rfind("qmv_tma", 0) == 0) return 512;
  return kernel.find("_k2") != std::string::npos ? 1408 : 384;
}
/// Bit widths a tensor-core kernel family runs (qmv_staged: 4 and 8).
std::vector<int> bits_of(const std::string& kernel) {
  if (kernel.rfind("qmv_staged", 0) == 0) return {4, 8};
  return {2, 3, 4, 5, 6, 8};
}

TEST(CudaQuantize, BitIdenticalToCpu) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(1234);
  for (Dtype dt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
    for (int bits : {2, 3, 4, 5, 6, 8}) {
      for (int g : {32, 64, 128}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " bits=" + std::to_string(bits) + " g=" + std::to_string(g));
        // Rows of random values plus constant, zero and all-negative rows.
        Tensor w = random_tensor({5, 3, 256}, dt, rng, 2.0f, 0.3f);
        for (int i = 0; i < 256; ++i) {
          store_element(w, 0 * 256 + i, 0.75);
          store_element(w, 1 * 256 + i, 0.0);
          store_element(w, 2 * 256 + i, -std::fabs(element(w, 2 * 256 + i)) - 0.01);
        }
        const QuantizedWeights cpu = quantize(w, g, bits);
        const QuantizedWeights gpu = quantize(w.to(kGpu), g, bits);
        EXPECT_TRUE(bitwise_equal(cpu.w_q, gpu.w_q.to(Device::cpu())));
        EXPECT_TRUE(bitwise_equal(cpu.scales, gpu.scales.to(Device::cpu())));
        EXPECT_TRUE(bitwise_equal(cpu.biases, gpu.biases.to(Device::cpu())));
        const Tensor dq_cpu = dequantize(cpu.w_q, cpu.scales, cpu.biases, g, bits);
        const Tensor out = poisoned_on(dq_cpu.shape(), dq_cpu.dtype(), kGpu);
        dequantize_into(gpu.w_q, gpu.scales, gpu.biases, out, g, bits);
        EXPECT_TRUE(bitwise_equal(dq_cpu, out.to(Device::cpu())));
      }
    }
  }
}

TEST(CudaMatmul, EveryMmaConfigEveryFormat) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(7);
  for (const auto& kernel : mma_kernels()) {
    if (!device_runs(kernel)) continue;
    for (Dtype dt : {Dtype::float16, Dtype::bfloat16}) {
      for (int bits : bits_of(kernel)) {
        for (int g : {32, 64, 128}) {
          for (std::int64_t M : {1, 5, 13}) check_case({M, 200, sweep_k(kernel), bits, g, dt, dt, true, kernel}, rng);
        }
      }
    }
  }
}

/// qmv_mma's cluster split: cluster sizes 1..16, clusters with more ranks than K segments (empty
/// ranks), K tails, N tails, one to eight token tiles. The sizes include ones that divide a
/// partial's 8 or 16 pushed chunks unevenly (3, 5, 6, 7, 12) and ones with ranks that receive
/// none (12, 16), for cluster_sum_pushed.
TEST(CudaMatmul, ClusterSplitEveryClusterSize) {
  QMM_REQUIRE_GPU();
  if (!device_runs("qmv_mma_c2")) GTEST_SKIP() << "thread-block clusters need an sm_90 device";
  std::mt19937 rng(17);
  for (int cluster : {1, 2, 3, 4, 5, 6, 7, 8, 12, 16}) {
    const std::string kernel = "qmv_mma_c" + std::to_string(cluster);
    for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{300, 1088}, {129, 128}, {1024, 2048}, {8, 320}}) {
      for (std::int64_t M : {1, 8, 9, 16, 17, 40}) {
        check_case({M, N, K, 4, 64, Dtype::float16, Dtype::float16, true, kernel}, rng);
        check_case({M, N, K, 3, 32, Dtype::bfloat16, Dtype::bfloat16, true, kernel}, rng);
      }
    }
  }
  // Each block's K run split in two ("_k2", 8 and 16 tokens): halves of 0..8 segments, the K tail
  // in the second half, empty ranks.
  for (int cluster : {1, 2, 3, 5, 8}) {
    const std::string kernel = "qmv_mma_c" + std::to_string(cluster) + "_k2";
    for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{300, 1088}, {129, 128}, {1024, 2048}, {8, 320}}) {
      for (std::int64_t M : {1, 8, 9, 16}) {
        check_case({M, N, K, 4, 64, Dtype::float16, Dtype::float16, true, kernel}, rng);
        check_case({M, N, K, 3, 32, Dtype::bfloat16, Dtype::bfloat16, true, kernel}, rng);
      }
    }
  }
}

/// qmv_mma's wgmma MMAs ("_wg", compute capability 9.0): every token tile count, stream-K and
/// cluster split, token counts around and past each tile (tokens past M are zero columns of the
/// staged x), N and K tails, both 16-bit dtypes.
TEST(CudaMatmul, WgmmaEveryTokenTile) {
  QMM_REQUIRE_GPU();
  if (!device_runs("qmv_mma_wg")) GTEST_SKIP() << "wgmma needs a compute capability 9.0 device";
  std::mt19937 rng(19);
  for (const char* kernel : {"qmv_mma_wg", "qmv_mma_m8_wg", "qmv_mma_m16_wg", "qmv_mma_m32_wg", "qmv_mma_m64_wg",
                             "qmv_mma_c4_wg", "qmv_mma_m64_c2_wg"}) {
    for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{300, 1088}, {129, 128}, {8, 320}}) {
      for (std::int64_t M : {1, 9, 16, 17, 31, 33, 40, 41, 48, 49, 64, 65, 100}) {
        check_case({M, N, K, 4, 64, Dtype::float16, Dtype::float16, true, kernel}, rng);
        check_case({M, N, K, 3, 32, Dtype::bfloat16, Dtype::bfloat16, true, kernel}, rng);
      }
    }
    // Many K segments per block and row blocks per call.
    check_case({64, 1024, 2048, 4, 64, Dtype::float16, Dtype::float16, true, kernel}, rng);
  }
}

TEST(CudaMatmul, AwkwardMAroundTokenTiles) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(11);
  std::vector<std::int64_t> ms;
  for (std::int64_t m = 1; m <= 17; ++m) ms.push_back(m);
  for (std::int64_t m : {31, 32, 33, 40, 41, 48, 49, 63, 64, 65, 127, 128, 129}) ms.push_back(m);
  for (std::int64_t M : ms) check_case({M, 264, 640, 4, 64, Dtype::float16, Dtype::float16, true, ""}, rng);
}

TEST(CudaMatmul, NAndKAroundTileAndGroupBoundaries) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(13);
  // N around the 16-row MMA tile and the 128-row block; K around the 32-value chunk, the
  // 128-value segment and the group.
  for (std::int64_t N : {1, 7, 8, 15, 16, 17, 127, 128, 129, 300}) {
    for (std::int64_t K : {32, 64, 96, 128, 160, 192, 256, 288, 320, 1056}) {
      for (int g : {32, 64, 128}) {
        if (K % g != 0) continue;
        // 4-bit through dispatch with one and two token tiles, including K tails inside a
        // 128-value segment (K = 64, 192, 320).
        check_case({3, N, K, 4, g, Dtype::float16, Dtype::float16, true, ""}, rng);
        check_case({12, N, K, 4, g, Dtype::bfloat16, Dtype::bfloat16, true, ""}, rng);
        check_case({9, N, K, 3, g, Dtype::bfloat16, Dtype::bfloat16, true, ""}, rng);
        check_case({2, N, K, 8, g, Dtype::bfloat16, Dtype::bfloat16, true, ""}, rng);
        check_case({11, N, K, 4, g, Dtype::float16, Dtype::float16, true, "qmv_staged_m16"}, rng);
        check_case({5, N, K, 8, g, Dtype::bfloat16, Dtype::bfloat16, true, "qmv_staged_m8"}, rng);
      }
    }
  }
  // qmv_tma: K in 256-value slices; N around the 128-row block (rows past N come from the TMA's
  // zero fill and the clamped scale copies).
  if (device_runs("qmv_tma")) {
    for (std::int64_t N : {1, 7, 8, 15, 16, 17, 127, 128, 129, 300}) {
      for (std::int64_t K : {256, 512, 1280}) {
        for (int g : {32, 64, 128}) {
          check_case({3, N, K, 4, g, Dtype::float16, Dtype::float16, true, "qmv_tma_m8"}, rng);
          check_case({11, N, K, 4, g, Dtype::bfloat16, Dtype::bfloat16, true, "qmv_tma_m16"}, rng);
          check_case({2, N, K, 8, g, Dtype::bfloat16, Dtype::bfloat16, true, "qmv_tma"}, rng);
          check_case({17, N, K, 3, g, Dtype::float16, Dtype::float16, true, "qmv_tma"}, rng);
        }
      }
    }
  }
}

TEST(CudaMatmul, LargeKSplitAcrossBlocks) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(17);
  // Few row blocks and many K segments: every row block is shared by many stream-K blocks.
  check_case({4, 256, 8192, 4, 64, Dtype::float16, Dtype::float16, true, ""}, rng);
  check_case({16, 1024, 5120, 4, 64, Dtype::float16, Dtype::float16, true, ""}, rng);
  check_case({2, 5120, 1024, 8, 128, Dtype::bfloat16, Dtype::bfloat16, true, ""}, rng);
  if (device_runs("qmv_tma")) {
    check_case({4, 256, 8192, 4, 64, Dtype::float16, Dtype::float16, true, "qmv_tma"}, rng);
    check_case({16, 1024, 5120, 4, 64, Dtype::float16, Dtype::float16, true, "qmv_tma"}, rng);
    check_case({7, 1024, 5120, 4, 64, Dtype::float16, Dtype::float16, true, "qmv_tma_m8_b1000"}, rng);
    check_case({2, 5120, 1024, 8, 128, Dtype::bfloat16, Dtype::bfloat16, true, "qmv_tma"}, rng);
  }
}

TEST(CudaMatmul, CudaCoreKernelsEveryDtypeMix) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(19);
  const Dtype all[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16};
  for (Dtype xd : all) {
    for (Dtype wd : all) {
      for (int bits : {2, 3, 4, 5, 6, 8}) {
        for (int g : {32, 128}) {
          check_case({3, 136, 256, bits, g, xd, wd, true, "qmv_warp_rows"}, rng);
          check_case({10, 256, 136, bits, g == 32 ? 32 : 64, xd, wd, false, "qvm_columns"}, rng);
        }
      }
      check_case({4, 200, 384, 4, 64, xd, wd, true, ""}, rng);   // dispatch's choice
      check_case({4, 192, 384, 4, 64, xd, wd, false, ""}, rng);  // transpose=false dispatch
    }
  }
}

/// Row r of a call with M rows is bit-identical to the call with row r alone, for M = 1..16.
TEST(CudaMatmul, BatchInvariance) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(23);
  for (const std::string kernel : {"", "qmv_tma", "qmv_mma", "qmv_mma_c3", "qmv_mma_c8", "qmv_mma_c8_k2"}) {
    if (!device_runs(kernel)) continue;
    CallOptions opts;
    opts.kernel = kernel;
    SCOPED_TRACE("kernel '" + kernel + "'");
    for (Dtype dt : {Dtype::float16, Dtype::bfloat16}) {
      // 4160 = 32.5 segments: the row blocks' last segment is the K-tail path after the
      // one-token-tile kernel's two-segment loop.
      for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{1024, 5120}, {5120, 1024}, {300, 4096}, {260, 4160}}) {
        if (kernel == "qmv_tma" && K % 256 != 0) continue;  // qmv_tma takes K in 256-value slices
        SCOPED_TRACE(std::string(dtype_name(dt)) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
        const QuantizedWeights q = quantize(random_tensor({N, K}, dt, rng, 0.5f).to(kGpu), 64, 4);
        const Tensor x = random_tensor({16, K}, dt, rng).to(kGpu);
        std::vector<Tensor> alone;
        for (std::int64_t r = 0; r < 16; ++r) {
          const TensorView xr(static_cast<char*>(x.data()) + r * K * 2, {1, K}, dt, kGpu);
          alone.push_back(quantized_matmul(xr, q.w_q, q.scales, q.biases, true, 64, 4, opts).to(Device::cpu()));
        }
        for (std::int64_t M = 1; M <= 16; ++M) {
          const TensorView xm(x.data(), {M, K}, dt, kGpu);
          const Tensor out = quantized_matmul(xm, q.w_q, q.scales, q.biases, true, 64, 4, opts).to(Device::cpu());
          for (std::int64_t r = 0; r < M; ++r) {
            const Tensor row = Tensor::empty({1, N}, dt);
            std::memcpy(row.data(), static_cast<char*>(out.data()) + r * N * 2, static_cast<std::size_t>(N) * 2);
            ASSERT_TRUE(bitwise_equal(alone[static_cast<std::size_t>(r)], row)) << "M=" << M << " row " << r;
          }
        }
      }
    }
  }
}

TEST(CudaMatmul, BatchedAndBroadcastInputs) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(29);
  const Dtype dt = Dtype::float16;
  const std::int64_t M = 5, N = 136, K = 256;
  const QuantizedWeights q = quantize(random_tensor({3, N, K}, dt, rng, 0.5f), 64, 4);
  const Tensor x = random_tensor({2, 1, M, K}, dt, rng);
  const Tensor out = poisoned_on({2, 3, M, N}, dt, kGpu);
  quantized_matmul_into(x.to(kGpu), q.w_q.to(kGpu), q.scales.to(kGpu), q.biases.to(kGpu), out);
  const Tensor got = out.to(Device::cpu());
  // Output batch (i, j) is x[i] @ w[j]^T: compare each slice with its exact value.
  for (std::int64_t i = 0; i < 2; ++i) {
    for (std::int64_t j = 0; j < 3; ++j) {
      const MatmulMagnitudes mags =
          matmul_magnitudes(x, q.w_q, q.scales, q.biases, true, 64, 4, M, K, N, i * M * K, j);
      for (std::int64_t e = 0; e < M * N; ++e) {
        const double exact = mags.exact[static_cast<std::size_t>(e)];
        const double tol = cuda_tolerance(K, dt, dt, exact, mags.magnitude[static_cast<std::size_t>(e)]);
        ASSERT_NEAR(element(got, (i * 3 + j) * M * N + e), exact, tol) << "batch (" << i << ", " << j << ") at " << e;
      }
    }
  }
}

#if defined(QMM_HAVE_CUDA)
TEST(CudaMatmul, CapturableInCudaGraph) {
  QMM_REQUIRE_GPU();
  for (const std::string kernel : {"", "qmv_tma", "qmv_mma", "qmv_mma_c8"}) {
    if (!device_runs(kernel)) continue;
    SCOPED_TRACE("kernel '" + kernel + "'");
    std::mt19937 rng(31);
    const Dtype dt = Dtype::float16;
    const QuantizedWeights q = quantize(random_tensor({1024, 5120}, dt, rng, 0.5f).to(kGpu), 64, 4);
    const Tensor x = random_tensor({3, 5120}, dt, rng).to(kGpu);
    CallOptions opts;
    opts.kernel = kernel;
    const Tensor eager = quantized_matmul(x, q.w_q, q.scales, q.biases, true, 64, 4, opts);
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    opts.stream.handle = stream;
    const Tensor out = poisoned_on({3, 1024}, dt, kGpu);
    quantized_matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, 4, opts);  // allocates the workspace
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const Tensor graph_out = poisoned_on({3, 1024}, dt, kGpu);
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    quantized_matmul_into(x, q.w_q, q.scales, q.biases, graph_out, true, 64, 4, opts);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_TRUE(bitwise_equal(eager.to(Device::cpu()), graph_out.to(Device::cpu())));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}
#endif

TEST(CudaMatmul, ForcedKernelThatCannotRunWritesNothing) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(37);
  const QuantizedWeights q = quantize(random_tensor({64, 128}, Dtype::float32, rng).to(kGpu), 64, 4);
  const Tensor x = random_tensor({2, 128}, Dtype::float32, rng).to(kGpu);
  const Tensor out = poisoned_on({2, 64}, Dtype::float32, kGpu);
  const Tensor before = out.to(Device::cpu());
  CallOptions opts;
  for (const char* kernel : {"qmv_mma_m8", "qmv_staged_m8", "qmv_tma_m8"}) {  // need 16-bit activations
    opts.kernel = kernel;
    EXPECT_THROW(quantized_matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, 4, opts), Error) << kernel;
    EXPECT_TRUE(bitwise_equal(before, out.to(Device::cpu())));
  }
  // qmv_staged runs 4- and 8-bit weights only.
  const QuantizedWeights q3 = quantize(random_tensor({64, 128}, Dtype::float16, rng).to(kGpu), 64, 3);
  const Tensor x16 = random_tensor({2, 128}, Dtype::float16, rng).to(kGpu);
  const Tensor out16 = poisoned_on({2, 64}, Dtype::float16, kGpu);
  const Tensor before16 = out16.to(Device::cpu());
  opts.kernel = "qmv_staged_m8";
  EXPECT_THROW(quantized_matmul_into(x16, q3.w_q, q3.scales, q3.biases, out16, true, 64, 3, opts), Error);
  EXPECT_TRUE(bitwise_equal(before16, out16.to(Device::cpu())));
  // qmv_tma takes K in 256-value slices: K = 128 cannot run (on any device).
  opts.kernel = "qmv_tma";
  EXPECT_THROW(quantized_matmul_into(x16, q3.w_q, q3.scales, q3.biases, out16, true, 64, 3, opts), Error);
  EXPECT_TRUE(bitwise_equal(before16, out16.to(Device::cpu())));
}

/// Scales and biases that are only 2-byte aligned (views into a larger buffer): qmv_mma reads
/// them; forcing qmv_staged (4-byte cp.async) is an error that writes nothing.
TEST(CudaMatmul, MisalignedScales) {
  QMM_REQUIRE_GPU();
  std::mt19937 rng(41);
  const Dtype dt = Dtype::float16;
  const std::int64_t M = 3, N = 136, K = 512;
  const QuantizedWeights q = quantize(random_tensor({N, K}, dt, rng, 0.5f), 64, 4);
  const std::int64_t groups = N * K / 64;
  // Copy scales and biases one element into buffers of groups + 1 elements.
  Tensor s_buf = Tensor::empty({groups + 1}, dt), b_buf = Tensor::empty({groups + 1}, dt);
  std::memcpy(static_cast<char*>(s_buf.data()) + 2, q.scales.data(), static_cast<std::size_t>(groups) * 2);
  std::memcpy(static_cast<char*>(b_buf.data()) + 2, q.biases.data(), static_cast<std::size_t>(groups) * 2);
  const Tensor s_gpu = s_buf.to(kGpu), b_gpu = b_buf.to(kGpu);
  const TensorView s_view(static_cast<char*>(s_gpu.data()) + 2, {N, K / 64}, dt, kGpu);
  const TensorView b_view(static_cast<char*>(b_gpu.data()) + 2, {N, K / 64}, dt, kGpu);
  const Tensor x = random_tensor({M, K}, dt, rng);
  const Tensor xg = x.to(kGpu), wq = q.w_q.to(kGpu);
  // qmv_mma_m8, with the cluster split on sm_90 (2 row blocks).
  EXPECT_EQ(describe_quantized_matmul(xg, wq, s_view, b_view).kernel.rfind("qmv_mma_m8", 0), 0u);
  const Tensor out = poisoned_on({M, N}, dt, kGpu);
  quantized_matmul_into(xg, wq, s_view, b_view, out);
  synchronize();
  const Tensor got = out.to(Device::cpu());
  const MatmulMagnitudes mags = matmul_magnitudes(x, q.w_q, q.scales, q.biases, true, 64, 4, M, K, N);
  for (std::int64_t e = 0; e < M * N; ++e) {
    const double exact = mags.exact[static_cast<std::size_t>(e)];
    ASSERT_NEAR(element(got, e), exact, cuda_tolerance(K, dt, dt, exact, mags.magnitude[static_cast<std::size_t>(e)]))
        << e;
  }
  const Tensor out2 = poisoned_on({M, N}, dt, kGpu);
  const Tensor before = out2.to(Device::cpu());
  CallOptions opts;
  for (const char* kernel : {"qmv_staged_m8", "qmv_tma_m8"}) {
    if (!device_runs(kernel)) continue;
    opts.kernel = kernel;
    EXPECT_THROW(quantized_matmul_into(xg, wq, s_view, b_view, out2, true, 64, 4, opts), Error) << kernel;
    EXPECT_TRUE(bitwise_equal(before, out2.to(Device::cpu())));
  }
}

}  // namespace
}  // namespace qmm::test
