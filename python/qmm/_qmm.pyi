"""Type stubs of qmm._qmm, the nanobind extension behind the `qmm` package.

Use the functions of `qmm` instead: they choose the allocator and CUDA stream of the input's
framework and call these. Array arguments are any object that speaks DLPack (or the buffer
protocol); `alloc(shape, dtype_name)` must return a writable one. `bf16_mask` bit i marks array
argument i as a uint16 array holding bfloat16 bits (NumPy with ml_dtypes).
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

Allocator = Callable[[Tuple[int, ...], str], Any]

__version__: str
cuda_built: bool
FLAG_BFLOAT16_BITS: int
FLAG_PACKED_WEIGHT: int

def quantize(
    w: Any, group_size: int, bits: int, alloc: Allocator, stream: int, kernel: str, bf16_mask: int
) -> Tuple[Any, Any, Any]:
    """Quantize `w` into arrays made by `alloc(shape, dtype_name)`; returns (w_q, scales, biases)."""

def dequantize(
    w: Any,
    scales: Any,
    biases: Any,
    group_size: int,
    bits: int,
    dtype: Optional[str],
    alloc: Allocator,
    stream: int,
    kernel: str,
    bf16_mask: int,
) -> Any:
    """Dequantize into an array made by `alloc(shape, dtype_name)`."""

def quantized_matmul(
    x: Any,
    w: Any,
    scales: Any,
    biases: Any,
    transpose: bool,
    group_size: int,
    bits: int,
    alloc: Allocator,
    stream: int,
    kernel: str,
    bf16_mask: int,
) -> Any:
    """x @ dequantize(w).T (or x @ dequantize(w)) into an array made by `alloc(shape, dtype_name)`."""

def quantized_matmul_output(
    x: Any, w: Any, scales: Any, biases: Any, transpose: bool, group_size: int, bits: int, bf16_mask: int
) -> Tuple[Tuple[int, ...], str]:
    """Validate like quantized_matmul; return (shape, dtype_name) of its output."""

def describe_quantized_matmul(
    x: Any, w: Any, scales: Any, biases: Any, transpose: bool, group_size: int, bits: int, kernel: str, bf16_mask: int
) -> Dict[str, Any]:
    """How a quantized_matmul call would run (kernel, grid, split-K, bytes)."""

def view_info(array: Any, flags: int = 0) -> Dict[str, Any]:
    """The qmm::TensorView the extension makes of an array: data pointer, shape, strides (in
    elements), dtype and device. flags: FLAG_PACKED_WEIGHT (int32 read as packed uint32),
    FLAG_BFLOAT16_BITS (uint16 read as bfloat16). For tests."""

def kernel_names(device: str, op: str) -> List[str]:
    """Kernel configurations the `kernel=` argument accepts."""

def cuda_available() -> bool:
    """True if this build has CUDA and a CUDA device is present."""

def cuda_device_count() -> int:
    """Number of CUDA devices qmm sees."""

def device_info(device: str) -> Dict[str, Any]:
    """Facts about a device ('cpu' or 'cuda:N')."""

def synchronize(stream: int = 0) -> None:
    """Wait for the work queued on a CUDA stream (0: the legacy default stream)."""

def parse_dtype(name: str) -> str:
    """qmm's name for a dtype spelling ('fp16' -> 'float16')."""
