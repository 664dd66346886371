"""Helpers shared by qmm's pytest files (imported as a plain module: pytest puts this
directory on sys.path)."""

from __future__ import annotations

import numpy as np
import pytest

import qmm

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 NumPy tests are skipped
    ml_dtypes = None
    BF16 = None

try:
    import mlx.core as mx
except ImportError:  # MLX parity tests are skipped
    mx = None

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)
DTYPES = ("float32", "float16", "bfloat16")

# Relative precision of each output dtype (one ulp at 1.0).
EPS = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

requires_mlx = pytest.mark.skipif(mx is None, reason="mlx is not installed (pip install 'mlx[cpu]')")


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("NumPy bfloat16 needs ml_dtypes")
        return BF16
    return np.dtype(name)


def as_float64(a) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float32).astype(np.float64)


def bits_of(a: np.ndarray) -> np.ndarray:
    """The raw bits of a float array, for bit-exact comparisons (NaN-safe, -0 != +0)."""
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def random_weight(rng, shape, dtype: str) -> np.ndarray:
    """Random normal weights, with some hard groups mixed in: constant rows (zero range), zero
    rows, all-negative rows and integer-valued rows (rounding ties)."""
    w = rng.standard_normal(shape).astype(np.float32)
    rows = w.reshape(-1, shape[-1])
    if rows.shape[0] >= 8:
        rows[0] = 0.0
        rows[1] = 1.5
        rows[2] = -np.abs(rows[2]) - 0.25
        rows[3] = np.round(rows[3] * 4)
        rows[4] *= 1e-3
        rows[5] *= 100.0
    return w.astype(np_dtype(dtype))


# ---- MLX conversions (bfloat16 travels as uint16 bits: NumPy cannot hold it) ----------------

def to_mx(a: np.ndarray):
    if BF16 is not None and a.dtype == BF16:
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    return mx.array(a)


def from_mx(a) -> np.ndarray:
    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16)).view(BF16)
    return np.array(a)


def exact_weight(w_q, scales, biases, group_size, bits) -> np.ndarray:
    """float64 s*q + b, the weight qmm multiplies by (it applies scale and bias in fp32 and
    never rounds them to 16 bits, unlike dequantize, which rounds to the scales' dtype as MLX
    does). q comes from qmm.dequantize with scale 1 and bias 0 (exact)."""
    ones = np.ones(np.shape(scales), np.float32)
    q = qmm.dequantize(w_q, ones, np.zeros_like(ones), group_size=group_size, bits=bits).astype(np.float64)
    expand = lambda a: np.repeat(as_float64(a), group_size, axis=-1)
    return expand(scales) * q + expand(biases)


def matmul_reference(x, w_deq, transpose=True):
    """float64 x @ W.T (or x @ W) and the scale |x| @ |W|.T used for tolerances."""
    x64, w64 = as_float64(x), as_float64(w_deq)
    wt = np.swapaxes(w64, -1, -2) if transpose else w64
    return np.matmul(x64, wt), np.matmul(np.abs(x64), np.abs(wt))


def assert_matmul_close(y, ref, scale, out_dtype: str, acc_tol: float = 1e-5):
    """|y - ref| <= eps(out) |ref| + acc_tol * (|x| @ |W|): output rounding plus fp32
    accumulation error."""
    y64 = as_float64(y)
    bound = EPS[out_dtype] * np.abs(ref) + acc_tol * scale + 1e-30
    err = np.abs(y64 - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"max error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} (ref {ref[worst]:.6g}, y {y64[worst]:.6g})"
    )


__all__ = [
    "qmm",
    "mx",
    "ml_dtypes",
    "BF16",
    "BITS",
    "GROUPS",
    "DTYPES",
    "EPS",
    "requires_mlx",
    "np_dtype",
    "as_float64",
    "bits_of",
    "random_weight",
    "to_mx",
    "from_mx",
    "exact_weight",
    "matmul_reference",
    "assert_matmul_close",
]
