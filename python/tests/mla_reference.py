"""The tests' own oracle: a float64 numpy MLA decode written from include/etap.h's
description (no code shared with the package or the library), the adversarial case
builder, and the comparison with FlashMLA's tolerances (the same as tests/test_util.h).
"""

import numpy as np

from tolerances import LSE_ABS_TOL, LSE_REL_TOL, OUT_ABS_TOL, OUT_COS_TOL, OUT_REL_TOL

D_QK = 576
D_V = 512

# Written into unused block-table entries: nothing may read them.
GARBAGE_IDS = np.array([2**31 - 1, -7, -(2**31), -1, 0x40000000, 123456789], dtype=np.int64)


# ---- 16-bit floats, independent of the package's own helpers ----------------------------

def bf16_bits_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def f32_to_bf16_bits(x):
    """Round to nearest even (inputs here are finite or NaN)."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), r).astype(np.uint16)


def half_to_f64(arr, dtype):
    """arr: float16 ndarray (dtype 'fp16') or uint16 bf16 bits (dtype 'bf16')."""
    if dtype == "bf16":
        return bf16_bits_to_f64(arr)
    return arr.astype(np.float64)


def f32_to_half(x, dtype):
    if dtype == "bf16":
        return f32_to_bf16_bits(x)
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def nan_half(dtype):
    return np.uint16(0x7FC0) if dtype == "bf16" else np.float16("nan")


# ---- the reference --------------------------------------------------------------------------

def visible_keys(length, s_q, causal, s):
    if not causal or s_q == 1:
        return length
    return max(0, length - s_q + s + 1)


def mla_decode_ref(q64, kv64, block_table, lens, causal, scale):
    """q64 [b, s_q, h_q, 576], kv64 [pages, page_size, h_kv, 576] (float64, already read
    through any strides), block_table int [b, cols]. Returns (out [b,s_q,h_q,512],
    lse [b,h_q,s_q]) in float64; rows with no visible key: out 0, lse +inf."""
    b, s_q, h_q, _ = q64.shape
    page = kv64.shape[1]
    h_kv = kv64.shape[2]
    group = h_q // h_kv
    out = np.zeros((b, s_q, h_q, D_V))
    lse = np.full((b, h_q, s_q), np.inf)
    heads_kv = np.arange(h_q) // group
    for i in range(b):
        n = int(lens[i])
        if n == 0:
            continue
        pages = np.asarray(block_table[i, : (n + page - 1) // page], dtype=np.int64)
        keys = kv64[pages].reshape(-1, h_kv, D_QK)[:n]          # [n, h_kv, 576]
        keys_h = keys[:, heads_kv, :]                           # [n, h_q, 576]
        logits = np.einsum("shd,nhd->shn", q64[i], keys_h) * scale  # [s_q, h_q, n]
        for s in range(s_q):
            v = visible_keys(n, s_q, causal, s)
            if v == 0:
                continue
            lg = logits[s, :, :v]                                # [h_q, v]
            m = lg.max(axis=1, keepdims=True)
            p = np.exp(lg - m)
            z = p.sum(axis=1, keepdims=True)
            out[i, s] = np.einsum("hn,nhd->hd", p / z, keys_h[:v, :, :D_V])
            lse[i, :, s] = (m + np.log(z))[:, 0]
    return out, lse


# ---- adversarial cases ----------------------------------------------------------------------

class Case:
    pass


def build_case(batch, s_q, h_q, h_kv, page, lens, dtype="fp16", causal=False, seed=0,
               q_std=0.25, kv_std=0.25, extra_pages=3, extra_table_cols=2, table_pad=0,
               q_layout="contiguous", kv_padded=False):
    """A decode problem with shuffled page ids, NaN in every unused cache slot and page,
    garbage ids in unused block-table entries, and optional strided layouts.

    dtype 'fp16' gives float16 arrays; 'bf16' gives uint16 bit arrays (wrap q and the
    cache in etap.Bfloat16Array to pass them)."""
    rng = np.random.default_rng(seed)
    lens = np.asarray(lens, dtype=np.int32)
    assert lens.shape == (batch,)
    need = [(int(n) + page - 1) // page for n in lens]
    cols = max(max(need), 1) + extra_table_cols
    num_pages = sum(need) + extra_pages
    num_pages = max(num_pages, 1)
    perm = rng.permutation(num_pages)

    table_full = rng.choice(GARBAGE_IDS, size=(batch, cols + table_pad)).astype(np.int32)
    next_page = 0
    for i in range(batch):
        table_full[i, : need[i]] = perm[next_page: next_page + need[i]]
        next_page += need[i]
    block_table = table_full[:, :cols]  # row stride cols + table_pad when padded

    storage_dt = np.uint16 if dtype == "bf16" else np.float16
    if kv_padded:
        # padding after each head row, each token and each page
        big = np.empty((num_pages, page + 1, h_kv + 1, D_QK + 32), dtype=storage_dt)
        big[...] = nan_half(dtype)
        kv = big[:, :page, :h_kv, :D_QK]
    else:
        kv = np.empty((num_pages, page, h_kv, D_QK), dtype=storage_dt)
        kv[...] = nan_half(dtype)
    for i in range(batch):
        n = int(lens[i])
        for t in range(n):
            p = block_table[i, t // page]
            kv[p, t % page] = f32_to_half(rng.standard_normal((h_kv, D_QK)) * kv_std, dtype)

    qv = f32_to_half(rng.standard_normal((batch, s_q, h_q, D_QK)) * q_std, dtype)
    if q_layout == "contiguous":
        q = qv
    elif q_layout == "padded":
        big = np.zeros((batch, s_q + 1, h_q + 2, D_QK + 64), dtype=storage_dt)
        big[:, :s_q, :h_q, :D_QK] = qv
        q = big[:, :s_q, :h_q, :D_QK]
    elif q_layout == "head_major":
        big = np.zeros((batch, h_q, s_q, D_QK + 8), dtype=storage_dt)
        big[:, :, :, :D_QK] = qv.transpose(0, 2, 1, 3)
        q = big[..., :D_QK].transpose(0, 2, 1, 3)
    else:
        raise ValueError(q_layout)

    c = Case()
    c.batch, c.s_q, c.h_q, c.h_kv, c.page = batch, s_q, h_q, h_kv, page
    c.dtype, c.causal = dtype, causal
    c.q, c.kv, c.block_table, c.lens = q, kv, block_table, lens
    c.table_full = table_full
    return c


def reference_for(c, scale=None):
    q64 = half_to_f64(np.ascontiguousarray(c.q), c.dtype)
    kv64 = half_to_f64(np.ascontiguousarray(c.kv), c.dtype)
    sc = D_QK ** -0.5 if scale is None else scale
    return mla_decode_ref(q64, kv64, c.block_table, c.lens, c.causal and c.s_q > 1, sc)


# ---- comparison -----------------------------------------------------------------------------

def check_outputs(out64, lse32, ref_out, ref_lse):
    """Asserts FlashMLA's tolerances element by element; empty rows must be exactly
    out 0 / lse +inf; every element must have been written with a finite value (or the
    expected +inf): the package allocates out/lse with np.empty, so garbage would show."""
    assert out64.shape == ref_out.shape, (out64.shape, ref_out.shape)
    assert lse32.shape == ref_lse.shape, (lse32.shape, ref_lse.shape)
    lse64 = lse32.astype(np.float64)
    empty = np.isinf(ref_lse)  # [b, h_q, s_q]
    # inf/NaN positions equal
    assert np.array_equal(np.isinf(lse64), empty), "lse inf positions differ from the reference"
    assert not np.isnan(lse64).any(), "lse has NaN"
    assert (lse64[empty] > 0).all(), "an empty row's lse must be +inf"
    assert np.isfinite(out64).all(), "out has a non-finite element at %s" % (
        np.argwhere(~np.isfinite(out64))[:3].tolist(),)
    empty_rows = empty.transpose(0, 2, 1)  # [b, s_q, h_q]
    assert (out64[empty_rows] == 0).all(), "a row with no visible key must be exactly 0"
    diff = np.abs(out64 - ref_out)
    ok = (diff <= OUT_ABS_TOL) | (diff <= OUT_REL_TOL * np.abs(ref_out))
    if not ok.all():
        idx = tuple(np.argwhere(~ok)[0])
        raise AssertionError("out%s = %r, reference %r (%d bad elements, max |diff| %.3g)"
                             % (list(idx), out64[idx], ref_out[idx], (~ok).sum(), diff.max()))
    fin = ~empty
    if fin.any():
        ld = np.abs(lse64[fin] - ref_lse[fin])
        lok = (ld <= LSE_ABS_TOL) | (ld <= LSE_REL_TOL * np.abs(ref_lse[fin]))
        if not lok.all():
            k = int(np.argmax(~lok))
            raise AssertionError("lse %r vs reference %r (%d bad)" % (lse64[fin][k], ref_lse[fin][k],
                                                                    (~lok).sum()))
    sum_sq = (out64 ** 2).sum() + (ref_out ** 2).sum()
    if sum_sq > 0:
        cos_diff = 1.0 - 2.0 * (out64 * ref_out).sum() / sum_sq
        assert cos_diff <= OUT_COS_TOL, "cosine difference %.3g > %.1g" % (cos_diff, OUT_COS_TOL)
