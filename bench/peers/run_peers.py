#!/usr/bin/env python3
"""Times the peers of qmm on the same shapes and M, with the method of `qmm bench`.

Run on the GPU machine (python3 with PyTorch), then merge into a qmm report:

    python3 bench/peers/run_peers.py --preset qwen2.5-14b --m 1-16,32,64 --json peers.json
    ./build/qmm bench --preset qwen2.5-14b --m 1-16,32,64 --peers peers.json --json report.json --plot report.png

Peers (each reported as unavailable, with the reason, when it cannot run):
  tinygemm     torch._weight_int4pack_mm: 4-bit, group g, bf16 activations, its own int4 packing
  cublas_fp16  torch.nn.functional.linear on the dense fp16 weight (cuBLAS)
  gemlite      gemlite.GemLiteLinear (Triton), 4-bit, group g, fp16, asymmetric (HQQ-style) format
  mlx_cuda     mlx.core.quantized_matmul on MLX's CUDA backend (mlx[cuda13]), MLX's own format

Method (as `qmm bench`): the weights are rotated over copies totalling >= 4x the L2 cache so each
call reads them from memory; activations stay hot; one eager warm-up pass; the rotation (>= 20
calls) is captured in a CUDA graph and its replays are timed with CUDA events until the time budget
is spent and at least --min-samples replays ran; per call = replay time / calls; median, min, max.
MLX has no graph-capture API: its rotation is built as one lazy graph and timed with the wall clock
around mx.eval (MLX batches its own launches into CUDA graphs), so its numbers include MLX's
dispatch cost; the method field says so.
"""
import argparse
import json
import os
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone

PRESETS = {  # K -> N, as tools/qmm/bench_options.cpp
    "qwen2.5-14b": (5120, 1024, 13824),
    "qwen2.5-7b": (3584, 512, 18944),
    "qwen2.5-32b": (5120, 1024, 27648),
    "llama-3-8b": (4096, 1024, 14336),
    "llama-3-70b": (8192, 1024, 28672),
}
MIN_CALLS = 20
ALL_PEERS = ["tinygemm", "cublas_fp16", "gemlite", "mlx_cuda"]


def preset_shapes(name):
    if name not in PRESETS:
        sys.exit(f"run_peers: unknown preset '{name}' (known: {', '.join(PRESETS)})")
    h, kv, inter = PRESETS[name]
    return [(h, h), (h, kv), (h, inter), (inter, h)]


def parse_m(text):
    out = set()
    for item in text.split(","):
        item = item.strip()
        if "-" in item:
            a, b = item.split("-")
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(item))
    if not out or min(out) < 1:
        sys.exit("run_peers: --m needs M >= 1")
    return sorted(out)


def stat(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": len(samples)}


class Timer:
    """Rotation sizing and CUDA-graph timing shared by the torch-based peers."""

    def __init__(self, torch, budget_ms, min_samples):
        self.torch = torch
        self.budget_ms = budget_ms
        self.min_samples = min_samples
        props = torch.cuda.get_device_properties(0)
        self.l2 = getattr(props, "L2_cache_size", 50 * 2**20) or 50 * 2**20

    def copies(self, bytes_per_copy):
        return max(2, math.ceil(4 * self.l2 / max(1, bytes_per_copy)))

    @staticmethod
    def calls(copies):
        return copies * math.ceil(MIN_CALLS / copies)

    def time_graph(self, calls, fn):
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # eager warm-up (autotuning, lazy init) outside the capture
            for i in range(calls):
                fn(i)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = [fn(i) for i in range(calls)]  # keep the outputs alive with the graph
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        samples = []
        t0 = time.perf_counter()
        while True:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) * 1e3 / calls)
            elapsed = (time.perf_counter() - t0) * 1e3
            if (elapsed >= self.budget_ms and len(samples) >= self.min_samples) or len(samples) >= 2000:
                break
        del outs, graph
        return stat(samples)


# ---- peers -------------------------------------------------------------------------------------

def peer_tinygemm(torch, timer, shapes, ms, bits, group):
    if bits != 4:
        raise RuntimeError("tinygemm is 4-bit only")
    info = {"format": f"int4 g{group}, bf16 scales and zeros, tinygemm tile packing (innerKTiles 8), bf16 activations",
            "version": "torch " + torch.__version__, "method": "cuda-graph"}
    results = []
    for k, n in shapes:
        if k % 128:
            raise RuntimeError(f"K={k} is not a multiple of 128 (innerKTiles 8)")
        w_int = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
        try:  # PyTorch >= 2.5 packs uint8 (N, K/2); older releases took int32 (N, K)
            packed = torch._convert_weight_to_int4pack((w_int[:, ::2] << 4 | w_int[:, 1::2]).to(torch.uint8), 8)
        except (RuntimeError, TypeError):
            packed = torch._convert_weight_to_int4pack(w_int, 8)
        sz = (torch.rand(k // group, n, 2, device="cuda", dtype=torch.float32) * 0.02).to(torch.bfloat16)
        per_copy = packed.numel() * packed.element_size() + sz.numel() * sz.element_size()
        copies = timer.copies(per_copy)
        ws = [(packed.clone(), sz.clone()) for _ in range(copies)]
        x_all = torch.randn(max(ms), k, device="cuda", dtype=torch.bfloat16)
        for m in ms:
            x = x_all[:m].contiguous()
            calls = timer.calls(copies)
            us = timer.time_graph(calls, lambda i: torch._weight_int4pack_mm(x, ws[i % copies][0], group, ws[i % copies][1]))
            results.append({"k": k, "n": n, "m": m, "us": us})
        del ws
        torch.cuda.empty_cache()
    return info, results


def peer_cublas(torch, timer, shapes, ms, bits, group):
    import torch.nn.functional as F
    info = {"format": "dense fp16 weight (N, K)", "version": "torch " + torch.__version__, "method": "cuda-graph"}
    results = []
    for k, n in shapes:
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
        copies = max(1, math.ceil(4 * timer.l2 / (w.numel() * 2)))  # as qmm bench's dense rows
        ws = [w.clone() for _ in range(copies)]
        x_all = torch.randn(max(ms), k, device="cuda", dtype=torch.float16)
        for m in ms:
            x = x_all[:m].contiguous()
            us = timer.time_graph(timer.calls(copies), lambda i: F.linear(x, ws[i % copies]))
            results.append({"k": k, "n": n, "m": m, "us": us})
        del ws, w
        torch.cuda.empty_cache()
    return info, results


def peer_gemlite(torch, timer, shapes, ms, bits, group):
    import gemlite
    from gemlite import DType, GemLiteLinear
    # gemlite's default autotuning searches Triton configs per shape and M bucket and ran past
    # the whole H100 time limit; its "fast" setting searches a short list.
    autotune = "default"
    if hasattr(gemlite, "set_autotune"):
        gemlite.set_autotune("fast")
        autotune = "fast"
    info = {"format": f"{bits}-bit g{group} asymmetric (HQQ-style, fp16 scales and zeros), fp16 activations",
            "version": "gemlite " + getattr(gemlite, "__version__", "?") + f" (autotune {autotune})",
            "method": "cuda-graph"}
    results = []
    for k, n in shapes:
        def make(seed):
            g = torch.Generator(device="cuda").manual_seed(seed)
            layer = GemLiteLinear(bits, group_size=group, in_features=k, out_features=n,
                                  input_dtype=DType.FP16, output_dtype=DType.FP16)
            w_q = torch.randint(0, 2**bits, (n, k), device="cuda", dtype=torch.uint8, generator=g)
            scales = (torch.rand(n, k // group, device="cuda", generator=g) * 0.02).half()
            zeros = (torch.rand(n, k // group, device="cuda", generator=g) * 2**bits).half()
            layer.pack(w_q, scales, zeros, None)
            return layer
        log(f"[gemlite] {k}:{n}: packing")
        first = make(0)
        per_copy = (first.W_q.numel() * first.W_q.element_size() + first.scales.numel() * first.scales.element_size()
                    + first.zeros.numel() * first.zeros.element_size())
        copies = timer.copies(per_copy)
        layers = [first] + [make(i) for i in range(1, copies)]
        x_all = torch.randn(max(ms), k, device="cuda", dtype=torch.float16)
        for m in ms:
            log(f"[gemlite] {k}:{n}: M={m}")
            x = x_all[:m].contiguous()
            us = timer.time_graph(timer.calls(copies), lambda i: layers[i % copies](x))
            results.append({"k": k, "n": n, "m": m, "us": us})
        del layers
        torch.cuda.empty_cache()
    return info, results


def peer_mlx(torch, timer, shapes, ms, bits, group, budget_ms, min_samples):
    import mlx.core as mx
    import numpy as np
    try:
        on_gpu = mx.cuda.is_available()
    except AttributeError:
        on_gpu = mx.default_device().type == mx.DeviceType.gpu
    if not on_gpu:
        raise RuntimeError("mlx imported but its CUDA backend is not available (mlx-cuda-13 missing?)")
    mx.set_default_device(mx.gpu)
    info = {"format": f"MLX affine {bits}-bit g{group}, fp16 scales and biases, fp16 activations",
            "version": "mlx " + mx.__version__,
            "method": "wall clock around mx.eval of a prebuilt lazy rotation, divided by the calls"}
    results = []
    for k, n in shapes:
        per_copy = n * k * bits // 8 + 2 * n * (k // group) * 2
        copies = timer.copies(per_copy)
        # Progress on stderr: when a run is stopped by --peer-timeout, its last line says where.
        log(f"[mlx_cuda] {k}:{n}: quantizing one weight")
        w = (mx.random.normal((n, k), key=mx.random.key(0)) * 0.02).astype(mx.float16)
        wq, s, b = mx.quantize(w, group_size=group, bits=bits)
        mx.eval(wq, s, b)
        del w
        # The rotation's other copies through host memory: distinct device buffers without
        # launching (and JIT-compiling) one more kernel per copy.
        log(f"[mlx_cuda] {k}:{n}: {copies} copies")
        host = [np.array(a) for a in (wq, s, b)]
        ws = [(wq, s, b)] + [tuple(mx.array(h.copy()) for h in host) for _ in range(1, copies)]
        mx.eval(*[a for t in ws for a in t])
        x_all = (mx.random.normal((max(ms), k), key=mx.random.key(1234))).astype(mx.float16)
        mx.eval(x_all)
        calls = timer.calls(copies)
        for m in ms:
            log(f"[mlx_cuda] {k}:{n}: M={m}")
            x = x_all[:m]
            mx.eval(x)

            def rotation():
                return [mx.quantized_matmul(x, *ws[i % copies], transpose=True, group_size=group, bits=bits)
                        for i in range(calls)]
            mx.eval(rotation())  # warm-up
            mx.synchronize()
            samples = []
            t0 = time.perf_counter()
            while True:
                outs = rotation()
                a = time.perf_counter()
                mx.eval(outs)
                mx.synchronize()
                samples.append((time.perf_counter() - a) * 1e6 / calls)
                del outs
                if ((time.perf_counter() - t0) * 1e3 >= budget_ms and len(samples) >= min_samples) or len(samples) >= 2000:
                    break
            results.append({"k": k, "n": n, "m": m, "us": stat(samples)})
        del ws
    return info, results


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def tail(path, n):
    """The last n characters of a text file ('' if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return ""


def strip_args(argv, names):
    """argv without the options in names (each with its value, as "--x v" or "--x=v")."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


# ---- main --------------------------------------------------------------------------------------

def write_json(path, doc):
    """Writes doc atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="layer shapes (default qwen2.5-14b when no --shape)")
    ap.add_argument("--shape", action="append", default=[], help="K:N, repeatable")
    ap.add_argument("--m", default="1-4", help="list and ranges, e.g. 1-16,32,64")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated subset of " + ",".join(ALL_PEERS))
    ap.add_argument("--budget-ms", type=float, default=200)
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--json", required=True, help="output file (schema qmm-peers/1)")
    ap.add_argument("--peer-timeout", type=float, default=0,
                    help="seconds: run each peer in its own process and give up on it after this long "
                         "(reported as not run, with the reason); 0 runs them all in this process")
    args = ap.parse_args()

    shapes = []
    if args.preset or not args.shape:
        shapes += preset_shapes(args.preset or "qwen2.5-14b")
    for s in args.shape:
        k, n = s.split(":")
        shapes.append((int(k), int(n)))
    ms = parse_m(args.m)
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in wanted:
        if p not in ALL_PEERS:
            sys.exit(f"run_peers: unknown peer '{p}' (known: {', '.join(ALL_PEERS)})")

    doc = {"schema": "qmm-peers/1", "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "command": " ".join(sys.argv), "device": {},
           "config": {"shapes": [f"{k}:{n}" for k, n in shapes], "m": ms, "bits": args.bits,
                      "group_size": args.group_size, "budget_ms": args.budget_ms, "min_samples": args.min_samples,
                      "min_calls_per_replay": MIN_CALLS, "rotation": ">= 4x L2"},
           "peers": []}
    try:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(0)
        doc["device"] = {"name": props.name, "multiprocessors": props.multi_processor_count,
                         "compute_capability": props.major * 10 + props.minor,
                         "l2_bytes": getattr(props, "L2_cache_size", 0), "memory_bytes": props.total_memory,
                         "torch": torch.__version__, "cuda": torch.version.cuda}
        timer = Timer(torch, args.budget_ms, args.min_samples)
    except Exception as e:  # no GPU: every peer is unavailable, say why
        for p in wanted:
            doc["peers"].append({"name": p, "available": False, "reason": f"{type(e).__name__}: {e}", "results": []})
        torch = timer = None

    if timer is not None and args.peer_timeout > 0:
        # One child process per peer: a peer that hangs (e.g. a first call that never returns)
        # is killed without losing the others.
        for p in wanted:
            print(f"[run_peers] {p} (own process, {args.peer_timeout:.0f} s limit) ...", file=sys.stderr, flush=True)
            child_json = os.path.join(tempfile.mkdtemp(prefix="qmm-peer-"), "peer.json")
            cmd = [sys.executable, os.path.abspath(__file__)] + strip_args(sys.argv[1:], {"--peers", "--json", "--peer-timeout"}) + [
                "--peers", p, "--json", child_json, "--peer-timeout", "0"]
            entry = {"name": p, "available": False, "reason": "", "results": []}
            err_path = child_json + ".stderr"
            try:
                with open(err_path, "w") as err:
                    run = subprocess.run(cmd, timeout=args.peer_timeout, stdout=subprocess.DEVNULL, stderr=err)
                if os.path.exists(child_json):
                    with open(child_json) as f:
                        entry = json.load(f)["peers"][0]
                else:
                    entry["reason"] = f"its process exited with {run.returncode} and wrote nothing: " + tail(err_path, 300)
            except subprocess.TimeoutExpired:
                entry["reason"] = (f"did not finish within {args.peer_timeout:.0f} s (its process was killed); "
                                   f"last output: {tail(err_path, 200) or '(none)'}")
            sys.stderr.write(tail(err_path, 4000) + "\n")
            doc["peers"].append(entry)
            write_json(args.json, doc)
    elif timer is not None:
        for p in wanted:
            print(f"[run_peers] {p} ...", file=sys.stderr, flush=True)
            entry = {"name": p, "available": False, "reason": "", "results": []}
            try:
                if p == "tinygemm":
                    info, res = peer_tinygemm(torch, timer, shapes, ms, args.bits, args.group_size)
                elif p == "cublas_fp16":
                    info, res = peer_cublas(torch, timer, shapes, ms, args.bits, args.group_size)
                elif p == "gemlite":
                    info, res = peer_gemlite(torch, timer, shapes, ms, args.bits, args.group_size)
                else:
                    info, res = peer_mlx(torch, timer, shapes, ms, args.bits, args.group_size, args.budget_ms,
                                         args.min_samples)
                entry.update(info)
                entry["available"] = True
                entry["results"] = res
            except Exception as e:
                entry["reason"] = f"{type(e).__name__}: {e}".strip()[:500]
                traceback.print_exc(file=sys.stderr)
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:
                pass
            doc["peers"].append(entry)
            write_json(args.json, doc)  # after every peer: a run stopped by a time limit keeps what it measured

    write_json(args.json, doc)

    # A short table on stdout.
    print(f"peers on {doc['device'].get('name', 'no GPU')} (us per call, median)")
    for p in doc["peers"]:
        if not p["available"]:
            print(f"  {p['name']:<12} did not run: {p['reason']}")
            continue
        by_shape = {}
        for r in p["results"]:
            by_shape.setdefault((r["k"], r["n"]), []).append(f"M={r['m']}:{r['us']['median']:.1f}")
        for (k, n), cells in by_shape.items():
            print(f"  {p['name']:<12} {k}:{n:<6} " + " ".join(cells))


if __name__ == "__main__":
    main()
