"""A caller written against FlashMLA's Python interface, unchanged except for the import.

With FlashMLA this module would start with
    from flash_mla import get_mla_metadata, flash_mla_with_kvcache
Everything below that line is plain FlashMLA usage: the original interface (metadata
tensors from get_mla_metadata) and the newer one (an empty scheduler object filled by the
first call). Nothing here knows about etap.
"""

import torch

from etap import get_mla_metadata, flash_mla_with_kvcache


def build_inputs(b, s_q, h_q, h_kv, mean_sk, block_size, dtype, device, varlen=True, seed=0):
    """Inputs in the style of FlashMLA's own tests: a contiguous block table, NaN after the
    end of every sequence in its blocks, lengths around mean_sk."""
    torch.manual_seed(seed)
    d, dv = 576, 512
    cache_seqlens = torch.full((b,), mean_sk, dtype=torch.int32)
    if varlen:
        for i in range(b):
            cache_seqlens[i] = max(int(torch.normal(float(mean_sk), mean_sk / 2, (1,)).item()), s_q)
    total_seqlens = int(cache_seqlens.sum().item())
    max_seqlen = int(cache_seqlens.max().item())
    max_seqlen_pad = (max_seqlen + 255) // 256 * 256
    q = torch.randn(b, s_q, h_q, d)
    block_table = torch.arange(b * max_seqlen_pad // block_size, dtype=torch.int32).view(
        b, max_seqlen_pad // block_size)
    blocked_k = torch.randn(block_table.numel(), block_size, h_kv, d)
    for i in range(b):
        blocked_k.view(b, max_seqlen_pad, h_kv, d)[i, cache_seqlens[i].item():] = float("nan")
    assert total_seqlens > 0
    return (q.to(dtype).to(device), blocked_k.to(dtype).to(device), block_table.to(device),
            cache_seqlens.to(device), dv)


def decode_step_original_interface(qs, blocked_ks, block_table, cache_seqlens, dv, h_kv, causal):
    b, s_q, h_q, d = qs[0].shape
    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    results = []
    for q, blocked_k in zip(qs, blocked_ks):
        out, lse = flash_mla_with_kvcache(
            q, blocked_k, block_table, cache_seqlens, dv,
            tile_scheduler_metadata, num_splits, causal=causal,
        )
        results.append((out, lse))
    return results


def decode_step_newer_interface(qs, blocked_ks, block_table, cache_seqlens, dv, h_kv, causal):
    sched_meta, _ = get_mla_metadata()
    results = []
    for q, blocked_k in zip(qs, blocked_ks):
        out, lse = flash_mla_with_kvcache(
            q=q, k_cache=blocked_k, block_table=block_table, cache_seqlens=cache_seqlens,
            head_dim_v=dv, tile_scheduler_metadata=sched_meta, num_splits=None,
            softmax_scale=None, causal=causal,
        )
        results.append((out, lse))
    return results
