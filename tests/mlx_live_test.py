#!/usr/bin/env python3
"""Live MLX check: has the MLX installed here (mlx[cpu] in .venv) write a fresh golden set with a
new seed and larger weights, then runs qmm's golden tests on it (QMM_GOLDEN_DIR).

    tests/mlx_live_test.py --tests build/tests/qmm_tests [--seed N] [--keep DIR]

Exit status 77 with "SKIPPED: mlx not importable" when MLX cannot be imported (ctest reports the
test as skipped); otherwise the golden tests' status.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", required=True, help="the qmm_tests executable")
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed, to reproduce)")
    ap.add_argument("--keep", default=None, help="write the golden set here and keep it")
    args = ap.parse_args()

    try:
        import mlx.core as mx
    except Exception as e:  # ImportError, or a broken wheel raising something else
        print(f"SKIPPED: mlx not importable with {sys.executable} ({e.__class__.__name__}: {e}); "
              "scripts/install_deps.sh installs mlx[cpu] into .venv")
        return SKIP

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"mlx {mx.__version__} from {os.path.dirname(mx.__file__)}; seed {seed} "
          f"(rerun with --seed {seed} to reproduce)", flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.keep or tempfile.mkdtemp(prefix="qmm-golden-live-")
    try:
        gen = [sys.executable, os.path.join(here, "..", "scripts", "make_golden.py"),
               "--out", out, "--seed", str(seed), "--rows", "6", "--groups", "4"]
        subprocess.run(gen, check=True)
        env = dict(os.environ, QMM_GOLDEN_DIR=out)
        rc = subprocess.run([args.tests, "--gtest_brief=1", "--gtest_filter=GoldenSet.*:Mlx/Golden.*"],
                            env=env).returncode
        print("live MLX golden tests " + ("passed" if rc == 0 else f"FAILED (seed {seed}, data in {out})"))
        if rc != 0 and not args.keep:
            args.keep = out  # keep the failing set for inspection
        return rc
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
