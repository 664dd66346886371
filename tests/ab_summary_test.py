"""CPU test of scripts/ab_summary.py (ctest ab_summary, label cpu): per (shape, M) each label's
lowest round median, its change against the first label, the kernels, only the M every label
measured; qmm model reports beside the bench ones, a shape the baseline lacks compared against the
first label that has it; a file of another schema refused.

    python3 tests/ab_summary_test.py scripts/ab_summary.py
"""

import importlib.util
import io
import json
import os
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout

spec = importlib.util.spec_from_file_location("ab_summary", os.path.abspath(sys.argv[1]))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def report(rows, kernel):
    """A qmm-bench/1 report of one shape, 5120 -> 1024; rows: {m: median us}."""
    return {
        "schema": "qmm-bench/1",
        "shapes": [{"k": 5120, "n": 1024,
                    "rows": [{"m": m, "us": {"median": us}, "launch": {"kernel": kernel}} for m, us in rows.items()]}],
    }


with tempfile.TemporaryDirectory() as tmp:
    def write(name, doc):
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    # Two rounds each; the second round of "tree" was disturbed at M=1, the variant lacks M=8.
    tree = [write("t1.json", report({1: 5.8, 2: 5.7, 8: 5.9}, "qmv_mma_m8_c8")),
            write("t2.json", report({1: 9.0, 2: 5.75, 8: 5.85}, "qmv_mma_m8_c8"))]
    k2 = [write("k1.json", report({1: 5.4, 2: 5.3}, "qmv_mma_m8_c8_k2")),
          write("k2.json", report({1: 5.35, 2: 5.32}, "qmv_mma_m8_c8_k2"))]
    out = io.StringIO()
    with redirect_stdout(out):
        status = tool.main(["ab_summary.py", "tree=" + ",".join(tree), "k2=" + ",".join(k2)])
    text = out.getvalue()
    assert status == 0, status
    lines = text.splitlines()
    assert lines[0].endswith("% against tree"), lines[0]
    assert lines[1] == "== K=5120 -> N=1024", lines[1]
    row1 = next(line for line in lines if line.split()[0] == "1")
    # Lowest medians: tree 5.8 (not 9.0), k2 5.35; 5.35 / 5.8 - 1 = -7.8 %.
    assert row1.split()[1:4] == ["5.80", "5.35", "(-7.8%)"], row1
    assert row1.endswith("qmv_mma_m8_c8 / qmv_mma_m8_c8_k2"), row1
    row2 = next(line for line in lines if line.split()[0] == "2")
    assert row2.split()[1:4] == ["5.70", "5.30", "(-7.0%)"], row2
    assert not any(line.split()[0] == "8" for line in lines[2:]), text  # only M both measured

    # qmm model reports (ms) in the same labels, and a shape only the variant measured.
    def model(rows):
        return {"schema": "qmm-model-bench/1", "model": "synthetic tiny",
                "rows": [{"m": m, "ms": ms} for m, ms in rows.items()]}

    tree_m = [write("tm1.json", model({1: 2.0, 8: 2.5})), write("tm2.json", model({1: 1.9, 8: 2.6}))]
    k2_m = [write("km1.json", model({1: 2.09, 8: 2.5}))]
    extra = write("x1.json", {"schema": "qmm-bench/1", "shapes": [
        {"k": 4096, "n": 4096, "rows": [{"m": 1, "us": {"median": 7.0}, "launch": {"kernel": "qmv_mma_m8"}}]}]})
    out = io.StringIO()
    with redirect_stdout(out):
        status = tool.main(["ab_summary.py", "tree=" + ",".join(tree + tree_m),
                            "k2=" + ",".join(k2 + k2_m + [extra])])
    assert status == 0, status
    lines = out.getvalue().splitlines()
    # Bench shapes first, then the model.
    titles = [line for line in lines if line.startswith("==")]
    assert titles == ["== K=4096 -> N=4096 (against k2)", "== K=5120 -> N=1024",
                      "== qmm model: synthetic tiny (ms)"], titles
    at = lines.index("== qmm model: synthetic tiny (ms)")
    model_rows = {line.split()[0]: line.split()[1:] for line in lines[at + 2:]}
    # Lowest medians: tree 1.9 (not 2.0) and 2.5, k2 2.09 and 2.5; 2.09 / 1.9 - 1 = +10.0 %.
    assert model_rows["1"] == ["1.900", "2.090", "(+10.0%)"], model_rows
    assert model_rows["8"] == ["2.500", "2.500", "(+0.0%)"], model_rows
    at = lines.index("== K=4096 -> N=4096 (against k2)")
    assert lines[at + 2].split()[:2] == ["1", "7.00"], lines[at + 2]

    # Usage errors and other schemas.
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert tool.main(["ab_summary.py"]) == 2
        assert tool.main(["ab_summary.py", "no-equals-sign"]) == 2
    other = write("other.json", {"schema": "qmm-peers/1", "peers": []})
    try:
        tool.load([other])
        raise AssertionError("a qmm-peers/1 file was accepted")
    except ValueError as e:
        assert "not a qmm-bench/1 or qmm-model-bench/1 report" in str(e), e

print("ab_summary: all checks passed")
