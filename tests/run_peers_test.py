"""CPU test of bench/peers/run_peers.py (ctest run_peers_cpu, label cpu): without a GPU every
peer is reported as not run with its reason, the JSON is schema qmm-peers/1, and --peer-timeout
kills a peer that hangs and says so (a stub `torch` stands in for the GPU stack).

    python3 tests/run_peers_test.py bench/peers/run_peers.py
"""

import json
import os
import subprocess
import sys
import tempfile

RUN_PEERS = os.path.abspath(sys.argv[1])

# A torch that claims a GPU; any other use raises, or sleeps when STUB_HANG is set.
STUB_TORCH = '''
import os, time
__version__ = "stub"
class _V: cuda = "0.0"
version = _V()
class _P:
    name = "stub GPU"; multi_processor_count = 1; major = 9; minor = 0
    L2_cache_size = 1 << 20; total_memory = 1 << 30
class cuda:
    is_available = staticmethod(lambda: True)
    get_device_properties = staticmethod(lambda i: _P())
    synchronize = staticmethod(lambda: None)
    empty_cache = staticmethod(lambda: None)
def __getattr__(name):
    if os.environ.get("STUB_HANG"):
        time.sleep(600)
    raise RuntimeError("stub torch has no " + name)
'''


def run(tmp, extra_env, *args):
    out = os.path.join(tmp, "peers.json")
    env = dict(os.environ, **extra_env)
    r = subprocess.run([sys.executable, RUN_PEERS, "--m", "1-2", "--json", out, *args], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        return json.load(f), r.stdout


def check_schema(doc, peers):
    assert doc["schema"] == "qmm-peers/1", doc
    assert doc["config"]["m"] == [1, 2], doc["config"]
    assert [p["name"] for p in doc["peers"]] == peers, doc["peers"]
    for p in doc["peers"]:
        assert p["available"] is False and p["reason"] and p["results"] == [], p


def main():
    with tempfile.TemporaryDirectory() as tmp:
        stub = os.path.join(tmp, "stub", "torch")
        os.makedirs(stub)
        with open(os.path.join(stub, "__init__.py"), "w") as f:
            f.write(STUB_TORCH)

        # Whatever this machine has: no GPU (or no torch), so no peer runs, each with a reason.
        all_peers = ["tinygemm", "cublas_fp16", "gemlite", "mlx_cuda"]
        doc, table = run(tmp, {})
        check_schema(doc, all_peers)
        assert "did not run" in table, table

        # A "GPU" whose kernels fail: the failure is the reason, in process and in child processes.
        stub_env = {"PYTHONPATH": os.path.dirname(stub)}
        for args in ([], ["--peer-timeout", "120"]):
            doc, _ = run(tmp, stub_env, "--peers", "tinygemm,cublas_fp16", *args)
            check_schema(doc, ["tinygemm", "cublas_fp16"])
            assert doc["device"]["name"] == "stub GPU", doc["device"]
            assert "stub torch has no" in doc["peers"][0]["reason"], doc["peers"][0]

        # A peer that hangs is killed after --peer-timeout, and the next one still runs.
        doc, _ = run(tmp, dict(stub_env, STUB_HANG="1"), "--peers", "tinygemm,cublas_fp16", "--peer-timeout", "3")
        check_schema(doc, ["tinygemm", "cublas_fp16"])
        hung, after = doc["peers"]
        assert "did not finish within 3 s" in hung["reason"], hung
        assert "[run_peers] tinygemm" in hung["reason"], hung  # its last output is in the reason
        assert "did not finish" not in after["reason"], after  # (fails on import torch.nn first)
    print("run_peers_test: ok")


if __name__ == "__main__":
    main()
