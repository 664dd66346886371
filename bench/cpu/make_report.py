#!/usr/bin/env python3
"""Merges qmm_cpu_bench and mlx_cpu_bench.py CSVs into the markdown tables of bench/results/cpu-*.md.

    python3 bench/cpu/make_report.py --qmm run1.csv run2.csv run3.csv --mlx mlx.csv > tables.md

Several qmm runs (the machine is shared): for each (dtype, shape, M) the run with the lowest
median time is kept, with the probe of that same row (timed interleaved with those calls, so
both saw the same machine). The fastest probe of each (dtype, shape) over all runs is shown
too. The targets of issue 2 are checked per (dtype, shape): M=1 at >= 60 % of the probe,
t(M=8)/t(M=1) <= 1.5, and qmm faster than MLX at every M that MLX was timed at.
"""
import argparse
import csv
from collections import defaultdict


def read(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows.extend(csv.DictReader(f))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qmm", nargs="+", required=True)
    ap.add_argument("--mlx", nargs="*", default=[])
    args = ap.parse_args()

    best = {}  # (dtype, shape, M) -> row with the lowest median
    probe = defaultdict(lambda: float("inf"))  # (dtype, shape) -> fastest probe (us)
    runs = defaultdict(int)
    for r in read(args.qmm):
        key = (r["dtype"], r["shape"], int(r["M"]))
        runs[key] += 1
        if key not in best or float(r["us_median"]) < float(best[key]["us_median"]):
            best[key] = r
        probe[(r["dtype"], r["shape"])] = min(probe[(r["dtype"], r["shape"])], float(r["probe_us"]))
    mlx = {}
    for r in read(args.mlx):
        mlx[(r["dtype"], r["shape"], int(r["M"]))] = float(r["us_median"])

    dtypes = sorted({k[0] for k in best}, key=lambda d: ["float16", "bfloat16", "float32"].index(d))
    shapes = [s for s in ["q_o", "k_v", "gate_up", "down"] if any(k[1] == s for k in best)]
    summary = []
    for d in dtypes:
        print(f"### x {d}, scales {d}\n")
        print("| shape (K->N) | MB | M | qmm us | qmm GB/s | % of probe | qmm t(M)/t(1) | MLX us | MLX t(M)/t(1) "
              "| MLX / qmm |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s in shapes:
            ms = sorted(k[2] for k in best if k[0] == d and k[1] == s)
            if not ms:
                continue
            t1 = float(best[(d, s, ms[0])]["us_median"])
            m1 = mlx.get((d, s, ms[0]))
            slower = []
            for M in ms:
                r = best[(d, s, M)]
                us, nbytes = float(r["us_median"]), float(r["bytes"])
                pct = 100.0 * float(r["probe_us"]) / us
                m = mlx.get((d, s, M))
                if m is not None and m <= us:
                    slower.append(M)
                mlx_cols = f"{m:.0f} | {m / m1:.2f} | {m / us:.0f}x" if m is not None and m1 else "- | - | -"
                print(f"| {s} ({r['K']}->{r['N']}) | {nbytes / 1e6:.2f} | {M} | {us:.1f} | {nbytes / us / 1e3:.1f} | "
                      f"{pct:.0f} % | {us / t1:.2f} | {mlx_cols} |")
            r1 = best[(d, s, ms[0])]
            pct1 = 100.0 * float(r1["probe_us"]) / float(r1["us_median"])
            t8 = best.get((d, s, 8))
            ratio8 = float(t8["us_median"]) / t1 if t8 else None
            timed = [M for M in ms if (d, s, M) in mlx]
            summary.append((d, s, float(r1["bytes"]) / float(r1["probe_us"]) / 1e3,
                            float(r1["bytes"]) / probe[(d, s)] / 1e3, pct1, ratio8, timed, slower))
        print()

    print("### Targets (issue 2)\n")
    print("| x dtype | shape | probe GB/s (M=1 row; best run) | M=1 % of probe (>= 60 %) | t(8)/t(1) (<= 1.5) | "
          "faster than MLX at every timed M |")
    print("|---|---|---|---|---|---|")
    for d, s, gbs, best_gbs, pct1, ratio8, timed, slower in summary:
        r8 = f"{ratio8:.2f} {'yes' if ratio8 <= 1.5 else 'NO'}" if ratio8 is not None else "-"
        if timed:
            vs = "yes (M = " + ",".join(map(str, timed)) + ")" if not slower else "NO at M = " + ",".join(map(str, slower))
        else:
            vs = "not timed"
        print(f"| {d} | {s} | {gbs:.1f}; {best_gbs:.1f} | {pct1:.0f} % {'yes' if pct1 >= 60 else 'NO'} | {r8} | {vs} |")
    print(f"\nqmm rows: best of {max(runs.values()) if runs else 0} runs per point.")


if __name__ == "__main__":
    main()
