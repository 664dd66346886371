"""qmm on NumPy arrays against mlx.core (pip install 'mlx[cpu]') for every bits x group size x
dtype: quantize and dequantize bit-exact, quantized_matmul within tolerance."""

import itertools

import numpy as np
import pytest

from qmm_testing import (
    BITS,
    DTYPES,
    EPS,
    GROUPS,
    as_float64,
    assert_matmul_close,
    bits_of,
    exact_weight,
    from_mx,
    matmul_reference,
    mx,
    qmm,
    random_weight,
    requires_mlx,
    to_mx,
)

pytestmark = requires_mlx

CASES = list(itertools.product(BITS, GROUPS, DTYPES))
IDS = [f"b{b}-g{g}-{d}" for b, g, d in CASES]


def mlx_quantize(w, group_size, bits):
    return [from_mx(a) for a in mx.quantize(to_mx(w), group_size=group_size, bits=bits)]


@pytest.mark.parametrize("bits,group_size,dtype", CASES, ids=IDS)
def test_quantize_bit_exact(rng, bits, group_size, dtype):
    w = random_weight(rng, (16, 4 * 128), dtype)
    w_q, scales, biases = qmm.quantize(w, group_size=group_size, bits=bits)
    m_q, m_s, m_b = mlx_quantize(w, group_size, bits)
    assert w_q.dtype == np.uint32 and w_q.shape == m_q.shape
    assert scales.dtype == w.dtype and biases.dtype == w.dtype
    np.testing.assert_array_equal(w_q, m_q)
    np.testing.assert_array_equal(bits_of(scales), bits_of(m_s))
    np.testing.assert_array_equal(bits_of(biases), bits_of(m_b))


@pytest.mark.parametrize("bits,group_size,dtype", CASES, ids=IDS)
def test_dequantize_bit_exact(rng, bits, group_size, dtype):
    w = random_weight(rng, (16, 4 * 128), dtype)
    m_q, m_s, m_b = mlx_quantize(w, group_size, bits)
    out = qmm.dequantize(m_q, m_s, m_b, group_size=group_size, bits=bits)
    ref = from_mx(mx.dequantize(to_mx(m_q), to_mx(m_s), to_mx(m_b), group_size=group_size, bits=bits))
    assert out.dtype == ref.dtype == w.dtype and out.shape == w.shape
    np.testing.assert_array_equal(bits_of(out), bits_of(ref))


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_dequantize_dtype_argument(rng, out_dtype):
    w = random_weight(rng, (8, 256), "float16")
    w_q, s, b = qmm.quantize(w)
    out = qmm.dequantize(w_q, s, b, dtype=out_dtype)
    m_dtype = getattr(mx, out_dtype)
    ref = from_mx(mx.dequantize(to_mx(w_q), to_mx(s), to_mx(b), group_size=64, bits=4, dtype=m_dtype))
    np.testing.assert_array_equal(bits_of(out), bits_of(ref))
    # Every spelling of the dtype works: NumPy, MLX, qmm's short names.
    assert qmm.dequantize(w_q, s, b, dtype=m_dtype).dtype == out.dtype
    assert qmm.dequantize(w_q, s, b, dtype=out.dtype).dtype == out.dtype


@pytest.mark.parametrize("bits,group_size,dtype", CASES, ids=IDS)
@pytest.mark.parametrize("transpose", [True, False], ids=["T", "N"])
def test_quantized_matmul_matches_mlx(rng, bits, group_size, dtype, transpose):
    K, N, M = 256, 128, 3
    w = random_weight(rng, (N, K) if transpose else (K, N), dtype)
    x = rng.standard_normal((M, K)).astype(w.dtype)
    m_q, m_s, m_b = mlx_quantize(w, group_size, bits)
    y = qmm.quantized_matmul(x, m_q, m_s, m_b, transpose=transpose, group_size=group_size, bits=bits)
    y_mlx = from_mx(
        mx.quantized_matmul(
            to_mx(x), to_mx(m_q), to_mx(m_s), to_mx(m_b), transpose=transpose, group_size=group_size, bits=bits
        )
    )
    assert y.dtype == y_mlx.dtype == w.dtype and y.shape == y_mlx.shape == (M, N)
    # The strict check: the exact product with the weight s*q+b of MLX's own (w_q, scales,
    # biases), not rounded to the 16-bit dtype (qmm applies scale and bias in fp32, so it is
    # closer to this than to x @ dequantize(w)); only output rounding and fp32 accumulation
    # separate them.
    ref, scale = matmul_reference(x, exact_weight(m_q, m_s, m_b, group_size, bits), transpose)
    assert_matmul_close(y, ref, scale, dtype)
    # MLX's CPU kernel accumulates fp16/bf16 in that dtype (errors ~ sqrt(K) ulps of |x|@|W|):
    # a looser, direct check against MLX's own answer.
    assert_matmul_close(y, as_float64(y_mlx), scale, dtype, acc_tol=max(1e-5, np.sqrt(K) * EPS[dtype]))


def test_quantized_matmul_batched_broadcast(rng):
    K, N = 128, 32
    w = rng.standard_normal((2, 1, N, K)).astype(np.float32)
    x = rng.standard_normal((3, 5, K)).astype(np.float32)
    w_q, s, b = qmm.quantize(w, group_size=32, bits=4)
    y = qmm.quantized_matmul(x, w_q, s, b, group_size=32, bits=4)
    y_mlx = np.array(mx.quantized_matmul(mx.array(x), mx.array(w_q), mx.array(s), mx.array(b), group_size=32, bits=4))
    assert y.shape == y_mlx.shape == (2, 3, 5, N)
    ref, scale = matmul_reference(x, qmm.dequantize(w_q, s, b, group_size=32, bits=4))
    assert_matmul_close(y, ref, scale, "float32")


def test_quantized_matmul_one_dimensional_x(rng):
    w = rng.standard_normal((48, 256)).astype(np.float32)
    x = rng.standard_normal(256).astype(np.float32)
    w_q, s, b = qmm.quantize(w)
    y = qmm.quantized_matmul(x, w_q, s, b)
    y_mlx = np.array(mx.quantized_matmul(mx.array(x), mx.array(w_q), mx.array(s), mx.array(b)))
    assert y.shape == y_mlx.shape == (48,)
    ref, scale = matmul_reference(x, qmm.dequantize(w_q, s, b))
    assert_matmul_close(y, ref, scale, "float32")


def test_mixed_dtypes_promote_like_mlx(rng):
    w = rng.standard_normal((32, 128)).astype(np.float16)
    w_q, s, b = qmm.quantize(w)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    y = qmm.quantized_matmul(x, w_q, s, b)
    y_mlx = mx.quantized_matmul(mx.array(x), mx.array(w_q), mx.array(s), mx.array(b))
    assert y.dtype == np.float32 and y_mlx.dtype == mx.float32


def test_quantize_batched_weight(rng):
    w = rng.standard_normal((3, 8, 256)).astype(np.float32)
    got = qmm.quantize(w, group_size=128, bits=3)
    want = mlx_quantize(w, 128, 3)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(bits_of(a), bits_of(b))


def test_mlx_arrays_are_accepted_and_give_numpy(rng):
    """MLX arrays speak DLPack on the CPU: qmm reads them in place and answers with NumPy."""
    w = mx.array(rng.standard_normal((16, 128)).astype(np.float32))
    w_q, s, b = qmm.quantize(w)
    assert isinstance(w_q, np.ndarray)
    m_q, m_s, m_b = mx.quantize(w, group_size=64, bits=4)
    np.testing.assert_array_equal(w_q, np.array(m_q))
    np.testing.assert_array_equal(s, np.array(m_s))


def test_defaults_and_none_match_mlx(rng):
    w = rng.standard_normal((8, 128)).astype(np.float32)
    a = qmm.quantize(w)
    b = qmm.quantize(w, None, None)  # MLX: None means the mode's default (64, 4)
    c = mlx_quantize(w, 64, 4)
    for u, v, t in zip(a, b, c):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, t)


def test_eps_table_covers_dtypes():
    assert set(EPS) == set(DTYPES)
