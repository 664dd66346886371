#!/usr/bin/env python3
"""Draws a `qmm bench` report (schema qmm-bench/1) as time vs M, one panel per shape.

    python bench/plot_bench.py report.json -o report.png [--peers peers.json]

Each panel: qmm's median with its min-max band, the pure-read probe of the same bytes (the
practical ceiling, dashed), the dense equivalent, and every peer merged into the report (or given
with --peers, schema qmm-peers/1). Steps the tool flagged are circled. `qmm bench --plot` calls this.
"""
import argparse
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PEER_STYLE = {
    "tinygemm": dict(color="tab:orange", marker="s"),
    "cublas_fp16": dict(color="tab:gray", marker="x"),
    "gemlite": dict(color="tab:purple", marker="^"),
    "mlx_cuda": dict(color="tab:brown", marker="v"),
}


def merge_peers(report, peers):
    if peers.get("schema") != "qmm-peers/1":
        sys.exit("plot_bench: --peers is not a qmm-peers/1 document")
    for p in peers.get("peers", []):
        if not p.get("available"):
            continue
        for res in p.get("results", []):
            us = res.get("us")
            if us is None:
                continue
            if not isinstance(us, dict):
                us = {"median": us, "min": us, "max": us}
            for s in report["shapes"]:
                if s["k"] == res["k"] and s["n"] == res["n"]:
                    for row in s["rows"]:
                        if row["m"] == res["m"]:
                            row.setdefault("peers", {})[p["name"]] = us
    report["peers"] = peers.get("peers", [])
    report["peers_device"] = peers.get("device", {})


def shape_title(s):
    t = f"K={s['k']} \u2192 N={s['n']}"
    if s.get("label"):
        t += f"  ({s['label']})"
    b = s["weight_bytes"]
    size = f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} KB"
    return t + f"\n{size} of weights per call"


def draw(report, out_path):
    shapes = report["shapes"]
    n = len(shapes)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    cfg = report["config"]
    dev = report["device"]
    for i, s in enumerate(shapes):
        ax = axes[i // cols][i % cols]
        ms = [r["m"] for r in s["rows"]]
        med = [r["us"]["median"] for r in s["rows"]]
        lo = [r["us"]["min"] for r in s["rows"]]
        hi = [r["us"]["max"] for r in s["rows"]]
        ax.fill_between(ms, lo, hi, color="tab:blue", alpha=0.15, linewidth=0, label="qmm min-max")
        ax.plot(ms, med, "-o", color="tab:blue", label="qmm (median)", linewidth=2, markersize=4, zorder=5)
        probe = s["read_probe"]["us"]["median"]
        if probe > 0:
            ax.axhline(probe, color="black", linestyle="--", linewidth=1,
                       label=f"read probe ({s['read_probe']['gbs']:.0f} GB/s)")
        dense = [(r["m"], r["dense_us"]["median"]) for r in s["rows"] if r.get("dense_us")]
        if dense:
            label = f"dense cuBLAS {cfg['dtype']}" if dev["type"] == "cuda" else "dense float32 loop"
            ax.plot(*zip(*dense), "-", color="tab:green", linewidth=1.2, label=label)
        peer_names = sorted({p for r in s["rows"] for p in r.get("peers", {})})
        for p in peer_names:
            pts = [(r["m"], r["peers"][p]["median"]) for r in s["rows"] if p in r.get("peers", {})]
            style = PEER_STYLE.get(p, dict(marker="d"))
            ax.plot(*zip(*pts), "-", linewidth=1.2, markersize=4, label=p, **style)
        steps = {st["m"] for st in s.get("steps", [])}
        sx = [r["m"] for r in s["rows"] if r["m"] in steps]
        sy = [r["us"]["median"] for r in s["rows"] if r["m"] in steps]
        if sx:
            ax.scatter(sx, sy, s=120, facecolors="none", edgecolors="red", linewidths=1.5, zorder=6,
                       label="step > 1.10x vs M-1")
        ax.set_title(shape_title(s), fontsize=10)
        ax.set_xlabel("M (rows of x)")
        ax.set_ylabel("\u00b5s per call (median)")
        if ms and max(ms) / max(1, min(ms)) > 16:
            ax.set_xscale("log", base=2)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    method = ("CUDA graphs" if cfg.get("method") == "cuda-graph" else "wall clock") + ", rotated weights, median"
    title = f"qmm bench on {dev['name']}\n{cfg['bits']}-bit, group {cfg['group_size']}, {cfg['dtype']}, {method}"
    peers_card = (report.get("peers_device") or {}).get("name")
    if peers_card and peers_card != dev["name"]:
        title += f" (peers ran on {peers_card})"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    print(f"plot_bench: wrote {out_path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="qmm bench --json output")
    ap.add_argument("-o", "--output", required=True, help="PNG to write")
    ap.add_argument("--peers", help="a qmm-peers/1 file to merge before drawing")
    args = ap.parse_args()
    with open(args.report) as f:
        report = json.load(f)
    if report.get("schema") != "qmm-bench/1":
        sys.exit(f"plot_bench: {args.report} is not a qmm-bench/1 report")
    if args.peers:
        with open(args.peers) as f:
            merge_peers(report, json.load(f))
    draw(report, args.output)


if __name__ == "__main__":
    main()
