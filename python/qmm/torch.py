"""PyTorch integration: :class:`QuantizedLinear`, a ``torch.nn.Module`` holding MLX-format
weights and calling qmm in ``forward``.

>>> import torch, qmm.torch
>>> linear = torch.nn.Linear(4096, 1024, dtype=torch.float16, device="cuda")
>>> layer = qmm.torch.QuantizedLinear.from_linear(linear, group_size=64, bits=4)
>>> y = layer(torch.randn(3, 4096, dtype=torch.float16, device="cuda"))  # (3, 1024)

The layer is for inference: it has buffers, no parameters, and its output has no gradient.
``forward`` allocates nothing but its output, from PyTorch's caching allocator, and runs on
PyTorch's current CUDA stream, so it can be captured in a CUDA graph (``torch.cuda.graph``).
Run it once on the stream you capture on before capturing (qmm keeps a split-K workspace per
stream and cannot allocate it during a capture)::

    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        layer(static_x)                      # warm-up: sets up qmm's workspace for stream s
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        static_y = layer(static_x)
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from . import _frameworks as _fw
from . import _qmm
from . import quantize as _quantize

__all__ = ["QuantizedLinear"]

_SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
_SUPPORTED_GROUPS = (32, 64, 128)


def _to_torch(a: Any, name: str) -> torch.Tensor:
    """A tensor sharing ``a``'s memory where the source allows it (NumPy, DLPack), else a copy
    (MLX arrays). uint32 becomes an int32 view with the same bits."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        if _fw.BFLOAT16_NUMPY is not None and a.dtype == _fw.BFLOAT16_NUMPY:
            t = torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16)
        elif a.dtype == np.uint32:
            t = torch.from_numpy(np.ascontiguousarray(a).view(np.int32))
        else:
            t = torch.from_numpy(np.ascontiguousarray(a))
    elif type(a).__module__.startswith("mlx"):
        import mlx.core as mx

        if a.dtype == mx.bfloat16:  # NumPy cannot hold it: move the bits as uint16
            t = torch.from_numpy(np.array(a.view(mx.uint16))).view(torch.bfloat16)
        elif a.dtype == mx.uint32:
            t = torch.from_numpy(np.array(a).view(np.int32))
        else:
            t = torch.from_numpy(np.array(a))
    elif hasattr(a, "__dlpack__"):
        t = torch.from_dlpack(a)
    else:
        raise TypeError(f"{name} must be a tensor or array, not {type(a).__name__}")
    if t.dtype == getattr(torch, "uint32", None):
        t = t.view(torch.int32)
    return t


class QuantizedLinear(torch.nn.Module):
    """``y = x @ dequantize(weight).T + bias`` with the weight in MLX's affine format, computed
    by ``qmm.quantized_matmul``.

    Buffers (named as in MLX checkpoints, so ``load_state_dict`` takes an mlx-community layer's
    ``weight``/``scales``/``biases``/``bias`` tensors directly):

    - ``weight``: packed weight, ``(out_features, in_features * bits / 32)``, stored as int32
      (the bits of MLX's uint32; a uint32 tensor given to ``load_state_dict`` is accepted).
    - ``scales``, ``biases``: ``(out_features, in_features / group_size)``, the layer's dtype.
    - ``bias``: ``(out_features,)`` or None.

    ``module.to(dtype)`` converts scales, biases and bias and leaves the packed weight alone.
    The output dtype is ``promote(x.dtype, scales.dtype)`` as in MLX: x's dtype when they match.
    A non-contiguous ``x`` is copied first (as nn.Linear accepts it); the functional
    ``qmm.quantized_matmul`` raises ValueError instead.
    """

    weight: torch.Tensor
    scales: torch.Tensor
    biases: torch.Tensor
    bias: Optional[torch.Tensor]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = 64,
        bits: int = 4,
        dtype: Optional[torch.dtype] = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        if bits not in _SUPPORTED_BITS:
            raise ValueError(
                f"[QuantizedLinear] bits={bits} is not supported; the supported bits are 2, 3, 4, 5, 6 and 8."
            )
        if group_size not in _SUPPORTED_GROUPS:
            raise ValueError(
                f"[QuantizedLinear] group_size={group_size} is not supported; the supported group sizes "
                f"are 32, 64 and 128."
            )
        if in_features % group_size != 0:
            raise ValueError(
                f"[QuantizedLinear] in_features={in_features} must be divisible by group_size={group_size}"
            )
        dtype = dtype or torch.get_default_dtype()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.bits = bits
        groups = in_features // group_size
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features * bits // 32, dtype=torch.int32, device=device)
        )
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("biases", torch.zeros(out_features, groups, dtype=dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_buffer("bias", None)

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_linear(
        cls,
        linear: torch.nn.Linear,
        group_size: int = 64,
        bits: int = 4,
        dtype: Optional[torch.dtype] = None,
    ) -> "QuantizedLinear":
        """Quantize a float ``nn.Linear`` with qmm (bit-identical to ``mx.quantize``) on its
        device. ``dtype``: convert the weight to this dtype first (default: keep it); the
        scales, biases and bias get the same dtype."""
        w = linear.weight.detach()
        if dtype is not None:
            w = w.to(dtype)
        w = w.contiguous()
        w_q, scales, biases = _quantize(w, group_size, bits)
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features = linear.in_features
        layer.out_features = linear.out_features
        layer.group_size = group_size
        layer.bits = bits
        layer.register_buffer("weight", _to_torch(w_q, "weight"))
        layer.register_buffer("scales", scales)
        layer.register_buffer("biases", biases)
        if linear.bias is not None:
            layer.register_buffer("bias", linear.bias.detach().to(w.dtype).clone())
        else:
            layer.register_buffer("bias", None)
        return layer

    @classmethod
    def from_mlx(
        cls,
        weight: Any,
        scales: Any,
        biases: Any,
        bias: Any = None,
        group_size: int = 64,
        bits: int = 4,
        device: Any = None,
    ) -> "QuantizedLinear":
        """Wrap the tensors of an MLX quantized linear (``mx.quantize`` output or an
        mlx-community checkpoint's ``P.weight``, ``P.scales``, ``P.biases``, ``P.bias``): torch
        tensors, NumPy arrays (ml_dtypes bfloat16 too), MLX arrays or DLPack arrays. Torch and
        NumPy inputs are shared, not copied, unless ``device`` moves them.

        Raises ValueError with qmm's message when the shapes, dtypes, bits and group size do not
        describe one quantized matrix.
        """
        w = _to_torch(weight, "weight")
        s = _to_torch(scales, "scales")
        b = _to_torch(biases, "biases")
        bias_t = None if bias is None else _to_torch(bias, "bias")
        if device is not None:
            w, s, b = w.to(device), s.to(device), b.to(device)
            bias_t = None if bias_t is None else bias_t.to(device)
        if w.dim() != 2:
            raise ValueError(f"[QuantizedLinear] weight must be 2-D (out_features, packed) but has shape {tuple(w.shape)}")
        in_features = w.shape[1] * 32 // bits
        # qmm validates the quantized matrix as quantized_matmul would (its messages).
        probe = torch.empty((0, in_features), dtype=s.dtype, device=w.device)
        _qmm.quantized_matmul_output(probe, w, s, b, True, group_size, bits, 0)
        out_features = w.shape[0]
        if bias_t is not None and tuple(bias_t.shape) != (out_features,):
            raise ValueError(
                f"[QuantizedLinear] bias must have shape ({out_features},) but has {tuple(bias_t.shape)}"
            )
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features = in_features
        layer.out_features = out_features
        layer.group_size = group_size
        layer.bits = bits
        layer.register_buffer("weight", w)
        layer.register_buffer("scales", s)
        layer.register_buffer("biases", b)
        if bias_t is not None:
            layer.register_buffer("bias", bias_t)
        else:
            layer.register_buffer("bias", None)
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MLX checkpoints store the packed weight as uint32; this module keeps the same bits as int32.
        key = prefix + "weight"
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.dtype == getattr(torch, "uint32", None):
            state_dict[key] = w.view(torch.int32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- compute -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
        to_dlpack = _fw._torch_to_dlpack()
        weight = self.weight
        if weight.dtype != torch.int32:  # a uint32 weight assigned by hand
            weight = weight.view(torch.int32)
        y = _qmm.quantized_matmul(
            to_dlpack(x),
            to_dlpack(weight),
            to_dlpack(self.scales),
            to_dlpack(self.biases),
            True,
            self.group_size,
            self.bits,
            _fw.allocator(_fw.TORCH, x),
            stream,
            "",
            0,
        )
        if self.bias is not None:
            y.add_(self.bias)
        return y

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float weight ``(out_features, in_features)`` this layer multiplies by."""
        from . import dequantize

        return dequantize(self.weight, self.scales, self.biases, self.group_size, self.bits, dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, bits={self.bits}, "
            f"dtype={self.scales.dtype}"
        )
