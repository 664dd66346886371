"""qmm on CUDA arrays: PyTorch tensors and CuPy arrays. Needs a GPU, qmm built with CUDA
(QMM_CUDA=AUTO/ON at `pip install .`) and torch / cupy; each part is skipped without them.

What is checked: CUDA results bit-exact with the CPU path (itself bit-exact with MLX) for
quantize and dequantize, quantized_matmul within tolerance, for every bits x group x dtype;
zero-copy by pointer; the framework's current stream; PyTorch CUDA graphs; one allocation per
call; batch invariance of quantized_matmul (DESIGN.md 4.8)."""

import itertools

import numpy as np
import pytest

from qmm_testing import BITS, DTYPES, GROUPS, assert_matmul_close, exact_weight, matmul_reference, qmm, random_weight

_qmm = qmm._qmm
CASES = list(itertools.product(BITS, GROUPS, DTYPES))
IDS = [f"b{b}-g{g}-{d}" for b, g, d in CASES]

# The CUDA tensor-core kernels form each dequantized weight s*q + b with one fused 16-bit
# multiply-add (relative error <= u of the weight dtype), then accumulate in fp32: the error is
# bounded by 2u * sum|x||w| (u = 2^-11 for fp16, 2^-8 for bf16), as in tests/test_cuda_matmul.cpp.
# fp32 activations go through the CUDA-core kernel (exact fp32 products).
ACC_TOL = {"float32": 1e-3, "float16": 2.0**-10, "bfloat16": 2.0**-7}

try:
    import torch
except ImportError:
    torch = None
try:
    import cupy
except ImportError:
    cupy = None

HAS_QMM_CUDA = qmm.cuda_available()
needs_torch_cuda = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available() or not HAS_QMM_CUDA,
    reason="needs torch with CUDA, a GPU and qmm built with CUDA",
)


def _cupy_usable():
    if cupy is None or not HAS_QMM_CUDA:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


needs_cupy = pytest.mark.skipif(not _cupy_usable(), reason="needs CuPy, a GPU and qmm built with CUDA")


def np_of_torch(t):
    """NumPy copy of a torch tensor (bfloat16 as ml_dtypes or as uint16 bits)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(np.uint16).view(ml_dtypes.bfloat16)
    if t.dtype == getattr(torch, "uint32", None):
        return t.view(torch.int32).numpy().view(np.uint32)
    return t.numpy()


def torch_of_np(a, device="cuda"):
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16).view(np.int16)).view(torch.bfloat16).to(device)
    if a.dtype == np.uint32:
        return torch.from_numpy(a.view(np.int32)).to(device)
    return torch.from_numpy(a).to(device)


def u8(a):
    return np.ascontiguousarray(a).view(np.uint8)


# ---- PyTorch ------------------------------------------------------------------------------


@needs_torch_cuda
@pytest.mark.parametrize("bits,group_size,dtype", CASES, ids=IDS)
def test_torch_cuda_matches_cpu(rng, bits, group_size, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    w = random_weight(rng, (128, 512), dtype)
    x = rng.standard_normal((5, 512)).astype(w.dtype)
    cpu_q, cpu_s, cpu_b = qmm.quantize(w, group_size=group_size, bits=bits)

    gw = torch_of_np(w)
    g_q, g_s, g_b = qmm.quantize(gw, group_size=group_size, bits=bits)
    assert g_q.is_cuda and g_s.is_cuda
    np.testing.assert_array_equal(u8(np_of_torch(g_q)), u8(cpu_q))
    np.testing.assert_array_equal(u8(np_of_torch(g_s)), u8(cpu_s))
    np.testing.assert_array_equal(u8(np_of_torch(g_b)), u8(cpu_b))

    g_d = qmm.dequantize(g_q, g_s, g_b, group_size=group_size, bits=bits)
    np.testing.assert_array_equal(u8(np_of_torch(g_d)), u8(qmm.dequantize(cpu_q, cpu_s, cpu_b, group_size=group_size, bits=bits)))

    w_exact = exact_weight(cpu_q, cpu_s, cpu_b, group_size, bits)
    # transpose=True: W is (N, K) = (128, 512); transpose=False: the same matrix read as
    # (K, N) = (128, 512), so x has 128 columns.
    for transpose, xx in ((True, x), (False, rng.standard_normal((5, 128)).astype(w.dtype))):
        y = qmm.quantized_matmul(torch_of_np(xx), g_q, g_s, g_b, transpose=transpose, group_size=group_size, bits=bits)
        assert y.is_cuda and y.dtype == gw.dtype
        ref, scale = matmul_reference(xx, w_exact, transpose)
        assert_matmul_close(np_of_torch(y), ref, scale, dtype, acc_tol=ACC_TOL[dtype])


@needs_torch_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_cuda_batch_invariance(dtype):
    """Row r's output has the same bits whether it ran alone or with up to 15 other rows."""
    g = torch.Generator(device="cuda").manual_seed(0)
    tdt = getattr(torch, dtype)
    w = torch.randn(1024, 2048, device="cuda", generator=g).to(tdt)
    q, s, b = qmm.quantize(w)
    x = torch.randn(16, 2048, device="cuda", generator=g).to(tdt)
    alone = torch.cat([qmm.quantized_matmul(x[r : r + 1], q, s, b) for r in range(16)])
    for m in range(1, 17):
        together = qmm.quantized_matmul(x[:m].contiguous(), q, s, b)
        assert torch.equal(together, alone[:m]), f"M={m}"


@needs_torch_cuda
def test_torch_cuda_zero_copy_by_pointer():
    w = torch.randn(256, 512, device="cuda", dtype=torch.float16)
    q, s, b = qmm.quantize(w)
    packed = q.view(torch.int32) if q.dtype != torch.int32 else q
    assert _qmm.view_info(w)["data"] == w.data_ptr()
    assert _qmm.view_info(packed, _qmm.FLAG_PACKED_WEIGHT)["data"] == q.data_ptr()
    assert _qmm.view_info(s)["device"] == f"cuda:{w.device.index}"
    x = torch.randn(3, 512, device="cuda", dtype=torch.float16)
    made = []

    def alloc(shape, dtype):
        made.append(torch.full(shape, float("nan"), device="cuda", dtype=torch.float16))
        return made[-1]

    y = _qmm.quantized_matmul(x, packed, s, b, True, 64, 4, alloc, torch.cuda.current_stream().cuda_stream, "", 0)
    torch.cuda.synchronize()
    assert y is made[0] and not torch.isnan(y).any()


@needs_torch_cuda
def test_torch_cuda_one_allocation_per_call():
    """The output is the only allocation of a call (from PyTorch's caching allocator)."""
    w = torch.randn(512, 1024, device="cuda", dtype=torch.float16)
    q, s, b = qmm.quantize(w)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.float16)
    qmm.quantized_matmul(x, q, s, b)  # warm-up: lets qmm set up whatever it keeps per stream
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    free_before, reserved_before = torch.cuda.mem_get_info()[0], torch.cuda.memory_reserved()
    ys = [qmm.quantized_matmul(x, q, s, b) for _ in range(5)]
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()["allocation.all.allocated"]
    free_after, reserved_after = torch.cuda.mem_get_info()[0], torch.cuda.memory_reserved()
    assert after - before == len(ys)
    # Device memory that left the free pool went to PyTorch's cache, none to qmm itself.
    assert free_before - free_after == reserved_after - reserved_before


@needs_torch_cuda
def test_torch_cuda_runs_on_the_current_stream():
    """A side stream made current with torch.cuda.stream() is the one qmm uses: the result is
    ready once that stream (not the default stream) is synchronized, and the work orders after
    what was queued on it before."""
    w = torch.randn(2048, 4096, device="cuda", dtype=torch.float16)
    q, s, b = qmm.quantize(w)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.float16)
    expected = qmm.quantized_matmul(x, q, s, b)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x2 = torch.empty_like(x)
        torch.cuda._sleep(1_000_000)  # keep the side stream busy: qmm must queue behind this
        x2.copy_(x)
        y = qmm.quantized_matmul(x2, q, s, b)
    side.synchronize()
    assert torch.equal(y, expected)
    # An explicit stream argument works too.
    y2 = qmm.quantized_matmul(x, q, s, b, stream=side)
    side.synchronize()
    assert torch.equal(y2, expected)


@needs_torch_cuda
def test_quantized_linear_under_cuda_graph():
    """PyTorch's recipe, with the warm-up on the stream that is then captured: qmm keeps its
    split-K workspace per stream and cannot allocate it during a capture."""
    import qmm.torch as qtorch

    torch.manual_seed(0)
    linear = torch.nn.Linear(4096, 1024, device="cuda", dtype=torch.float16)
    layer = qtorch.QuantizedLinear.from_linear(linear)
    static_x = torch.randn(3, 4096, device="cuda", dtype=torch.float16)
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        for _ in range(3):
            layer(static_x)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=warm):
        static_y = layer(static_x)
    for _ in range(3):
        new_x = torch.randn_like(static_x)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, layer(new_x))


@needs_torch_cuda
def test_functional_quantized_matmul_under_cuda_graph():
    w = torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16)
    q, s, b = qmm.quantize(w)
    static_x = torch.randn(5, 2048, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        qmm.quantized_matmul(static_x, q, s, b)  # warm-up on the stream to be captured
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        static_y = qmm.quantized_matmul(static_x, q, s, b)
    static_x.normal_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, qmm.quantized_matmul(static_x, q, s, b))


@needs_torch_cuda
def test_capture_on_a_stream_qmm_has_not_used():
    """torch.cuda.graph() without stream= captures on its own stream. qmm either works there
    (its workspace allocation is capture-safe) or says how to fix the call, without breaking the
    capture or the device."""
    w = torch.randn(1024, 8192, device="cuda", dtype=torch.float16)
    q, s, b = qmm.quantize(w)
    x = torch.randn(2, 8192, device="cuda", dtype=torch.float16)
    expected = qmm.quantized_matmul(x, q, s, b)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=torch.cuda.Stream()):
            y = qmm.quantized_matmul(x, q, s, b)
    except (RuntimeError, ValueError) as e:
        assert "before capturing" in str(e), str(e)
    else:
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, expected)
    assert torch.equal(qmm.quantized_matmul(x, q, s, b), expected)  # the device still works


@needs_torch_cuda
def test_torch_cuda_errors():
    w = torch.randn(64, 256, device="cuda")
    q, s, b = qmm.quantize(w)
    with pytest.raises(ValueError, match=r"\[quantized_matmul\] all tensors must be on one device"):
        qmm.quantized_matmul(torch.randn(2, 256), q, s, b)
    with pytest.raises(ValueError, match=r"\[quantize\] bits=1 is not supported"):
        qmm.quantize(w, bits=1)
    with pytest.raises(ValueError, match="only row-major contiguous"):
        qmm.quantized_matmul(torch.randn(256, 2, device="cuda").t(), q, s, b)


@needs_torch_cuda
@pytest.mark.parametrize("M", [1, 2, 3, 4, 8, 16])
def test_torch_cuda_large_layer(M):
    """A Qwen2.5-14B-sized k/v projection (N=1024, K=5120) at the M values of the benchmark."""
    g = torch.Generator(device="cuda").manual_seed(M)
    w = torch.randn(1024, 5120, device="cuda", generator=g).half()
    q, s, b = qmm.quantize(w)
    x = torch.randn(M, 5120, device="cuda", generator=g).half()
    y = qmm.quantized_matmul(x, q, s, b)
    ref, scale = matmul_reference(np_of_torch(x), exact_weight(np_of_torch(q), np_of_torch(s), np_of_torch(b), 64, 4))
    assert_matmul_close(np_of_torch(y), ref, scale, "float16", acc_tol=ACC_TOL["float16"])


# ---- CuPy ---------------------------------------------------------------------------------


@needs_cupy
@pytest.mark.parametrize("bits,group_size,dtype", [c for c in CASES if c[2] != "bfloat16"],
                         ids=[i for c, i in zip(CASES, IDS) if c[2] != "bfloat16"])
def test_cupy_matches_cpu(rng, bits, group_size, dtype):
    w = random_weight(rng, (64, 256), dtype)
    x = rng.standard_normal((3, 256)).astype(w.dtype)
    cpu = qmm.quantize(w, group_size=group_size, bits=bits)
    gq, gs, gb = qmm.quantize(cupy.asarray(w), group_size=group_size, bits=bits)
    for a in (gq, gs, gb):
        assert isinstance(a, cupy.ndarray)
    assert gq.dtype == np.uint32
    for got, want in zip((gq, gs, gb), cpu):
        np.testing.assert_array_equal(u8(cupy.asnumpy(got)), u8(want))
    d = qmm.dequantize(gq, gs, gb, group_size=group_size, bits=bits)
    assert isinstance(d, cupy.ndarray)
    np.testing.assert_array_equal(u8(cupy.asnumpy(d)), u8(qmm.dequantize(*cpu, group_size=group_size, bits=bits)))
    y = qmm.quantized_matmul(cupy.asarray(x), gq, gs, gb, group_size=group_size, bits=bits)
    assert isinstance(y, cupy.ndarray) and y.dtype == x.dtype
    ref, scale = matmul_reference(x, exact_weight(*cpu, group_size, bits))
    assert_matmul_close(cupy.asnumpy(y), ref, scale, dtype, acc_tol=ACC_TOL[dtype])


@needs_cupy
def test_cupy_zero_copy_and_current_stream():
    w = cupy.random.standard_normal((1024, 2048), dtype=cupy.float32).astype(cupy.float16)
    q, s, b = qmm.quantize(w)
    assert _qmm.view_info(w)["data"] == w.data.ptr
    assert _qmm.view_info(q)["data"] == q.data.ptr
    x = cupy.random.standard_normal((4, 2048), dtype=cupy.float32).astype(cupy.float16)
    expected = qmm.quantized_matmul(x, q, s, b)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = qmm.quantized_matmul(x, q, s, b)
    stream.synchronize()
    cupy.testing.assert_array_equal(y, expected)
    made = []

    def alloc(shape, dtype):
        made.append(cupy.full(shape, cupy.nan, dtype=cupy.float16))
        return made[-1]

    out = _qmm.quantized_matmul(x, q, s, b, True, 64, 4, alloc, cupy.cuda.get_current_stream().ptr, "", 0)
    cupy.cuda.get_current_stream().synchronize()
    assert out is made[0]
    cupy.testing.assert_array_equal(out, expected)


@needs_cupy
@needs_torch_cuda
def test_torch_activations_with_cupy_weights():
    """Libraries mix freely on one device; the output follows x."""
    w = cupy.random.standard_normal((256, 512), dtype=cupy.float32)
    q, s, b = qmm.quantize(w)
    x = torch.randn(2, 512, device="cuda")
    y = qmm.quantized_matmul(x, q, s, b)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    torch.testing.assert_close(y.cpu().numpy(), cupy.asnumpy(qmm.quantized_matmul(cupy.asarray(x), q, s, b)), rtol=0, atol=0)
