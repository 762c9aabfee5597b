"""The CPU backend through numpy, against the float64 reference of mla_reference.py."""

import pytest

np = pytest.importorskip("numpy")

import etap  # noqa: E402
from mla_reference import build_case, check_outputs, half_to_f64, reference_for  # noqa: E402


def as_inputs(c):
    if c.dtype == "bf16":
        return etap.Bfloat16Array(c.q), etap.Bfloat16Array(c.kv)
    return c.q, c.kv


def out_to_f64(out, dtype):
    if dtype == "bf16":
        assert isinstance(out, etap.Bfloat16Array)
        return half_to_f64(out.bits, "bf16")
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    return out.astype(np.float64)


def run_old_style(c, softmax_scale=None):
    md, ns = etap.get_mla_metadata(c.lens, c.s_q * c.h_q // c.h_kv, c.h_kv)
    q, kv = as_inputs(c)
    return etap.flash_mla_with_kvcache(q, kv, c.block_table, c.lens, 512, md, ns,
                                       softmax_scale=softmax_scale, causal=c.causal)


def run_and_check(c, softmax_scale=None):
    out, lse = run_old_style(c, softmax_scale)
    assert out.shape == (c.batch, c.s_q, c.h_q, 512)
    assert lse.shape == (c.batch, c.h_q, c.s_q) and lse.dtype == np.float32
    ref_out, ref_lse = reference_for(c, softmax_scale)
    check_outputs(out_to_f64(out, c.dtype), lse, ref_out, ref_lse)
    return out, lse


# (batch, s_q, h_q, h_kv, page, lens, causal)
CASES = [
    (1, 1, 1, 1, 1, [7], False),
    (2, 1, 16, 1, 16, [33, 0], False),
    (3, 1, 128, 1, 64, [200, 1, 64], False),
    (4, 1, 8, 2, 128, [129, 0, 300, 5], False),
    (2, 2, 16, 1, 64, [70, 3], True),
    (2, 2, 16, 1, 64, [70, 3], False),
    (3, 4, 4, 1, 16, [2, 50, 4], True),   # lengths < s_q: fully masked rows
    (2, 4, 32, 2, 1, [9, 17], True),
    (1, 1, 64, 1, 128, [1], False),
    (5, 1, 2, 2, 16, [0, 0, 15, 16, 17], False),
    (2, 1, 128, 2, 64, [65, 127], False),
    (1, 2, 128, 1, 16, [40], True),
    (1, 1, 3, 1, 64, [0], False),          # every row empty
]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("batch,s_q,h_q,h_kv,page,lens,causal", CASES)
def test_matches_reference(dtype, batch, s_q, h_q, h_kv, page, lens, causal):
    c = build_case(batch, s_q, h_q, h_kv, page, lens, dtype=dtype, causal=causal,
                   seed=hash((batch, s_q, h_q, h_kv, page, tuple(lens), causal)) & 0xFFFF)
    run_and_check(c)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("q_layout", ["padded", "head_major"])
def test_strided_layouts(dtype, q_layout):
    c = build_case(3, 2, 16, 2, 16, [40, 0, 18], dtype=dtype, causal=True, seed=5,
                   q_layout=q_layout, kv_padded=True, table_pad=3)
    assert not c.q.flags.c_contiguous and not c.kv.flags.c_contiguous
    assert c.block_table.strides[0] != c.block_table.shape[1] * 4
    run_and_check(c)


def test_sharp_softmax_and_explicit_scale():
    # larger values: a peaked softmax, where errors in the max/rescaling would show
    c = build_case(2, 1, 16, 1, 64, [150, 90], q_std=1.0, kv_std=1.0, seed=11)
    run_and_check(c, softmax_scale=0.1)
    run_and_check(c, softmax_scale=576 ** -0.5)


def test_default_scale_is_576_to_minus_half():
    c = build_case(1, 1, 8, 1, 16, [40], q_std=1.0, kv_std=1.0, seed=3)
    out_a, lse_a = run_old_style(c, None)
    out_b, lse_b = run_old_style(c, 576 ** -0.5)
    assert np.array_equal(out_a, out_b) and np.array_equal(lse_a, lse_b)


def test_metadata_serves_many_layers():
    """One plan, many layers with different q and caches (same lengths and tables)."""
    c = build_case(3, 2, 16, 1, 16, [30, 64, 1], causal=True, seed=21)
    md, ns = etap.get_mla_metadata(c.lens, c.s_q * c.h_q // c.h_kv, c.h_kv)
    for layer in range(3):
        # the plan depends only on the lengths: each layer has its own cache and table
        c2 = build_case(3, 2, 16, 1, 16, [30, 64, 1], causal=True, seed=100 + layer)
        out, lse = etap.flash_mla_with_kvcache(c2.q, c2.kv, c2.block_table, c2.lens, 512, md, ns,
                                               causal=True)
        ref_out, ref_lse = reference_for(c2)
        check_outputs(out.astype(np.float64), lse, ref_out, ref_lse)


def test_new_style_metadata_matches_old_style():
    c = build_case(4, 2, 32, 1, 64, [100, 0, 7, 64], causal=True, seed=8)
    out_old, lse_old = run_old_style(c)
    meta, none = etap.get_mla_metadata()
    assert none is None and isinstance(meta, etap.FlashMLASchedMeta) and not meta.have_initialized
    for _ in range(2):  # filled by the first call, reused by the second
        out, lse = etap.flash_mla_with_kvcache(c.q, c.kv, c.block_table, c.lens, 512, meta, None,
                                               causal=True)
        assert meta.have_initialized
        assert np.array_equal(out, out_old) and np.array_equal(lse, lse_old)
    assert meta.config.b == 4 and meta.config.s_q == 2 and meta.config.h_q == 32
    assert np.shares_memory(meta.num_splits, meta.tile_scheduler_metadata)


def test_keyword_call_like_flashmla():
    c = build_case(2, 1, 16, 1, 64, [10, 70], seed=2)
    md, ns = etap.get_mla_metadata(cache_seqlens=c.lens, num_q_tokens_per_head_k=16, num_heads_k=1)
    out, lse = etap.flash_mla_with_kvcache(
        q=c.q, k_cache=c.kv, block_table=c.block_table, cache_seqlens=c.lens, head_dim_v=512,
        tile_scheduler_metadata=md, num_splits=ns, softmax_scale=None, causal=False)
    ref_out, ref_lse = reference_for(c)
    check_outputs(out.astype(np.float64), lse, ref_out, ref_lse)


def test_outputs_are_fresh_arrays_each_call():
    c = build_case(1, 1, 4, 1, 16, [5], seed=4)
    o1, l1 = run_old_style(c)
    o2, l2 = run_old_style(c)
    assert not np.shares_memory(o1, o2) and not np.shares_memory(l1, l2)
    assert o1.flags.c_contiguous and l1.flags.c_contiguous


def test_caller_workspace():
    c = build_case(2, 1, 16, 1, 16, [20, 40], seed=6)
    md, ns = etap.get_mla_metadata(c.lens, 16, 1)
    ws = np.zeros(64 << 20, dtype=np.uint8)
    out, lse = etap.flash_mla_with_kvcache(c.q, c.kv, c.block_table, c.lens, 512, md, ns, workspace=ws)
    ref_out, ref_lse = reference_for(c)
    check_outputs(out.astype(np.float64), lse, ref_out, ref_lse)


def test_threads_share_nothing():
    """Concurrent CPU calls from Python threads (ctypes releases the GIL) each use their
    own workspace."""
    import threading

    cases = [build_case(2, 1, 16, 1, 16, [50 + 7 * k, 33], seed=40 + k) for k in range(4)]
    results = [None] * len(cases)
    errors = []

    def work(k):
        try:
            for _ in range(2):
                results[k] = run_old_style(cases[k])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for c, (out, lse) in zip(cases, results):
        ref_out, ref_lse = reference_for(c)
        check_outputs(out.astype(np.float64), lse, ref_out, ref_lse)


def test_bfloat16_array_helpers():
    x = np.array([1.0, -2.5, 3.140625, np.nan, np.inf, 1.00390625], dtype=np.float32)
    b = etap.Bfloat16Array.from_float32(x)
    assert b.bits.dtype == np.uint16 and b.shape == (6,)
    back = b.to_float32()
    assert back[0] == 1.0 and back[1] == -2.5 and back[2] == 3.140625
    assert np.isnan(back[3]) and back[4] == np.inf
    assert back[5] == 1.0  # a tie rounds to even


def test_num_splits_is_a_view_of_the_plans_split_offset():
    lens = np.array([100, 0, 5000, 64, 1], np.int32)
    md, ns = etap.get_mla_metadata(lens, 16, 1)
    assert md.dtype == np.int32 and md.ndim == 1 and ns.dtype == np.int32 and ns.shape == (6,)
    assert np.shares_memory(md, ns)
    assert md[0] == 0x50415445 and md[1] == 1 and md[2] == 5  # magic, version, batch
    num_workers = int(md[3])
    off = 16 + 4 * num_workers
    assert md.shape[0] == off + 6 + 5  # header, workers, split_offset[b+1], first_worker[b]
    assert np.array_equal(ns, md[off: off + 6])
    assert ns[0] == 0 and ns[-1] == md[8] and (np.diff(ns) >= 0).all()
    assert ns[2] - ns[1] == 0  # the empty sequence has no split
    assert md[off + 6 + 1] == -1  # ... and no first worker


def test_plan_from_other_lengths_is_refused():
    c = build_case(2, 1, 16, 1, 16, [40, 90], seed=12)
    md, ns = etap.get_mla_metadata(np.array([40, 20], np.int32), 16, 1)
    with pytest.raises(etap.EtapError, match="differ from the lengths the plan was made from"):
        etap.flash_mla_with_kvcache(c.q, c.kv, c.block_table, c.lens, 512, md, ns)


def _random_configs(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h_kv = int(rng.choice([1, 2]))
        h_q = h_kv * int(rng.choice([1, 2, 3, 8, 16, 64]))
        s_q = int(rng.choice([1, 2, 4]))
        page = int(rng.choice([1, 16, 64, 128]))
        batch = int(rng.integers(1, 6))
        lens = [int(rng.choice([0, rng.integers(1, 3), rng.integers(1, 400)])) for _ in range(batch)]
        out.append((batch, s_q, h_q, h_kv, page, lens, bool(rng.integers(0, 2)),
                    str(rng.choice(["fp16", "bf16"])), int(rng.integers(0, 1 << 30))))
    return out


@pytest.mark.parametrize("batch,s_q,h_q,h_kv,page,lens,causal,dtype,seed", _random_configs(24, 2024))
def test_random_configurations(batch, s_q, h_q, h_kv, page, lens, causal, dtype, seed):
    c = build_case(batch, s_q, h_q, h_kv, page, lens, dtype=dtype, causal=causal, seed=seed,
                   q_layout=["contiguous", "padded", "head_major"][seed % 3], kv_padded=seed % 2 == 1,
                   table_pad=seed % 4)
    run_and_check(c)


def test_first_release_keyword_name():
    lens = np.array([10, 70], np.int32)
    md_a, ns_a = etap.get_mla_metadata(lens, num_heads_per_head_k=16, num_heads_k=1)
    md_b, ns_b = etap.get_mla_metadata(lens, 16, 1)
    assert np.array_equal(md_a, md_b) and np.array_equal(ns_a, ns_b)
    with pytest.raises(etap.EtapError, match="not both"):
        etap.get_mla_metadata(lens, 16, 1, num_heads_per_head_k=16)
