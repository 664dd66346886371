#!/usr/bin/env python3
"""Writes golden vectors for qmm's MLX-compatibility tests, computed by real MLX (mlx[cpu]).

For every bits x group_size x dtype it stores a small weight (random rows plus rows of "nasty"
groups: exact ties, constant, all-zero, all-negative, tiny and huge magnitudes, ...), what
mx.quantize and mx.dequantize make of it, and mx.quantized_matmul outputs for transpose=True and
transpose=False with a batched x. A few extra cases per dtype cover a batched weight with
broadcasting and a 1-D x.

Output: <out>/golden.json (index: versions, seed, one entry per case, each array as
{offset, nbytes, shape, dtype} into the blob) and <out>/golden.bin (raw little-endian arrays;
float16 and bfloat16 as their 16-bit patterns). tests/golden_data.cpp reads them.

    .venv/bin/python scripts/make_golden.py                      # rewrite tests/golden/
    .venv/bin/python scripts/make_golden.py --out /tmp/g --seed 7 --rows 16   # a fresh set
"""
import argparse
import json
import os
import platform
import sys

import numpy as np

try:
    import mlx.core as mx
except ImportError as e:  # the live test (tests/mlx_live_test.py) checks this before calling us
    sys.exit(f"make_golden.py: mlx is not importable ({e}); run scripts/install_deps.sh")

BITS = [2, 3, 4, 5, 6, 8]
GROUP_SIZES = [32, 64, 128]
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def nasty_groups(bits, g, dtype, rng):
    """(name, values) for each nasty group; values are float64 and get cast to dtype."""
    n = (1 << bits) - 1
    # Exact ties: with extremes 0 and n the scale is exactly +-1 and the bias 0 or +-n, so every
    # half-integer k + 0.5 lands on (w - bias) / scale = integer + 0.5 exactly; rint must pick the
    # even neighbour. Half-integers below 64 are exact in bfloat16 (8 significant bits).
    halves = np.array([k + 0.5 for k in range(min(n, 64))])
    ties = np.resize(halves, g)
    ties[0], ties[1] = 0.0, float(n)
    ties = rng.permutation(ties)
    huge = 1e3 if dtype == "float16" else 1e4  # float16: keep matmul outputs below 65504
    groups = [
        ("ties", ties),
        ("ties_negative", -ties),  # the edge is wmin: positive scale
        ("ties_scaled", ties * 2.0**-7),  # exact power-of-two scaling keeps the ties exact
        ("constant", np.full(g, 0.3)),
        ("constant_negative", np.full(g, -1.7)),
        ("all_zero", np.zeros(g)),
        ("all_negative", -(np.abs(rng.standard_normal(g)) + 0.1)),
        ("tiny", rng.standard_normal(g) * 1e-6),
        ("tiny_constant", np.full(g, 3e-8)),  # below the 1e-7 scale floor: q0 = 0, bias = 0
        ("huge", rng.standard_normal(g) * huge),
        ("symmetric", np.linspace(-1.0, 1.0, g)),  # |wmin| == |wmax|: the edge is wmax
        ("outlier", np.concatenate([rng.standard_normal(g - 1) * 0.01, [5.0]])),
    ]
    return groups


def mx_bits(a):
    """An MLX array as a numpy array of its raw bits (uint16 for half types)."""
    if a.dtype in (mx.float16, mx.bfloat16):
        return np.array(a.view(mx.uint16))
    return np.array(a)


class Blob:
    def __init__(self):
        self.chunks = []
        self.size = 0

    def add(self, a, dtype_name):
        raw = mx_bits(a)
        data = np.ascontiguousarray(raw).astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
        entry = {"offset": self.size, "nbytes": len(data), "shape": list(a.shape), "dtype": dtype_name}
        self.chunks.append(data)
        self.size += len(data)
        pad = (-self.size) % 8
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        return entry


def dtype_name(a):
    return {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16", mx.uint32: "uint32"}[a.dtype]


def add_matmul(blob, x, w_q, scales, biases, transpose, g, bits, label):
    out = mx.quantized_matmul(x, w_q, scales, biases, transpose=transpose, group_size=g, bits=bits)
    mx.eval(out)
    return {
        "label": label,
        "transpose": transpose,
        "x": blob.add(x, dtype_name(x)),
        "out": blob.add(out, dtype_name(out)),
    }


def make_case(blob, bits, g, dtype, rng, random_rows, groups_per_row):
    mxd = DTYPES[dtype]
    nasty = nasty_groups(bits, g, dtype, rng)
    nasty_rows = -(-len(nasty) // groups_per_row)
    rows = random_rows + nasty_rows
    K = groups_per_row * g
    w = np.empty((rows, K))
    for r in range(random_rows):  # different magnitudes and offsets per row: signed biases
        w[r] = rng.standard_normal(K) * 10.0 ** rng.uniform(-2, 1) + rng.uniform(-1, 1)
    labels = []
    for i in range(nasty_rows * groups_per_row):
        r, c = random_rows + i // groups_per_row, i % groups_per_row
        name, vals = nasty[i] if i < len(nasty) else ("random", rng.standard_normal(g))
        w[r, c * g:(c + 1) * g] = vals
        labels.append({"row": r, "group": c, "kind": name})
    wm = mx.array(w.astype(np.float32)).astype(mxd)
    w_q, scales, biases = mx.quantize(wm, group_size=g, bits=bits)
    deq = mx.dequantize(w_q, scales, biases, group_size=g, bits=bits)
    mx.eval(w_q, scales, biases, deq)

    def rand_x(shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(mxd)

    matmuls = [
        # transpose=True: W is (N=rows, K), x (2, 3, K) -> (2, 3, rows)
        add_matmul(blob, rand_x((2, 3, K)), w_q, scales, biases, True, g, bits, "x(2,3,K) w(N,K)"),
        # transpose=False: the same packed matrix read as W (K=rows, N=cols)
        add_matmul(blob, rand_x((2, 3, rows)), w_q, scales, biases, False, g, bits, "x(2,3,K) w(K,N)"),
    ]
    return {
        "name": f"b{bits}_g{g}_{dtype}",
        "bits": bits,
        "group_size": g,
        "dtype": dtype,
        "w": blob.add(wm, dtype),
        "w_q": blob.add(w_q, "uint32"),
        "scales": blob.add(scales, dtype),
        "biases": blob.add(biases, dtype),
        "dequantized": blob.add(deq, dtype),
        "nasty_groups": labels,
        "matmuls": matmuls,
    }


def make_broadcast_case(blob, bits, g, dtype, rng):
    """A batched weight (3, N, K) quantized in one call, with broadcast and 1-D x."""
    mxd = DTYPES[dtype]
    N, K = 8, 2 * g
    wm = mx.array(rng.standard_normal((3, N, K)).astype(np.float32)).astype(mxd)
    w_q, scales, biases = mx.quantize(wm, group_size=g, bits=bits)
    deq = mx.dequantize(w_q, scales, biases, group_size=g, bits=bits)
    mx.eval(w_q, scales, biases, deq)

    def rand_x(shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(mxd)

    # Transpose=False reads the same (3, N, K) packing as W (3, K'=N, N'=K).
    matmuls = [
        add_matmul(blob, rand_x((2, 1, 3, K)), w_q, scales, biases, True, g, bits, "x(2,1,M,K) w(3,N,K)"),
        add_matmul(blob, rand_x((1, 5, K)), w_q, scales, biases, True, g, bits, "x(1,M,K) w(3,N,K)"),
        add_matmul(blob, rand_x((2, 1, 3, N)), w_q, scales, biases, False, g, bits, "x(2,1,M,K) w(3,K,N)"),
    ]
    # 1-D x against a 2-D weight. MLX broadcasts batch dims only when x and w both have more than
    # two dims: for a 1-D or 2-D x against a batched w it silently uses w[0] (mlx 0.32.4), where
    # qmm broadcasts as matmul does; those combinations are therefore not golden cases (qmm's
    # fp64 reference checks them in tests/test_matmul_paths.cpp).
    w2 = mx.array(rng.standard_normal((N, K)).astype(np.float32)).astype(mxd)
    q2 = mx.quantize(w2, group_size=g, bits=bits)
    mx.eval(*q2)
    one_d = [
        add_matmul(blob, rand_x((K,)), *q2, True, g, bits, "x(K) w(N,K)"),
        add_matmul(blob, rand_x((N,)), *q2, False, g, bits, "x(K) w(K,N)"),
    ]
    return [
        {
            "name": f"b{bits}_g{g}_{dtype}_batched",
            "bits": bits,
            "group_size": g,
            "dtype": dtype,
            "w": blob.add(wm, dtype),
            "w_q": blob.add(w_q, "uint32"),
            "scales": blob.add(scales, dtype),
            "biases": blob.add(biases, dtype),
            "dequantized": blob.add(deq, dtype),
            "nasty_groups": [],
            "matmuls": matmuls,
        },
        {
            "name": f"b{bits}_g{g}_{dtype}_vector",
            "bits": bits,
            "group_size": g,
            "dtype": dtype,
            "w": blob.add(w2, dtype),
            "w_q": blob.add(q2[0], "uint32"),
            "scales": blob.add(q2[1], dtype),
            "biases": blob.add(q2[2], dtype),
            "dequantized": blob.add(mx.dequantize(*q2, group_size=g, bits=bits), dtype),
            "nasty_groups": [],
            "matmuls": one_d,
        },
    ]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "golden"))
    ap.add_argument("--seed", type=int, default=20240531)
    ap.add_argument("--rows", type=int, default=4, help="random rows per weight (plus the nasty rows)")
    ap.add_argument("--groups", type=int, default=3, help="groups per row")
    args = ap.parse_args()

    mx.set_default_device(mx.cpu)  # the golden judge is MLX's CPU reference quantizer
    rng = np.random.default_rng(args.seed)
    blob = Blob()
    cases = []
    for dtype in DTYPES:
        for bits in BITS:
            for g in GROUP_SIZES:
                cases.append(make_case(blob, bits, g, dtype, rng, args.rows, args.groups))
        # Straddling (3-bit) and aligned (4-bit) packings for the batched/broadcast shapes.
        cases += make_broadcast_case(blob, 4, 64, dtype, rng)
        cases += make_broadcast_case(blob, 3, 32, dtype, rng)

    os.makedirs(args.out, exist_ok=True)
    index = {
        "generator": "scripts/make_golden.py",
        "mlx_version": mx.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "seed": args.seed,
        "blob": "golden.bin",
        "cases": cases,
    }
    with open(os.path.join(args.out, "golden.bin"), "wb") as f:
        for c in blob.chunks:
            f.write(c)
    # Readable but small: the header fields one per line, each case on one line.
    header = {k: v for k, v in index.items() if k != "cases"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    case_lines = ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in cases)
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        f.write("{\n" + "\n".join(lines) + '\n "cases": [\n' + case_lines + "\n ]\n}\n")
    print(f"make_golden: {len(cases)} cases, {blob.size} bytes, mlx {mx.__version__} -> {args.out}")


if __name__ == "__main__":
    main()
