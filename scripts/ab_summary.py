#!/usr/bin/env python3
"""Summarises an A/B of qmm bench runs (scripts/gpu_ab.sh): for every shape and M, the time of
each label (the lowest of its rounds' medians, so one disturbed round does not decide) and its
change against the first label, with the kernel each label ran.

    python3 scripts/ab_summary.py LABEL=FILE[,FILE...] [LABEL=FILE...]

Each FILE is a `qmm bench --json` report (schema qmm-bench/1), one per round; the first LABEL is
the baseline. Rows are printed for the (shape, M) pairs every label measured.
"""

import json
import sys


def load(files):
    """{(k, n): {m: (median us, kernel)}}: per (shape, M) the lowest median over the files."""
    best = {}
    for path in files:
        with open(path) as f:
            report = json.load(f)
        if report.get("schema") != "qmm-bench/1":
            raise ValueError(f"{path}: not a qmm-bench/1 report")
        for shape in report["shapes"]:
            rows = best.setdefault((shape["k"], shape["n"]), {})
            for row in shape["rows"]:
                us = row["us"]["median"]
                kernel = row.get("launch", {}).get("kernel", "")
                if row["m"] not in rows or us < rows[row["m"]][0]:
                    rows[row["m"]] = (us, kernel)
    return best


def summary(labelled):
    """Text of the summary; labelled is [(label, {(k, n): {m: (us, kernel)}})], baseline first."""
    base_label, base = labelled[0]
    lines = [f"A/B: each time is the lowest round median (us); % against {base_label}"]
    for shape in sorted(base):
        ms = sorted(set.intersection(*(set(data.get(shape, {})) for _, data in labelled)))
        if not ms:
            continue
        lines.append(f"== K={shape[0]} -> N={shape[1]}")
        header = f"{'M':>5}" + "".join(f" {label:>22}" for label, _ in labelled) + "  kernels"
        lines.append(header)
        for m in ms:
            t0 = base[shape][m][0]
            cells = []
            kernels = []
            for i, (_, data) in enumerate(labelled):
                us, kernel = data[shape][m]
                change = "" if i == 0 else f" ({100.0 * (us / t0 - 1.0):+.1f}%)"
                cells.append(f" {us:>13.2f}{change:>9}" if i else f" {us:>22.2f}")
                kernels.append(kernel)
            lines.append(f"{m:>5}" + "".join(cells) + "  " + " / ".join(kernels))
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    labelled = []
    for arg in argv[1:]:
        label, files = arg.split("=", 1)
        labelled.append((label, load([f for f in files.split(",") if f])))
    sys.stdout.write(summary(labelled))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
