#!/usr/bin/env python3
"""Summarises an A/B of qmm bench and qmm model runs (scripts/gpu_ab.sh): for every shape (or
model) and M, the time of each label (the lowest of its rounds' medians, so one disturbed round
does not decide) and its change against the first label, with the kernel each label ran.

    python3 scripts/ab_summary.py LABEL=FILE[,FILE...] [LABEL=FILE...]

Each FILE is a `qmm bench --json` report (schema qmm-bench/1; times in us) or a `qmm model --json`
report (schema qmm-model-bench/1; the verify pass in ms), one per round. The first LABEL is the
baseline; a shape or model that it lacks is compared against the first label that has it. Rows are
printed for the M every label with that shape or model measured.
"""

import json
import sys


def load(files):
    """{key: {m: (median, kernel)}}: per shape ((k, n)) or model (("model", name)) and M, the lowest
    median over the files (us for a shape, ms for a model, whose kernel is "")."""
    best = {}

    def keep(rows, m, t, kernel):
        if m not in rows or t < rows[m][0]:
            rows[m] = (t, kernel)

    for path in files:
        with open(path) as f:
            report = json.load(f)
        schema = report.get("schema")
        if schema == "qmm-bench/1":
            for shape in report["shapes"]:
                rows = best.setdefault((shape["k"], shape["n"]), {})
                for row in shape["rows"]:
                    keep(rows, row["m"], row["us"]["median"], row.get("launch", {}).get("kernel", ""))
        elif schema == "qmm-model-bench/1":
            rows = best.setdefault(("model", report.get("model", "model")), {})
            for row in report["rows"]:
                keep(rows, row["m"], row["ms"], "")
        else:
            raise ValueError(f"{path}: not a qmm-bench/1 or qmm-model-bench/1 report")
    return best


def summary(labelled):
    """Text of the summary; labelled is [(label, {key: {m: (time, kernel)}})], baseline first."""
    first_label = labelled[0][0]
    lines = [f"A/B: each time is the lowest round median (us; qmm model in ms); % against {first_label}"]
    keys = sorted({key for _, data in labelled for key in data}, key=lambda key: (key[0] == "model", str(key)))
    for key in keys:
        present = [(label, data) for label, data in labelled if key in data]
        ms = sorted(set.intersection(*(set(data[key]) for _, data in present)))
        if not ms:
            continue
        model = key[0] == "model"
        title = f"== qmm model: {key[1]} (ms)" if model else f"== K={key[0]} -> N={key[1]}"
        if present[0][0] != first_label:
            title += f" (against {present[0][0]})"
        lines.append(title)
        lines.append(f"{'M':>5}" + "".join(f" {label:>22}" for label, _ in present) + ("" if model else "  kernels"))
        for m in ms:
            t0 = present[0][1][key][m][0]
            cells = []
            kernels = []
            for i, (_, data) in enumerate(present):
                t, kernel = data[key][m]
                value = f"{t:.3f}" if model else f"{t:.2f}"
                cells.append(f" {value:>13}{f' ({100.0 * (t / t0 - 1.0):+.1f}%)':>9}" if i else f" {value:>22}")
                kernels.append(kernel)
            lines.append(f"{m:>5}" + "".join(cells) + ("" if model else "  " + " / ".join(kernels)))
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
