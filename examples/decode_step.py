#!/usr/bin/env python3
"""One DeepSeek-V3-shaped decode step through etap's FlashMLA-style Python API.

A decode step makes one schedule (get_mla_metadata) and then one attention call per layer
(61 for DeepSeek-V3), all sharing that schedule. This script times both and prints the
time per layer.

    python examples/decode_step.py                  # CUDA (torch) if usable, else CPU (numpy)
    python examples/decode_step.py --device cpu     # numpy on etap's CPU backend
    python examples/decode_step.py --heads 128 --s-q 2 --batch 32 --seqlen 8192

Defaults: CUDA: batch 64, 4096 cached tokens, 16 query heads per GPU (DeepSeek-V3's 128
heads split 8 ways by tensor parallelism), s_q 1, bf16, page 64. CPU: batch 4, 1024 tokens,
16 heads, fp16 (numpy has no bf16; --dtype bf16 uses etap.Bfloat16Array). Every layer uses
the same cache and q here: the point is the calls, not the memory footprint.

libetap is found as docs/python.md says (ETAP_LIBRARY, the installed package, the build
tree); the script prints which one it loaded.
"""

import argparse
import os
import sys
import time

try:
    import etap
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import etap

from etap import flash_mla_with_kvcache, get_mla_metadata


def cuda_usable():
    try:
        import torch
    except ImportError:
        return False
    try:
        return torch.cuda.is_available() and etap.cuda_available()
    except etap.EtapError:
        return False


def lengths(batch, seqlen, rng_uniform):
    """Lengths around `seqlen` (+-25%), like a real batch of requests."""
    return [max(1, int(seqlen * (0.75 + 0.5 * rng_uniform()))) for _ in range(batch)]


def run_cuda(a):
    import torch

    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    dev = torch.device("cuda")
    lens = lengths(a.batch, a.seqlen, lambda: torch.rand(()).item())
    pages_per_seq = (max(lens) + a.page - 1) // a.page
    num_pages = a.batch * pages_per_seq
    block_table = torch.randperm(num_pages, device=dev).int().view(a.batch, pages_per_seq)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=dev)
    k_cache = (torch.randn(num_pages, a.page, a.heads_kv, 576, device=dev) * 0.25).to(dtype)
    q = (torch.randn(a.batch, a.s_q, a.heads, 576, device=dev) * 0.25).to(dtype)
    rows = a.s_q * a.heads // a.heads_kv

    def step():
        md, ns = get_mla_metadata(cache_seqlens, rows, a.heads_kv)
        for _ in range(a.layers):
            out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, md, ns,
                                              causal=a.s_q > 1)
        return out, lse

    step()  # warm-up: handle, workspace
    torch.cuda.synchronize()
    e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    plan_ms = layer_ms = 0.0
    for _ in range(a.steps):
        e0.record()
        md, ns = get_mla_metadata(cache_seqlens, rows, a.heads_kv)
        e1.record()
        for _ in range(a.layers):
            flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, md, ns,
                                   causal=a.s_q > 1)
        e2.record()
        torch.cuda.synchronize()
        plan_ms += e0.elapsed_time(e1)
        layer_ms += e1.elapsed_time(e2)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    host_ms = (time.perf_counter() - t0) * 1e3 / a.steps  # launch cost when not GPU-bound
    torch.cuda.synchronize()
    return lens, plan_ms / a.steps, layer_ms / a.steps / a.layers, host_ms / a.layers, \
        torch.cuda.get_device_name()


def run_cpu(a):
    import numpy as np

    rng = np.random.default_rng(0)
    lens = lengths(a.batch, a.seqlen, rng.random)
    pages_per_seq = (max(lens) + a.page - 1) // a.page
    num_pages = a.batch * pages_per_seq
    block_table = rng.permutation(num_pages).astype(np.int32).reshape(a.batch, pages_per_seq)
    cache_seqlens = np.array(lens, dtype=np.int32)
    k = rng.standard_normal((num_pages, a.page, a.heads_kv, 576), dtype=np.float32) * 0.25
    qv = rng.standard_normal((a.batch, a.s_q, a.heads, 576), dtype=np.float32) * 0.25
    if a.dtype == "bf16":
        k_cache, q = etap.Bfloat16Array.from_float32(k), etap.Bfloat16Array.from_float32(qv)
    else:
        k_cache, q = k.astype(np.float16), qv.astype(np.float16)
    rows = a.s_q * a.heads // a.heads_kv
    plan_s = layer_s = 0.0
    for _ in range(a.steps):
        t0 = time.perf_counter()
        md, ns = get_mla_metadata(cache_seqlens, rows, a.heads_kv)
        t1 = time.perf_counter()
        for _ in range(a.layers):
            flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, md, ns,
                                   causal=a.s_q > 1)
        t2 = time.perf_counter()
        plan_s += t1 - t0
        layer_s += t2 - t1
    ms_layer = layer_s * 1e3 / a.steps / a.layers
    return lens, plan_s * 1e3 / a.steps, ms_layer, ms_layer, "CPU (%d threads)" % (
        int(os.environ.get("ETAP_NUM_THREADS", "0") or 0) or os.cpu_count())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--batch", type=int)
    p.add_argument("--seqlen", type=int, help="mean cached tokens per sequence")
    p.add_argument("--heads", type=int, default=16, help="query heads (128 for DeepSeek-V3 without TP)")
    p.add_argument("--heads-kv", type=int, default=1)
    p.add_argument("--s-q", type=int, default=1, help="query tokens per sequence (2 with MTP)")
    p.add_argument("--layers", type=int, default=61)
    p.add_argument("--page", type=int, default=64)
    p.add_argument("--dtype", choices=["bf16", "fp16"])
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()

    device = a.device
    if device == "auto":
        device = "cuda" if cuda_usable() else "cpu"
    if a.batch is None:
        a.batch = 64 if device == "cuda" else 4
    if a.seqlen is None:
        a.seqlen = 4096 if device == "cuda" else 1024
    if a.dtype is None:
        a.dtype = "bf16" if device == "cuda" else "fp16"

    print("libetap: %s" % etap.library_path())
    try:
        lens, plan_ms, layer_ms, host_ms, where = (run_cuda if device == "cuda" else run_cpu)(a)
    except etap.EtapError as e:
        print("etap refused this configuration (%s):\n  %s" % (e.status_name, e))
        return 1
    kv_bytes = sum(lens) * a.heads_kv * 576 * 2  # each cached token row is read once per layer
    print("%s: batch %d, mean length %d (max %d), h_q %d, h_kv %d, s_q %d, %s, page %d, %d layers"
          % (where, a.batch, sum(lens) // len(lens), max(lens), a.heads, a.heads_kv, a.s_q, a.dtype,
             a.page, a.layers))
    print("  schedule (get_mla_metadata), once per step: %8.3f ms" % plan_ms)
    print("  attention per layer:                        %8.3f ms  (%.2f GB/s of KV cache)"
          % (layer_ms, kv_bytes / (layer_ms * 1e-3) / 1e9))
    print("  whole step (%3d layers):                    %8.3f ms" % (a.layers, plan_ms + layer_ms * a.layers))
    if device == "cuda":
        print("  host time per layer call (Python + launch): %8.3f ms" % host_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
