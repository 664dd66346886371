"""How qmm meets the array libraries: which framework an input belongs to, how that framework
allocates qmm's outputs, and which CUDA stream a call runs on.

Nothing here copies an input. The extension reads every input through DLPack; this module only
rewrites what DLPack cannot express:

- NumPy has no bfloat16. An ``ml_dtypes.bfloat16`` array is passed as a ``uint16`` view, with a
  bit in ``bf16_mask`` telling the extension that those 16 bits are bfloat16.
- PyTorch's ``uint32`` is a "shell" dtype whose DLPack export older releases lack, so packed
  weights travel as ``int32`` views (same bits) and outputs come back as ``uint32`` views.
- PyTorch tensors travel as capsules from ``torch.utils.dlpack.to_dlpack``: a C call, about 4x
  cheaper than ``Tensor.__dlpack__`` (Python-level checks), which matters at the few-microsecond
  scale of small-M calls. Like ``__dlpack__()`` without a stream it synchronizes nothing, and it
  also exports tensors that require grad (qmm has no autograd: outputs carry no gradient).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Tuple

import numpy as np

try:  # optional: NumPy's only way to hold bfloat16
    import ml_dtypes as _ml_dtypes

    BFLOAT16_NUMPY: Optional[np.dtype] = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16_NUMPY = None

NUMPY, TORCH, CUPY = "numpy", "torch", "cupy"

# DLPack device types (dlpack.h): CPU and pinned host memory are both host memory.
_DL_HOST = (1, 3)


def _torch():
    return sys.modules.get("torch")


def _cupy():
    return sys.modules.get("cupy")


def kind_of(a: Any) -> str:
    """The framework that owns ``a``: 'numpy', 'torch' or 'cupy'. Other DLPack producers that
    live in host memory (JAX on the CPU, MLX, ...) count as NumPy: their outputs are NumPy arrays.
    """
    if isinstance(a, np.ndarray):
        return NUMPY
    module = type(a).__module__
    if module.startswith("torch"):
        torch = _torch()
        if torch is not None and isinstance(a, torch.Tensor):
            return TORCH
    elif module.startswith("cupy"):
        cupy = _cupy()
        if cupy is not None and isinstance(a, cupy.ndarray):
            return CUPY
    dlpack_device = getattr(a, "__dlpack_device__", None)
    if dlpack_device is not None and hasattr(a, "__dlpack__"):
        if dlpack_device()[0] in _DL_HOST:
            return NUMPY
        raise TypeError(
            f"qmm allocates CUDA outputs with PyTorch or CuPy; a CUDA array of type "
            f"{type(a).__module__}.{type(a).__name__} is not supported (convert it with "
            f"torch.from_dlpack or cupy.from_dlpack, which do not copy)"
        )
    raise TypeError(
        f"qmm takes NumPy arrays, PyTorch tensors, CuPy arrays or other DLPack arrays, "
        f"not {type(a).__module__}.{type(a).__name__}"
    )


def lower(a: Any, index: int) -> Tuple[Any, int]:
    """What the extension receives for input number ``index``, and the bf16_mask bit it needs."""
    if isinstance(a, np.ndarray):
        if BFLOAT16_NUMPY is not None and a.dtype == BFLOAT16_NUMPY:
            return a.view(np.uint16), 1 << index
        return a, 0
    torch = _torch()
    if torch is not None and isinstance(a, torch.Tensor):
        if a.dtype == getattr(torch, "uint32", None):
            a = a.view(torch.int32)
        return _torch_to_dlpack()(a), 0
    return a, 0


_to_dlpack = None


def _torch_to_dlpack():
    global _to_dlpack
    if _to_dlpack is None:
        from torch.utils.dlpack import to_dlpack

        _to_dlpack = to_dlpack
    return _to_dlpack


# ---- allocators -----------------------------------------------------------------------------

_allocators: dict = {}


def _numpy_alloc(shape, dtype_name):
    if dtype_name == "bfloat16":
        if BFLOAT16_NUMPY is None:
            raise ValueError(
                "NumPy has no bfloat16: install ml_dtypes (pip install ml_dtypes) to get bfloat16 "
                "NumPy arrays, or use float16/float32"
            )
        return np.empty(shape, dtype=np.uint16)  # finish() views it as ml_dtypes.bfloat16
    return np.empty(shape, dtype=dtype_name)


def _torch_dtypes(torch):
    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "uint32": torch.int32,  # finish() views it as torch.uint32
    }


def allocator(kind: str, a: Any) -> Callable:
    """``alloc(shape, dtype_name)`` for outputs on the device of ``a`` (cached per device)."""
    if kind == NUMPY:
        return _numpy_alloc
    if kind == TORCH:
        device = a.device
        key = (TORCH, device)
        alloc = _allocators.get(key)
        if alloc is None:
            torch = _torch()
            dtypes = _torch_dtypes(torch)
            empty = torch.empty
            to_dlpack = _torch_to_dlpack()

            # (the tensor for the user, a capsule of it for the extension)
            def alloc(shape, dtype_name, _d=dtypes, _dev=device):
                t = empty(shape, dtype=_d[dtype_name], device=_dev)
                return t, to_dlpack(t)

            _allocators[key] = alloc
        return alloc
    cupy = _cupy()
    # CuPy allocates on its current device; call() enters the input's device first.
    return cupy.empty


def finish(kind: str, out: Any) -> Any:
    """An output as the user sees it (undoes the dtype rewrites of the allocators)."""
    if kind == NUMPY:
        if out.dtype == np.uint16:
            return out.view(BFLOAT16_NUMPY)
        return out
    if kind == TORCH:
        torch = _torch()
        uint32 = getattr(torch, "uint32", None)  # absent before torch 2.3
        if out.dtype == torch.int32 and uint32 is not None:
            try:
                return out.view(uint32)
            except (RuntimeError, TypeError):  # a torch that cannot bit-cast to uint32
                return out
        return out
    return out


# ---- streams --------------------------------------------------------------------------------


def stream_handle(stream: Any) -> int:
    """A cudaStream_t as an int from an int, a torch.cuda.Stream or a cupy Stream."""
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):
        handle = getattr(stream, attr, None)
        if isinstance(handle, int):
            return handle
    raise TypeError(
        f"stream must be an int (cudaStream_t), a torch.cuda.Stream or a cupy.cuda.Stream, "
        f"not {type(stream).__name__}"
    )


def current_stream(kind: str, a: Any) -> int:
    """The stream the framework of ``a`` would use now: PyTorch's current stream of a's device,
    CuPy's current stream; 0 (ignored) on the CPU."""
    if kind == TORCH:
        if a.device.type == "cuda":
            return _torch().cuda.current_stream(a.device).cuda_stream
        return 0
    if kind == CUPY:
        return _cupy().cuda.get_current_stream().ptr
    return 0


class _NoScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_SCOPE = _NoScope()


def device_scope(kind: str, a: Any):
    """CuPy allocates on, and reports the stream of, its current device: enter a's device."""
    if kind == CUPY:
        return a.device
    return _NO_SCOPE
