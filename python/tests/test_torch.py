"""PyTorch tensors through qmm, and qmm.torch.QuantizedLinear, on the CPU and (when qmm has CUDA
and a GPU is present) on CUDA. Skipped when PyTorch is not installed."""

import numpy as np
import pytest

from qmm_testing import BF16, DTYPES, assert_matmul_close, exact_weight, matmul_reference, mx, qmm

torch = pytest.importorskip("torch")
import qmm.torch as qtorch  # noqa: E402  (needs torch)

_qmm = qmm._qmm
HAS_CUDA = torch.cuda.is_available() and qmm.cuda_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and qmm built with CUDA")),
]
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
UINT32 = getattr(torch, "uint32", None)


def to_numpy(t):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        if BF16 is None:
            return t.float().numpy()
        return t.view(torch.int16).numpy().view(np.uint16).view(BF16)
    if t.dtype == UINT32:
        return t.view(torch.int32).numpy().view(np.uint32)
    return t.numpy()


def raw_bits(t):
    t = t.detach().cpu()
    if t.dtype == UINT32:
        t = t.view(torch.int32)
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])



# CUDA kernels round each dequantized weight to the 16-bit weight dtype once (see test_cuda.py).
CUDA_ACC_TOL = {"float32": 1e-3, "float16": 2.0**-10, "bfloat16": 2.0**-7}

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_ops_on_torch_tensors(device, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g).to(TORCH_DTYPES[dtype]).to(device)
    x = torch.randn(3, 256, generator=g).to(TORCH_DTYPES[dtype]).to(device)
    w_q, scales, biases = qmm.quantize(w)
    for t in (w_q, scales, biases):
        assert isinstance(t, torch.Tensor) and t.device == w.device
    assert w_q.dtype == (UINT32 or torch.int32) and w_q.shape == (64, 32)
    assert scales.dtype == w.dtype and scales.shape == (64, 4)
    y = qmm.quantized_matmul(x, w_q, scales, biases)
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == x.dtype and y.shape == (3, 64)
    d = qmm.dequantize(w_q, scales, biases)
    assert d.device == w.device and d.dtype == w.dtype and d.shape == w.shape
    # Same bits as the NumPy path on the CPU (itself bit-exact with MLX).
    if dtype != "bfloat16" or BF16 is not None:
        np_q = qmm.quantize(to_numpy(w))
        assert torch.equal(raw_bits(w_q), torch.from_numpy(np.ascontiguousarray(np_q[0]).view(np.int32)))
        np.testing.assert_array_equal(to_numpy(scales).view(np.uint8), np_q[1].view(np.uint8))
        np.testing.assert_array_equal(to_numpy(d).view(np.uint8), qmm.dequantize(*np_q).view(np.uint8))
    ref, scale = matmul_reference(to_numpy(x), exact_weight(to_numpy(w_q), to_numpy(scales), to_numpy(biases), 64, 4))
    assert_matmul_close(to_numpy(y), ref, scale, dtype, acc_tol=CUDA_ACC_TOL[dtype] if device == "cuda" else 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_inputs_are_read_in_place_and_outputs_written_in_place(device):
    w = torch.randn(32, 128, device=device)
    w_q, s, b = qmm.quantize(w)
    for t in (w, s, b):
        info = _qmm.view_info(t)
        assert info["data"] == t.data_ptr() and info["shape"] == tuple(t.shape)
        assert info["device"] == ("cpu" if device == "cpu" else f"cuda:{t.device.index}")
    packed = w_q.view(torch.int32) if w_q.dtype == UINT32 else w_q
    assert _qmm.view_info(packed, _qmm.FLAG_PACKED_WEIGHT)["data"] == w_q.data_ptr()
    # Output: exactly the tensor the allocator made.
    x = torch.randn(2, 128, device=device)
    made = []

    def alloc(shape, dtype):
        made.append(torch.full(shape, float("nan"), device=device))
        return made[-1]

    stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
    y = _qmm.quantized_matmul(x, packed, s, b, True, 64, 4, alloc, stream, "", 0)
    assert y is made[0] and not torch.isnan(y).any()
    assert torch.equal(y, qmm.quantized_matmul(x, w_q, s, b))


def test_requires_grad_inputs_are_detached():
    w = torch.randn(16, 64, requires_grad=True)
    w_q, s, b = qmm.quantize(w, group_size=32)
    x = torch.randn(2, 64, requires_grad=True)
    y = qmm.quantized_matmul(x, w_q, s, b, group_size=32)
    assert not y.requires_grad and y.grad_fn is None


def test_non_contiguous_tensor_raises():
    w = torch.randn(256, 32).t()
    with pytest.raises(ValueError, match=r"\[quantize\] w with shape \(32, 256\) has strides \(1, 32\)"):
        qmm.quantize(w)


# ---- QuantizedLinear --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, 32), (8, 128), (2, 64), (5, 64), (6, 32)])
def test_quantized_linear_from_linear(device, dtype, bits, group_size):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, dtype=TORCH_DTYPES[dtype], device=device)
    layer = qtorch.QuantizedLinear.from_linear(linear, group_size=group_size, bits=bits)
    assert (layer.in_features, layer.out_features, layer.bits, layer.group_size) == (256, 96, bits, group_size)
    assert layer.weight.dtype == torch.int32 and layer.weight.shape == (96, 256 * bits // 32)
    assert layer.scales.dtype == linear.weight.dtype and layer.weight.device == linear.weight.device
    x = torch.randn(2, 5, 256, dtype=linear.weight.dtype, device=device)
    y = layer(x)
    assert y.shape == (2, 5, 96) and y.dtype == x.dtype and y.device == x.device
    w_q, s, b = qmm.quantize(linear.weight.detach(), group_size=group_size, bits=bits)
    assert torch.equal(raw_bits(w_q), raw_bits(layer.weight)) and torch.equal(s, layer.scales)
    expected = qmm.quantized_matmul(x, w_q, s, b, group_size=group_size, bits=bits) + linear.bias.detach()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # Quantization error of a random Linear stays small relative to the dense product.
    dense = linear(x).detach().float()
    err = (y.float() - dense).norm() / dense.norm()
    assert err < {2: 0.6, 3: 0.3, 4: 0.15, 5: 0.08, 6: 0.04, 8: 0.02}[bits]


def test_quantized_linear_state_dict_round_trip_and_uint32_weights():
    torch.manual_seed(1)
    linear = torch.nn.Linear(128, 64, dtype=torch.float16)
    layer = qtorch.QuantizedLinear.from_linear(linear)
    state = layer.state_dict()
    assert set(state) == {"weight", "scales", "biases", "bias"}
    fresh = qtorch.QuantizedLinear(128, 64, bias=True, dtype=torch.float16)
    if UINT32 is not None:  # an MLX checkpoint's packed weight, as safetensors loads it
        state["weight"] = state["weight"].view(UINT32)
    fresh.load_state_dict(state)
    x = torch.randn(3, 128, dtype=torch.float16)
    assert torch.equal(fresh(x), layer(x))


def test_quantized_linear_from_mlx_tensors():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(48, 256, generator=g)
    w_q, s, b = qmm.quantize(w.numpy())
    bias = np.arange(48, dtype=np.float32)
    layer = qtorch.QuantizedLinear.from_mlx(w_q, s, b, bias, group_size=64, bits=4)
    assert (layer.in_features, layer.out_features) == (256, 48)
    # NumPy inputs are shared, not copied.
    assert layer.scales.data_ptr() == s.ctypes.data
    x = torch.randn(4, 256, generator=g)
    expected = torch.from_numpy(qmm.quantized_matmul(x.numpy(), w_q, s, b)) + torch.from_numpy(bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"the shapes of the weight and scales are incompatible"):
        qtorch.QuantizedLinear.from_mlx(w_q, s, b, group_size=32, bits=4)
    with pytest.raises(ValueError, match=r"bias must have shape \(48,\)"):
        qtorch.QuantizedLinear.from_mlx(w_q, s, b, bias[:3])


@pytest.mark.skipif(mx is None, reason="mlx is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_quantized_linear_from_mlx_arrays(dtype):
    mw = mx.random.normal((64, 128), key=mx.random.key(3)).astype(getattr(mx, dtype))
    m_q, m_s, m_b = mx.quantize(mw, group_size=64, bits=4)
    layer = qtorch.QuantizedLinear.from_mlx(m_q, m_s, m_b)
    assert layer.scales.dtype == TORCH_DTYPES[dtype]
    mx_x = mx.random.normal((3, 128), key=mx.random.key(4)).astype(getattr(mx, dtype))
    x = torch.from_numpy(np.array(mx_x.astype(mx.float32))).to(TORCH_DTYPES[dtype])
    y = layer(x).float().numpy()
    ref = np.array(mx.quantized_matmul(mx_x, m_q, m_s, m_b).astype(mx.float32))
    scale = np.abs(np.array(mx_x.astype(mx.float32))) @ np.abs(np.array(mx.dequantize(m_q, m_s, m_b).astype(mx.float32))).T
    assert np.all(np.abs(y - ref) <= 16 * {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype] * scale)


def test_quantized_linear_module_conversions():
    layer = qtorch.QuantizedLinear.from_linear(torch.nn.Linear(128, 32))
    layer = layer.to(torch.bfloat16)
    assert layer.scales.dtype == layer.biases.dtype == layer.bias.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.int32
    assert not list(layer.parameters())
    x = torch.randn(128, 3, dtype=torch.bfloat16).t()  # non-contiguous: the module copies it
    assert layer(x).shape == (3, 32)
    assert "bits=4" in repr(layer)
    w = layer.dequantized_weight(torch.float32)
    assert w.shape == (32, 128) and w.dtype == torch.float32


def test_quantized_linear_without_bias_and_bad_arguments():
    layer = qtorch.QuantizedLinear(128, 16, bias=False, group_size=32, bits=2)
    assert layer.bias is None and layer.weight.shape == (16, 8)
    with pytest.raises(ValueError, match="bits=7"):
        qtorch.QuantizedLinear(128, 16, bits=7)
    with pytest.raises(ValueError, match="group_size=48"):
        qtorch.QuantizedLinear(128, 16, group_size=48)
    with pytest.raises(ValueError, match="in_features=100 must be divisible"):
        qtorch.QuantizedLinear(100, 16)
