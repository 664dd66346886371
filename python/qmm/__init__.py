"""qmm: low-batch weight-quantized matrix multiplication in MLX's affine format.

The functions mirror ``mlx.core``: same names, arguments, defaults and bit-exact format, so the
``(w_q, scales, biases)`` of ``mx.quantize`` or of an mlx-community checkpoint run here as is.
They take NumPy arrays (CPU), PyTorch tensors (CPU or CUDA) and CuPy arrays (CUDA) — any DLPack
array — read them without copying, run on the arrays' device (CUDA work goes on PyTorch's or
CuPy's current stream), and return arrays of the same library, allocated by that library.

Inputs must be row-major contiguous: qmm never makes a hidden copy, and a non-contiguous array
raises ValueError (call ``.contiguous()`` / ``np.ascontiguousarray`` first). Invalid arguments
raise ValueError carrying qmm's C++ message, e.g. ``"[quantize] bits=7 is not supported; ..."``.

dtypes: float32, float16 and bfloat16 for weights and activations; uint32 packed weights (int32
is accepted for them too). NumPy has no bfloat16: install ``ml_dtypes`` and pass
``ml_dtypes.bfloat16`` arrays. CuPy has no bfloat16 at all. qmm has no autograd: outputs carry no
gradient.

>>> import numpy as np, qmm
>>> w = np.random.randn(256, 512).astype(np.float32)
>>> w_q, scales, biases = qmm.quantize(w, group_size=64, bits=4)
>>> x = np.random.randn(3, 512).astype(np.float32)
>>> y = qmm.quantized_matmul(x, w_q, scales, biases)  # (3, 256), x @ dequantize(w).T
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from . import _frameworks as _fw
from . import _qmm

__all__ = [
    "quantize",
    "dequantize",
    "quantized_matmul",
    "describe_quantized_matmul",
    "kernel_names",
    "cuda_available",
    "cuda_device_count",
    "device_info",
    "synchronize",
    "__version__",
]

__version__: str = _qmm.__version__

#: True if this build of the extension has qmm's CUDA backend.
cuda_built: bool = _qmm.cuda_built


def _check_mode(op: str, mode: str) -> None:
    if mode != "affine":
        raise ValueError(f"[{op}] mode={mode!r} is not supported; qmm implements mode='affine' only")


def _int(value: Any, default: int) -> int:
    # MLX accepts None for "the default of the mode".
    return default if value is None else int(value)


def _stream(kind: str, primary: Any, stream: Any) -> int:
    if stream is None:
        return _fw.current_stream(kind, primary)
    return _fw.stream_handle(stream)


def _dtype_name(dtype: Any) -> Optional[str]:
    """qmm's spelling of a dtype given as a string, NumPy/ml_dtypes, PyTorch or MLX dtype."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    name = str(dtype)  # "torch.float16", "mlx.core.float16", "<class 'numpy.float16'>"
    if name.startswith(("torch.", "mlx.core.")):
        return name.rsplit(".", 1)[-1]
    try:
        import numpy as np

        return np.dtype(dtype).name
    except TypeError:
        return name


def quantize(
    w: Any,
    /,
    group_size: Optional[int] = 64,
    bits: Optional[int] = 4,
    *,
    mode: str = "affine",
    stream: Any = None,
    kernel: Optional[str] = None,
) -> Tuple[Any, Any, Any]:
    """Quantize the last axis of ``w`` in groups of ``group_size`` (MLX's ``mx.quantize``).

    Args:
      w: float32, float16 or bfloat16 array of at least 2 dimensions, last dimension divisible
        by ``group_size``; contiguous.
      group_size: 32, 64 or 128.
      bits: 2, 3, 4, 5, 6 or 8.
      mode: only ``"affine"`` (MLX's default).
      stream: CUDA stream to run on (int handle, ``torch.cuda.Stream`` or CuPy stream); default:
        the current stream of ``w``'s framework.
      kernel: force a kernel configuration by name (see :func:`kernel_names`); default: qmm
        chooses.

    Returns:
      ``(w_q, scales, biases)``: ``w_q`` uint32 of shape ``(..., rows, cols * bits / 32)``;
      ``scales`` and ``biases`` of ``w``'s dtype and shape ``(..., rows, cols / group_size)``;
      arrays of ``w``'s library on ``w``'s device. Bit-identical to ``mx.quantize`` on the CPU.

    Raises:
      ValueError: unsupported bits, group size, dtype, shape or strides (qmm's message).
      TypeError: ``w`` is not an array.
    """
    _check_mode("quantize", mode)
    kind = _fw.kind_of(w)
    w_low, mask = _fw.lower(w, 0)
    with _fw.device_scope(kind, w):
        w_q, scales, biases = _qmm.quantize(
            w_low,
            _int(group_size, 64),
            _int(bits, 4),
            _fw.allocator(kind, w),
            _stream(kind, w, stream),
            kernel or "",
            mask,
        )
    return _fw.finish(kind, w_q), _fw.finish(kind, scales), _fw.finish(kind, biases)


def dequantize(
    w: Any,
    /,
    scales: Any,
    biases: Any,
    group_size: Optional[int] = 64,
    bits: Optional[int] = 4,
    dtype: Any = None,
    *,
    mode: str = "affine",
    stream: Any = None,
    kernel: Optional[str] = None,
) -> Any:
    """Dequantize ``w`` (MLX's ``mx.dequantize``): ``scales * q + biases`` per group.

    Args:
      w: uint32 (or int32) packed weight ``(..., rows, cols * bits / 32)``.
      scales, biases: ``(..., rows, cols / group_size)``, one float dtype.
      group_size, bits: as given to :func:`quantize`.
      dtype: output dtype (``"float16"``, ``np.float32``, ``torch.bfloat16``, ``mx.float16``,
        ...); default: the dtype of ``scales``.
      mode, stream, kernel: as in :func:`quantize`.

    Returns:
      Array of ``w``'s library and device, shape ``(..., rows, cols)``.
    """
    _check_mode("dequantize", mode)
    kind = _fw.kind_of(w)
    w_low, _ = _fw.lower(w, 0)
    s_low, s_mask = _fw.lower(scales, 1)
    b_low, b_mask = _fw.lower(biases, 2)
    with _fw.device_scope(kind, w):
        out = _qmm.dequantize(
            w_low,
            s_low,
            b_low,
            _int(group_size, 64),
            _int(bits, 4),
            _dtype_name(dtype),
            _fw.allocator(kind, w),
            _stream(kind, w, stream),
            kernel or "",
            s_mask | b_mask,
        )
    return _fw.finish(kind, out)


def quantized_matmul(
    x: Any,
    w: Any,
    /,
    scales: Any,
    biases: Any,
    transpose: bool = True,
    group_size: Optional[int] = 64,
    bits: Optional[int] = 4,
    *,
    mode: str = "affine",
    stream: Any = None,
    kernel: Optional[str] = None,
) -> Any:
    """``x @ dequantize(w).T`` (``transpose=True``, ``w`` is ``(..., N, K)``, the Linear layout)
    or ``x @ dequantize(w)`` (``transpose=False``, ``w`` is ``(..., K, N)``), as MLX's
    ``mx.quantized_matmul``.

    Args:
      x: float32, float16 or bfloat16 activations ``(..., M, K)`` (1-D: one row). Leading batch
        dimensions broadcast against those of ``w`` as in MLX.
      w, scales, biases: the quantized weight as returned by :func:`quantize`.
      transpose, group_size, bits: as in MLX.
      mode, stream, kernel: as in :func:`quantize`.

    Returns:
      Array of ``x``'s library and device, dtype ``promote(x.dtype, scales.dtype)`` (float32 for
      any mix of distinct float types), shape ``(..., M, N)``. The output is the only
      allocation of the call, made by ``x``'s library (PyTorch: its caching allocator, so the
      call can be captured in a CUDA graph).
    """
    _check_mode("quantized_matmul", mode)
    kind = _fw.kind_of(x)
    x_low, x_mask = _fw.lower(x, 0)
    w_low, _ = _fw.lower(w, 1)
    s_low, s_mask = _fw.lower(scales, 2)
    b_low, b_mask = _fw.lower(biases, 3)
    with _fw.device_scope(kind, x):
        out = _qmm.quantized_matmul(
            x_low,
            w_low,
            s_low,
            b_low,
            bool(transpose),
            _int(group_size, 64),
            _int(bits, 4),
            _fw.allocator(kind, x),
            _stream(kind, x, stream),
            kernel or "",
            x_mask | s_mask | b_mask,
        )
    return _fw.finish(kind, out)


def describe_quantized_matmul(
    x: Any,
    w: Any,
    /,
    scales: Any,
    biases: Any,
    transpose: bool = True,
    group_size: Optional[int] = 64,
    bits: Optional[int] = 4,
    *,
    kernel: Optional[str] = None,
) -> Dict[str, Any]:
    """How :func:`quantized_matmul` would run on these arguments, without running it: a dict with
    ``kernel``, ``device``, ``grid``, ``block_threads``, ``shared_bytes``, ``blocks_per_sm``,
    ``multiprocessors``, ``split_k``, ``weight_bytes``, ``min_weight_bytes``,
    ``workspace_bytes`` and ``waves``."""
    x_low, x_mask = _fw.lower(x, 0)
    w_low, _ = _fw.lower(w, 1)
    s_low, s_mask = _fw.lower(scales, 2)
    b_low, b_mask = _fw.lower(biases, 3)
    return _qmm.describe_quantized_matmul(
        x_low, w_low, s_low, b_low, bool(transpose), _int(group_size, 64), _int(bits, 4),
        kernel or "", x_mask | s_mask | b_mask,
    )


def kernel_names(device: str, op: str) -> List[str]:
    """Names the ``kernel=`` argument accepts for ``op`` ("quantize", "dequantize" or
    "quantized_matmul") on ``device`` ("cpu", "cuda" or "cuda:N")."""
    return _qmm.kernel_names(device, op)


def cuda_available() -> bool:
    """True if this build has qmm's CUDA backend and a CUDA device is present."""
    return _qmm.cuda_available()


def cuda_device_count() -> int:
    """Number of CUDA devices qmm sees (0 on CPU-only builds)."""
    return _qmm.cuda_device_count()


def device_info(device: str = "cpu") -> Dict[str, Any]:
    """Name, multiprocessors, compute capability, L2, memory and peak bandwidth of a device
    ("cpu", "cuda" or "cuda:N")."""
    return _qmm.device_info(device)


def synchronize(stream: Any = 0) -> None:
    """Wait until the work queued on a CUDA stream (int, torch or CuPy stream) is done."""
    _qmm.synchronize(_fw.stream_handle(stream))
