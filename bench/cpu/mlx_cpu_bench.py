#!/usr/bin/env python3
"""MLX's own CPU quantized_matmul at the shapes of MLX issue #3553: the peer of qmm_cpu_bench.

Same protocol as bench/cpu/cpu_bench.cpp: 4-bit g64 weights quantized by mx.quantize from
random normal weights in the activation dtype, copies rotated so that together they exceed
--rotate-factor x the last-level cache (each timed call reads the copy read longest ago), x hot,
mx.eval after every call, median over --repeats calls. Writes a CSV in qmm_cpu_bench's format
(impl = mlx) and prints a table.

    .venv/bin/python bench/cpu/mlx_cpu_bench.py --dtype float16 --m 1,2,4,8 --csv mlx.csv

MLX's CPU kernel is slow (hundreds of milliseconds to seconds per call at these shapes), so the
default is 3 repeats and --max-seconds caps the time spent on one (shape, M) point.
"""
import argparse
import csv
import math
import statistics
import sys
import time

try:
    import mlx.core as mx
except ImportError:  # pragma: no cover
    sys.exit("mlx is not importable: pip install 'mlx[cpu]' (scripts/requirements.txt)")

SHAPES = {"q_o": (5120, 5120), "k_v": (5120, 1024), "gate_up": (5120, 13824), "down": (13824, 5120)}
DTYPES = {"float16": mx.float16, "float32": mx.float32, "bfloat16": mx.bfloat16}


def parse_ms(text):
    out = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def last_level_cache_bytes():
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        best = max(best, int(text.rstrip("KM")) * scale)
    return best or 32 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float16,float32")
    ap.add_argument("--m", default="1-16")
    ap.add_argument("--shapes", default="q_o,k_v,gate_up,down")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="stop repeating a point once it has used this long (at least one timed call)")
    ap.add_argument("--rotate-factor", type=float, default=4.0)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--csv")
    args = ap.parse_args()

    mx.set_default_device(mx.cpu)
    llc = last_level_cache_bytes()
    ms = parse_ms(args.m)
    rows = []
    print(f"# mlx {mx.__version__} CPU quantized_matmul, {args.bits}-bit g{args.group}, transpose=True, "
          f"median of up to {args.repeats} calls, weights rotated over >= {args.rotate_factor:g}x LLC "
          f"({llc / 2**20:.0f} MiB)")
    for dname in args.dtype.split(","):
        dtype = DTYPES[dname]
        for sname in args.shapes.split(","):
            K, N = SHAPES[sname]
            w = (mx.random.normal((N, K), key=mx.random.key(1)) * 0.02).astype(dtype)
            wq, s, b = mx.quantize(w, group_size=args.group, bits=args.bits)
            mx.eval(wq, s, b)
            del w
            nbytes = wq.nbytes + s.nbytes + b.nbytes
            count = max(3, math.ceil(args.rotate_factor * llc / nbytes) + 1)
            copies = [(wq, s, b)]
            while len(copies) < count:
                c = (wq + 0, s * 1, b * 1)  # new buffers, same values
                mx.eval(*c)
                copies.append(c)
            nxt = 0
            for M in ms:
                x = mx.random.normal((M, K), key=mx.random.key(2 + M)).astype(dtype)
                mx.eval(x)
                for _ in range(args.warmup):
                    c = copies[nxt % count]
                    nxt += 1
                    mx.eval(mx.quantized_matmul(x, *c, transpose=True, group_size=args.group, bits=args.bits))
                times = []
                start = time.perf_counter()
                while len(times) < args.repeats and (not times or time.perf_counter() - start < args.max_seconds):
                    c = copies[nxt % count]
                    nxt += 1
                    t0 = time.perf_counter()
                    y = mx.quantized_matmul(x, *c, transpose=True, group_size=args.group, bits=args.bits)
                    mx.eval(y)
                    times.append(time.perf_counter() - t0)
                us = statistics.median(times) * 1e6
                rows.append(dict(impl="mlx", dtype=dname, shape=sname, K=K, N=N, M=M, bytes=nbytes,
                                 us_median=us, us_min=min(times) * 1e6, probe_us="", calls=len(times)))
                print(f"{dname} {sname} M={M}: {us:.1f} us ({len(times)} calls)", file=sys.stderr, flush=True)
            del copies

    print("\n| dtype | shape (K->N) | M | us (median) | GB/s | t(M)/t(1) | calls |\n|---|---|---|---|---|---|---|")
    t1 = {}
    for r in rows:
        key = (r["dtype"], r["shape"])
        t1.setdefault(key, r["us_median"])
        print(f"| {r['dtype']} | {r['shape']} ({r['K']}->{r['N']}) | {r['M']} | {r['us_median']:.1f} | "
              f"{r['bytes'] / r['us_median'] / 1e3:.2f} | {r['us_median'] / t1[key]:.2f} | {r['calls']} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=["impl", "dtype", "shape", "K", "N", "M", "bytes", "us_median", "us_min",
                                               "probe_us"], extrasaction="ignore")
            wr.writeheader()
            wr.writerows(rows)


if __name__ == "__main__":
    main()
