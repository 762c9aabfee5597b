"""Every error path on the CPU (numpy) side: each raises etap.EtapError (a ValueError; type
problems an EtapTypeError, also a TypeError) with the status and a message that names the
culprit. Nothing is ever copied or cast to make a call work."""

import pytest

np = pytest.importorskip("numpy")

import etap  # noqa: E402
from mla_reference import build_case  # noqa: E402

INVALID = etap.ETAP_ERR_INVALID_ARGUMENT
UNSUPPORTED = etap.ETAP_ERR_UNSUPPORTED


@pytest.fixture
def good():
    c = build_case(2, 2, 16, 1, 16, [20, 33], causal=True, seed=1)
    md, ns = etap.get_mla_metadata(c.lens, 32, 1)
    return dict(q=c.q, k_cache=c.kv, block_table=c.block_table, cache_seqlens=c.lens,
                head_dim_v=512, tile_scheduler_metadata=md, num_splits=ns, causal=True)


def call(kw, **changes):
    kw = dict(kw)
    kw.update(changes)
    return etap.flash_mla_with_kvcache(**kw)


def expect(exc_type, match, fn, *a, status=INVALID, **kw):
    with pytest.raises(exc_type, match=match) as info:
        fn(*a, **kw)
    assert isinstance(info.value, etap.EtapError)
    assert isinstance(info.value, ValueError)
    assert info.value.status == status, (info.value.status, info.value)
    return info.value


def test_good_call_works(good):
    out, lse = call(good)
    assert out.shape == (2, 2, 16, 512)


# ---- dtypes ----

def test_q_float32_is_a_type_error(good):
    e = expect(etap.EtapTypeError, "q has dtype float32", call, good, q=good["q"].astype(np.float32))
    assert isinstance(e, TypeError)


def test_cache_dtype_must_match_q(good):
    kv = etap.Bfloat16Array(good["k_cache"].view(np.uint16))
    expect(etap.EtapTypeError, "k_cache has dtype bf16 but q has fp16", call, good, k_cache=kv)


def test_block_table_int64(good):
    expect(etap.EtapTypeError, "block_table has dtype int64", call, good,
           block_table=good["block_table"].astype(np.int64))


def test_seqlens_int64(good):
    expect(etap.EtapTypeError, "cache_seqlens has dtype int64", call, good,
           cache_seqlens=good["cache_seqlens"].astype(np.int64))


def test_metadata_int64(good):
    expect(etap.EtapTypeError, "tile_scheduler_metadata has dtype int64", call, good,
           tile_scheduler_metadata=good["tile_scheduler_metadata"].astype(np.int64))


def test_non_native_byte_order(good):
    expect(etap.EtapTypeError, "non-native byte order", call, good,
           q=good["q"].astype(good["q"].dtype.newbyteorder()))


def test_python_list_is_a_type_error(good):
    expect(etap.EtapTypeError, "q must be a numpy array or a torch tensor", call, good,
           q=good["q"].tolist())


def test_bfloat16_array_needs_uint16():
    with pytest.raises(etap.EtapTypeError, match="uint16"):
        etap.Bfloat16Array(np.zeros(3, np.float16))
    with pytest.raises(etap.EtapTypeError):
        etap.Bfloat16Array([1, 2])


# ---- shapes ----

def test_q_wrong_ndim(good):
    expect(etap.EtapError, r"q has shape \[2, 2, 16, 576, 1\]: it must be 4-dimensional", call, good,
           q=good["q"][..., None])


def test_q_head_dim(good):
    expect(etap.EtapError, "q has head dim 512", call, good, q=good["q"][..., :512])


def test_cache_head_dim(good):
    expect(etap.EtapError, "k_cache has head dim 512", call, good, k_cache=good["k_cache"][..., :512])


def test_head_dim_v(good):
    expect(etap.EtapError, "head_dim_v is 576", call, good, head_dim_v=576)


def test_block_table_rows(good):
    expect(etap.EtapError, "block_table has 1 rows but q has batch 2", call, good,
           block_table=good["block_table"][:1])


def test_seqlens_len(good):
    expect(etap.EtapError, "cache_seqlens has 3 entries but q has batch 2", call, good,
           cache_seqlens=np.array([1, 2, 3], np.int32))


def test_seqlens_2d(good):
    expect(etap.EtapError, "cache_seqlens has shape", call, good,
           cache_seqlens=good["cache_seqlens"][None])


def test_heads_not_multiple(good):
    c = build_case(1, 1, 3, 2, 16, [5], seed=1)
    md, ns = etap.get_mla_metadata(np.array([5], np.int32), 1, 2)
    expect(etap.EtapError, "num_heads_q \\(3\\) is not a multiple of num_heads_k \\(2\\)",
           etap.flash_mla_with_kvcache, c.q[:, :, :3], c.kv, c.block_table, c.lens, 512, md, ns)


def test_batch_zero(good):
    expect(etap.EtapError, "block_table has 2 rows but q has batch 0", call, good, q=good["q"][:0])


def test_empty_seqlens_for_metadata():
    expect(etap.EtapError, "cache_seqlens is empty", etap.get_mla_metadata,
           np.zeros(0, np.int32), 16, 1)


# ---- strides / contiguity ----

def test_q_last_dim_not_contiguous(good):
    wide = np.zeros(good["q"].shape[:3] + (1152,), np.float16)
    expect(etap.EtapError, "q has a last-dimension stride of 2", call, good, q=wide[..., ::2])


def test_cache_last_dim_not_contiguous(good):
    kv = good["k_cache"]
    wide = np.zeros(kv.shape[:3] + (1152,), np.float16)
    expect(etap.EtapError, "k_cache has a last-dimension stride of 2", call, good, k_cache=wide[..., ::2])


def test_block_table_column_major(good):
    bt = np.asfortranarray(good["block_table"])
    expect(etap.EtapError, "block_table has a last-dimension stride", call, good, block_table=bt)


def test_seqlens_strided(good):
    wide = np.zeros(4, np.int32)
    wide[::2] = good["cache_seqlens"]
    expect(etap.EtapError, "cache_seqlens has stride 2", call, good, cache_seqlens=wide[::2])


def test_negative_stride(good):
    expect(etap.EtapError, "negative stride", call, good, q=good["q"][::-1])


def test_misaligned_view(good):
    raw = np.zeros(good["q"].size * 2 + 1, np.uint8)[1:].view(np.float16).reshape(good["q"].shape)
    expect(etap.EtapError, "not aligned", call, good, q=raw)


# ---- metadata ----

def test_metadata_for_another_batch(good):
    md3, ns3 = etap.get_mla_metadata(np.array([1, 2, 3], np.int32), 32, 1)
    expect(etap.EtapError, "tile_scheduler_metadata has .* words", call, good,
           tile_scheduler_metadata=md3, num_splits=ns3)


def test_metadata_2d(good):
    expect(etap.EtapError, "1-D int32", call, good,
           tile_scheduler_metadata=good["tile_scheduler_metadata"][None])


def test_metadata_none(good):
    expect(etap.EtapError, "tile_scheduler_metadata is None", call, good, tile_scheduler_metadata=None)


def test_metadata_garbage(good):
    md = good["tile_scheduler_metadata"].copy()
    md[:] = 0  # not written by etap_plan: the library itself refuses it
    e = expect(etap.EtapError, "plan", call, good, tile_scheduler_metadata=md)
    assert "etap_decode" in str(e)


def test_num_splits_shape(good):
    expect(etap.EtapError, r"num_splits has shape \[2\]", call, good,
           num_splits=good["num_splits"][:2])


def test_sched_meta_with_num_splits(good):
    meta, _ = etap.get_mla_metadata()
    expect(etap.EtapError, "num_splits must be None", call, good, tile_scheduler_metadata=meta,
           num_splits=good["num_splits"])


def test_sched_meta_reuse_with_other_shape(good):
    meta, _ = etap.get_mla_metadata()
    call(good, tile_scheduler_metadata=meta, num_splits=None)
    expect(etap.EtapError, "FlashMLASchedMeta was filled by a call with", call, good,
           tile_scheduler_metadata=meta, num_splits=None, causal=False)


@pytest.mark.parametrize("args,match", [
    ((0, 1), "num_q_tokens_per_head_k is 0"),
    ((16, 0), "num_heads_k is 0"),
    ((16.5, 1), "num_q_tokens_per_head_k must be an int"),
    ((16, "1"), "num_heads_k must be an int"),
])
def test_get_mla_metadata_bad_numbers(args, match):
    lens = np.array([3, 4], np.int32)
    expect(etap.EtapError, match, etap.get_mla_metadata, lens, *args)


def test_get_mla_metadata_num_heads_q():
    lens = np.array([3, 4], np.int32)
    etap.get_mla_metadata(lens, 32, 1, num_heads_q=16)  # s_q 2
    expect(etap.EtapError, "num_heads_q", etap.get_mla_metadata, lens, 32, 2, num_heads_q=5)


def test_get_mla_metadata_negative_length():
    e = expect(etap.EtapError, r"cache_seqlens\[1\] is -3", etap.get_mla_metadata,
               np.array([3, -3], np.int32), 16, 1)
    assert "etap_plan" in str(e)


def test_get_mla_metadata_int64_lengths():
    expect(etap.EtapTypeError, "cache_seqlens has dtype int64", etap.get_mla_metadata,
           np.array([3, 4], np.int64), 16, 1)


# ---- lengths and tables checked by the library ----

def test_length_beyond_block_table(good):
    lens = good["cache_seqlens"].copy()
    cap = good["block_table"].shape[1] * good["k_cache"].shape[1]
    lens[1] = cap + 1
    md, ns = etap.get_mla_metadata(lens, 32, 1)
    e = expect(etap.EtapError, "cache_seqlens", call, good, cache_seqlens=lens,
               tile_scheduler_metadata=md, num_splits=ns)
    assert "etap_decode" in str(e)
    # the newer interface knows the cache geometry when it plans: caught there
    meta, _ = etap.get_mla_metadata()
    expect(etap.EtapError, "cache_seqlens", call, good, cache_seqlens=lens,
           tile_scheduler_metadata=meta, num_splits=None)


def test_used_block_table_entry_out_of_range(good):
    bt = good["block_table"].copy()
    bt[0, 0] = good["k_cache"].shape[0]  # == num_blocks: out of range, and used (len 20)
    e = expect(etap.EtapError, "block_table|page", call, good, block_table=bt)
    assert "etap_decode" in str(e)


# ---- scale ----

@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_softmax_scale(good, scale):
    expect(etap.EtapError, "softmax_scale", call, good, softmax_scale=scale)


# ---- unsupported features ----

@pytest.mark.parametrize("kw", [
    dict(is_fp8_kvcache=True), dict(indices=np.zeros((2, 2, 8), np.int32)),
    dict(attn_sink=np.zeros(16, np.float32)), dict(topk_length=np.zeros(2, np.int32)),
    dict(descale_q=np.ones(1, np.float32)),
])
def test_unsupported_features(good, kw):
    expect(etap.EtapError, "not implemented by etap", call, good, status=UNSUPPORTED, **kw)


def test_unsupported_metadata_options():
    lens = np.array([3], np.int32)
    expect(etap.EtapError, "FP8", etap.get_mla_metadata, lens, 16, 1, is_fp8_kvcache=True,
           status=UNSUPPORTED)
    expect(etap.EtapError, "sparse", etap.get_mla_metadata, lens, 16, 1, topk=64, status=UNSUPPORTED)


def test_missing_dense_inputs(good):
    expect(etap.EtapError, "block_table and cache_seqlens are required", call, good, block_table=None)


# ---- workspace ----

def test_workspace_too_small(good):
    e = expect(etap.EtapError, "workspace has 16 bytes", call, good,
               workspace=np.zeros(16, np.uint8), status=etap.ETAP_ERR_WORKSPACE_TOO_SMALL)
    assert e.status_name == "ETAP_ERR_WORKSPACE_TOO_SMALL"


def test_workspace_dtype(good):
    expect(etap.EtapTypeError, "workspace has dtype float32", call, good,
           workspace=np.zeros(1 << 20, np.float32))


# ---- mixing libraries / devices ----

def test_mixed_numpy_and_torch(good):
    torch = pytest.importorskip("torch")
    expect(etap.EtapError, "same device", call, good,
           block_table=torch.from_numpy(good["block_table"].copy()))


def test_error_is_catchable_as_value_error(good):
    with pytest.raises(ValueError):
        call(good, head_dim_v=1)
    with pytest.raises(TypeError):
        call(good, q=good["q"].astype(np.float64))
