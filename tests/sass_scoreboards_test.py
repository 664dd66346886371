"""CPU test of scripts/sass_scoreboards.py (ctest sass_scoreboards, label cpu): the control bits
of real sm_90a instructions (copied from `cuobjdump -sass` of qmv_mma_kernels.cu) decode to the
scoreboards ptxas chose, and --function picks the right function.

    python3 tests/sass_scoreboards_test.py scripts/sass_scoreboards.py
"""

import importlib.util
import io
import os
import sys
import tempfile
from contextlib import redirect_stdout

spec = importlib.util.spec_from_file_location("sass_scoreboards", os.path.abspath(sys.argv[1]))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

LISTING = """
\t\tFunction : first_kernel
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                          /* 0x00000a00ff017b82 */
                                                                                                   /* 0x000fe20000000800 */
\t\tFunction : qmv_wgmma_kernel
        /*21b0*/                   LDG.E.128.CONSTANT R152, desc[UR32][R88.64+0xc0] ;              /* 0x0000c02058987981 */
                                                                                                   /* 0x000368000c1e9d00 */
        /*3fc0*/                   PRMT R199, R152, 0x5410, R154 ;                                 /* 0x0000541098c77816 */
                                                                                                   /* 0x020fe4000000009a */
        /*4250*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;                                 /* 0x00008000000079c5 */
                                                                                                   /* 0x000fe40000010000 */
"""

failures = []


def check(what, got, want):
    if got != want:
        failures.append(f"{what}: got {got!r}, want {want!r}")


functions = dict(tool.functions(LISTING.split("\n")))
check("functions found", sorted(functions), ["first_kernel", "qmv_wgmma_kernel"])
body = functions["qmv_wgmma_kernel"]
check("instructions", [address for address, _, _ in body], ["21b0", "3fc0", "4250"])

load = body[0][2]
check("load stall", load["stall"], 4)
check("load yield", load["yield"], 1)
check("load sets scoreboard", load["write_sb"], 5)
check("load register-read scoreboard", load["read_sb"], 1)
check("load waits", load["wait_mask"], 0)

permute = body[1][2]
check("permute sets nothing", permute["write_sb"], 7)
check("permute waits on scoreboard 5 only", permute["wait_mask"], 1 << 5)

with tempfile.NamedTemporaryFile("w", suffix=".sass", delete=False) as f:
    f.write(LISTING)
out = io.StringIO()
with redirect_stdout(out):
    rc = tool.main([f.name, "--function", "wgmma"])
os.unlink(f.name)
text = out.getvalue()
check("exit status", rc, 0)
check("header", text.splitlines()[0], "# qmv_wgmma_kernel")
check("load row", "sets 5 reads 1 waits [      ] LDG.E.128.CONSTANT" in text, True)
check("permute row", "sets - reads - waits [5     ] PRMT R199" in text, True)
check("other function not shown", "LDC R1" in text, False)

with redirect_stdout(io.StringIO()):
    check("no match", tool.main(["/dev/null", "--function", "absent"]), 1)

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("sass_scoreboards: all checks passed")
