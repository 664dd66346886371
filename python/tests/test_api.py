"""The package's contract on the CPU with NumPy arrays: errors, zero-copy, dtypes, helpers."""

import inspect

import numpy as np
import pytest

from qmm_testing import BF16, assert_matmul_close, exact_weight, matmul_reference, qmm

_qmm = qmm._qmm


def quantized(rng, shape=(32, 256), dtype=np.float32, group_size=64, bits=4):
    w = rng.standard_normal(shape).astype(dtype)
    return (w,) + tuple(qmm.quantize(w, group_size=group_size, bits=bits))


# ---- signatures ---------------------------------------------------------------------------


def test_signatures_follow_mlx():
    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values() if p.kind != p.KEYWORD_ONLY]

    E = inspect.Parameter.empty
    assert params(qmm.quantize) == [("w", E), ("group_size", 64), ("bits", 4)]
    assert params(qmm.dequantize) == [
        ("w", E), ("scales", E), ("biases", E), ("group_size", 64), ("bits", 4), ("dtype", None)]
    assert params(qmm.quantized_matmul) == [
        ("x", E), ("w", E), ("scales", E), ("biases", E), ("transpose", True), ("group_size", 64), ("bits", 4)]


def test_version_and_devices():
    assert qmm.__version__.count(".") == 2
    assert isinstance(qmm.cuda_available(), bool)
    assert qmm.cuda_device_count() >= 0
    assert qmm.device_info("cpu")["device"] == "cpu"
    assert "reference" in qmm.kernel_names("cpu", "quantized_matmul")


# ---- errors: ValueError with qmm's C++ message ---------------------------------------------


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda w, q, s, b: qmm.quantize(w, bits=7), "[quantize] bits=7 is not supported"),
        (lambda w, q, s, b: qmm.quantize(w, group_size=16), "[quantize] group_size=16 is not supported"),
        (lambda w, q, s, b: qmm.quantize(w[0]), "[quantize] the matrix to be quantized must have at least 2 dimensions"),
        (lambda w, q, s, b: qmm.quantize(w[:, :100]), "[quantize] the last dimension of w (32, 100) must be divisible"),
        (lambda w, q, s, b: qmm.quantize(w.astype(np.float64)), "[quantize] w has dtype float64"),
        (lambda w, q, s, b: qmm.quantize(w.astype(np.int32)), "[quantize] w has dtype int32"),
        (lambda w, q, s, b: qmm.quantize(w, mode="mxfp4"), "[quantize] mode='mxfp4' is not supported"),
        (lambda w, q, s, b: qmm.dequantize(q, s, b, bits=3), "[dequantize] the shapes of the weight and scales are incompatible"),
        (lambda w, q, s, b: qmm.dequantize(q, s, b[:, :2]), "[dequantize] scales and biases must have the same shape"),
        (lambda w, q, s, b: qmm.dequantize(q, s, b.astype(np.float16)), "[dequantize] scales and biases must have the same dtype"),
        (lambda w, q, s, b: qmm.dequantize(q.view(np.float32), s, b), "[dequantize] the quantized weight must be uint32"),
        (lambda w, q, s, b: qmm.dequantize(q, s, b, dtype="int8"), "[dequantize] unknown dtype 'int8'"),
        (lambda w, q, s, b: qmm.dequantize(q, s, b, dtype=np.uint32), "[dequantize] the output dtype must be a float type"),
        (lambda w, q, s, b: qmm.quantized_matmul(w[:, :128], q, s, b), "[quantized_matmul] the last dimension of x (32, 128) does not match"),
        (lambda w, q, s, b: qmm.quantized_matmul(w, q, s, b, group_size=128), "[quantized_matmul] the shapes of the weight and scales are incompatible"),
        (lambda w, q, s, b: qmm.quantized_matmul(w.astype(np.float64), q, s, b), "[quantized_matmul] x has dtype float64"),
        (lambda w, q, s, b: qmm.quantized_matmul(w[None], q[None].repeat(2, 0)[:, None].repeat(3, 1), s[None, None], b[None, None]), "[quantized_matmul] the shapes of the weight and scales are incompatible"),
    ],
)
def test_bad_input_raises_value_error_with_the_cpp_message(rng, call, message):
    w, q, s, b = quantized(rng)
    with pytest.raises(ValueError) as info:
        call(w, q, s, b)
    assert str(info.value).startswith(message), str(info.value)


def test_non_contiguous_input_raises_instead_of_copying(rng):
    w, q, s, b = quantized(rng, shape=(32, 512))
    with pytest.raises(ValueError, match=r"\[quantize\] w with shape \(32, 256\) has strides \(512, 2\); only row-major contiguous"):
        qmm.quantize(w[:, ::2])
    x = np.asfortranarray(rng.standard_normal((3, 512)).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[quantized_matmul\] x with shape \(3, 512\) has strides \(1, 3\)"):
        qmm.quantized_matmul(x, q, s, b)
    # The documented fix.
    assert qmm.quantized_matmul(np.ascontiguousarray(x), q, s, b).shape == (3, 32)


def test_non_arrays_raise_type_error(rng):
    w, q, s, b = quantized(rng)
    with pytest.raises(TypeError, match="qmm takes NumPy arrays"):
        qmm.quantize(w.tolist())
    with pytest.raises(TypeError, match=r"\[quantized_matmul\] w must be an array that supports DLPack"):
        qmm.quantized_matmul(w, q.tolist(), s, b)
    with pytest.raises(TypeError, match="stream must be"):
        qmm.quantized_matmul(w, q, s, b, stream="default")


def test_nothing_written_on_error(rng):
    """qmm validates everything before writing: an output allocated for a call that fails keeps
    its contents."""
    w, q, s, b = quantized(rng)
    made = []

    def alloc(shape, dtype):
        made.append(np.full(shape, 7, dtype=dtype))
        return made[-1]

    with pytest.raises(ValueError, match="unknown kernel"):
        _qmm.quantized_matmul(w, q, s, b, True, 64, 4, alloc, 0, "no-such-kernel", 0)
    assert len(made) == 1 and np.all(made[0] == 7)


# ---- zero copy -----------------------------------------------------------------------------


def test_inputs_are_read_in_place(rng):
    w, q, s, b = quantized(rng)
    for a in (w, q, s, b):
        info = _qmm.view_info(a)
        assert info["data"] == a.ctypes.data
        assert info["shape"] == a.shape
        assert info["strides"] == tuple(st // a.itemsize for st in a.strides)
    # A view with an offset into a larger buffer: the pointer moves, nothing is copied.
    big = rng.standard_normal((64, 256)).astype(np.float32)
    view = big[8:40]
    assert _qmm.view_info(view)["data"] == big.ctypes.data + 8 * 256 * 4
    # Read-only arrays (e.g. memory-mapped checkpoints) are read without copying too.
    ro = w.copy()
    ro.flags.writeable = False
    assert _qmm.view_info(ro)["data"] == ro.ctypes.data
    np.testing.assert_array_equal(qmm.quantize(ro)[0], q)


def test_outputs_are_written_in_place(rng):
    """The extension fills exactly the arrays the allocator made (no temporary + copy)."""
    w, q, s, b = quantized(rng)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    made = []

    def alloc(shape, dtype):
        made.append(np.full(shape, np.nan if dtype != "uint32" else 0, dtype=dtype))
        return made[-1]

    y = _qmm.quantized_matmul(x, q, s, b, True, 64, 4, alloc, 0, "", 0)
    assert y is made[-1] and not np.isnan(y).any()
    np.testing.assert_array_equal(y, qmm.quantized_matmul(x, q, s, b))

    made.clear()
    outs = _qmm.quantize(w, 64, 4, alloc, 0, "", 0)
    assert all(o is m for o, m in zip(outs, made)) and len(made) == 3
    np.testing.assert_array_equal(outs[0], q)

    made.clear()
    d = _qmm.dequantize(q, s, b, 64, 4, None, alloc, 0, "", 0)
    assert d is made[0]
    np.testing.assert_array_equal(d, qmm.dequantize(q, s, b))


def test_allocator_must_return_an_array(rng):
    w, q, s, b = quantized(rng)
    with pytest.raises(ValueError, match="the allocator returned a list"):
        _qmm.quantized_matmul(w, q, s, b, True, 64, 4, lambda shape, dtype: [], 0, "", 0)


# ---- dtypes ----------------------------------------------------------------------------------


@pytest.mark.skipif(BF16 is None, reason="NumPy bfloat16 needs ml_dtypes")
def test_numpy_bfloat16_through_ml_dtypes(rng):
    w = rng.standard_normal((16, 128)).astype(BF16)
    q, s, b = qmm.quantize(w)
    assert s.dtype == BF16 and b.dtype == BF16
    # bfloat16 arrays travel as uint16 views: still the caller's memory.
    info = _qmm.view_info(w.view(np.uint16), _qmm.FLAG_BFLOAT16_BITS)
    assert info["data"] == w.ctypes.data and info["dtype"] == "bfloat16" and info["shape"] == w.shape
    x = rng.standard_normal((2, 128)).astype(BF16)
    y = qmm.quantized_matmul(x, q, s, b)
    assert y.dtype == BF16
    ref, scale = matmul_reference(x, exact_weight(q, s, b, 64, 4))
    assert_matmul_close(y, ref, scale, "bfloat16")
    assert qmm.dequantize(q, s, b, dtype="float32").dtype == np.float32
    # A plain uint16 array is not bfloat16.
    with pytest.raises(ValueError, match=r"\[quantize\] w has dtype uint16"):
        qmm.quantize(w.view(np.uint16))


def test_int32_packed_weights_are_accepted(rng):
    w, q, s, b = quantized(rng)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_array_equal(qmm.quantized_matmul(x, q.view(np.int32), s, b), qmm.quantized_matmul(x, q, s, b))
    np.testing.assert_array_equal(qmm.dequantize(q.view(np.int32), s, b), qmm.dequantize(q, s, b))
    # ...but only as packed weights.
    with pytest.raises(ValueError, match=r"\[quantized_matmul\] x has dtype int32"):
        qmm.quantized_matmul(x.view(np.int32), q, s, b)


def test_kernel_argument_forces_a_configuration(rng):
    w, q, s, b = quantized(rng)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    for name in qmm.kernel_names("cpu", "quantized_matmul"):
        y = qmm.quantized_matmul(x, q, s, b, kernel=name)
        ref, scale = matmul_reference(x, exact_weight(q, s, b, 64, 4))
        assert_matmul_close(y, ref, scale, "float32")
        assert qmm.describe_quantized_matmul(x, q, s, b, kernel=name)["kernel"] == name


def test_empty_inputs(rng):
    w = np.zeros((0, 128), np.float32)
    q, s, b = qmm.quantize(w)
    assert q.shape == (0, 16) and s.shape == (0, 2)
    w, q, s, b = quantized(rng)
    y = qmm.quantized_matmul(np.zeros((0, 256), np.float32), q, s, b)
    assert y.shape == (0, 32)


def test_describe_quantized_matmul(rng):
    w, q, s, b = quantized(rng)
    info = qmm.describe_quantized_matmul(np.zeros((3, 256), np.float32), q, s, b)
    assert info["device"] == "cpu"
    assert info["min_weight_bytes"] == q.nbytes + s.nbytes + b.nbytes
    assert info["weight_bytes"] >= info["min_weight_bytes"]


def test_type_stub_lists_every_name_of_the_extension():
    import ast
    import pathlib

    stub = pathlib.Path(qmm.__file__).with_name("_qmm.pyi")
    assert stub.exists() and stub.with_name("py.typed").exists()
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    public = {n for n in dir(_qmm) if not n.startswith("_")} | {"__version__"}
    assert public <= declared, public - declared
