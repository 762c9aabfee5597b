"""torch helpers of the tests: an fp32 reference (written from include/etap.h's semantics)
and a FlashMLA-test-style input builder. Imported only by tests that have torch."""

import math

import torch

from tolerances import LSE_ABS_TOL, LSE_REL_TOL, OUT_ABS_TOL, OUT_COS_TOL, OUT_REL_TOL


def ref_decode(q, kv, block_table, cache_seqlens, causal, scale=None):
    """fp32 reference on q's device. Returns (out [b,s_q,h_q,512] fp32, lse [b,h_q,s_q] fp32)."""
    b, s_q, h_q, d = q.shape
    page, h_kv = kv.shape[1], kv.shape[2]
    scale = d ** -0.5 if scale is None else scale
    lens = cache_seqlens.cpu().tolist()
    out = torch.zeros(b, s_q, h_q, 512, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float32, device=q.device)
    for i in range(b):
        n = lens[i]
        if n == 0:
            continue
        pages = block_table[i, : (n + page - 1) // page].long()
        keys = kv[pages].reshape(-1, h_kv, d)[:n].float()
        keys = keys.repeat_interleave(h_q // h_kv, dim=1)  # [n, h_q, d]
        logits = torch.einsum("shd,nhd->shn", q[i].float(), keys) * scale
        if causal and s_q > 1:
            t = torch.arange(n, device=q.device)
            s = torch.arange(s_q, device=q.device)
            masked = t[None, :] > (n - s_q + s)[:, None]  # [s_q, n]
            logits = logits.masked_fill(masked[:, None, :], -math.inf)
        l = torch.logsumexp(logits, dim=-1)  # [s_q, h_q], -inf when fully masked
        p = torch.exp(logits - l[..., None])
        o = torch.einsum("shn,nhd->shd", torch.nan_to_num(p, nan=0.0), keys[..., :512])
        empty = torch.isinf(l)
        o[empty] = 0
        l = torch.where(empty, torch.full_like(l, math.inf), l)
        out[i] = o
        lse[i] = l.transpose(0, 1)
    return out, lse


def assert_close(out, lse, ref_out, ref_lse):
    """FlashMLA's tolerances per element, equal inf positions, no NaN, cosine check."""
    out = out.float()
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert lse.dtype == torch.float32
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse inf positions differ"
    assert not torch.isnan(lse).any() and not torch.isnan(out).any()
    assert torch.isfinite(out).all()
    diff = (out - ref_out).abs()
    ok = (diff <= OUT_ABS_TOL) | (diff <= OUT_REL_TOL * ref_out.abs())
    assert ok.all(), "out: %d bad elements, max |diff| %.3g" % ((~ok).sum().item(), diff.max().item())
    fin = torch.isfinite(ref_lse)
    ld = (lse[fin] - ref_lse[fin]).abs()
    lok = (ld <= LSE_ABS_TOL) | (ld <= LSE_REL_TOL * ref_lse[fin].abs())
    assert lok.all(), "lse: %d bad, max |diff| %.3g" % ((~lok).sum().item(), ld.max().item())
    o64, r64 = out.double(), ref_out.double()
    sum_sq = (o64 * o64).sum() + (r64 * r64).sum()
    if sum_sq > 0:
        cos_diff = 1.0 - 2.0 * (o64 * r64).sum() / sum_sq
        assert cos_diff.item() <= OUT_COS_TOL, "cosine difference %.3g" % cos_diff.item()


def make_inputs(b, s_q, h_q, h_kv, page, lens, dtype, device, seed=0, extra_cols=1, extra_pages=2):
    """Shuffled page ids, NaN in every unused cache slot, huge ids in unused table entries."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    need = [(n + page - 1) // page for n in lens]
    cols = max(max(need), 1) + extra_cols
    num_pages = sum(need) + extra_pages
    perm = torch.randperm(num_pages, generator=g)
    table = torch.full((b, cols), 2**31 - 1, dtype=torch.int32)
    table[:, 1::2] = -(2**31)
    k = 0
    for i in range(b):
        table[i, : need[i]] = perm[k: k + need[i]].int()
        k += need[i]
    kv = torch.full((num_pages, page, h_kv, 576), float("nan"), dtype=torch.float32)
    flat = kv.view(num_pages * page, h_kv, 576)
    for i in range(b):
        t = torch.arange(lens[i])
        slots = table[i, t // page].long() * page + t % page
        flat[slots] = torch.randn(lens[i], h_kv, 576, generator=g) * 0.25
    q = torch.randn(b, s_q, h_q, 576, generator=g) * 0.25
    return (q.to(dtype).to(device), kv.to(dtype).to(device), table.to(device), lens_t.to(device))
