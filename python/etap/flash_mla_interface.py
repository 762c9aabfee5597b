"""FlashMLA's dense-decode Python interface, implemented over libetap.

Two generations of FlashMLA callers are served by the same two functions:

* the original one::

      tile_scheduler_metadata, num_splits = get_mla_metadata(
          cache_seqlens, s_q * h_q // h_kv, h_kv)
      out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                        tile_scheduler_metadata, num_splits, causal=True)

  Here the etap plan (an int32 array of ``plan_bytes / 4`` words, docs/plan-format.md)
  *is* ``tile_scheduler_metadata``, and ``num_splits`` is the plan's ``split_offset[b+1]``
  words: a view into the same memory.

* the newer one, where ``get_mla_metadata()`` returns an empty ``FlashMLASchedMeta`` (and
  ``None``) that the first ``flash_mla_with_kvcache`` call fills in from its arguments, and
  later calls reuse (they must pass the same shapes and ``cache_seqlens`` values).
"""

import dataclasses
import sys
from typing import Optional

from . import _arrays, _lib, _runtime
from ._arrays import Bfloat16Array, view
from ._errors import EtapError, EtapTypeError, ETAP_ERR_UNSUPPORTED, ETAP_ERR_WORKSPACE_TOO_SMALL

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "flash_mla_with_kvcache"]

_DTYPE_CODES = {"bf16": _lib.ETAP_DTYPE_BF16, "fp16": _lib.ETAP_DTYPE_FP16}
_PLAN_HEADER_WORDS = 16
_PLAN_WORKER_WORDS = 4


@dataclasses.dataclass
class FlashMLASchedMeta:
    """Scheduling metadata created empty by ``get_mla_metadata()`` and filled by the first
    ``flash_mla_with_kvcache`` call that receives it (FlashMLA's newer interface). Reuse it
    only for calls with the same shapes and the same ``cache_seqlens`` values (the layers
    of one decode step); make a new one for the next step."""

    @dataclasses.dataclass
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int]
        extra_page_block_size: Optional[int]
        extra_topk: Optional[int]

    have_initialized: bool = False
    config: Optional[Config] = None
    tile_scheduler_metadata: Optional[object] = None  # the etap plan (int32 words)
    num_splits: Optional[object] = None               # its split_offset[b+1] view


def _is_off(flag):
    """False / None / 0 without calling bool() on it (a tensor there would synchronise)."""
    return flag is None or flag is False or (type(flag) is int and flag == 0)


def _unsupported(message):
    return EtapError(message, ETAP_ERR_UNSUPPORTED)


def _require_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import operator

            value = operator.index(value)
        except TypeError:
            raise EtapTypeError("%s must be an int, got %s" % (name, type(value).__name__))
    if value < minimum or value > _lib.INT32_MAX:
        raise EtapError("%s is %d: it must be in [%d, %d]" % (name, value, minimum, _lib.INT32_MAX))
    return value


def _device_str(dev):
    return "cpu" if dev[0] == "cpu" else "cuda:%d" % dev[1]


def _where(a):
    return "%s %s" % (a.kind, _device_str(a.device))


def _same_place(ref, *others):
    for a in others:
        if a.kind != ref.kind or a.device != ref.device:
            raise EtapError("%s is a %s array but %s is a %s array: every array of one call must "
                            "live on the same device (and be of the same library); etap does not "
                            "copy" % (a.name, _where(a), ref.name, _where(ref)))


def _check_seqlens(a):
    _arrays.require_dtype(a, ("int32",), "int32")
    if len(a.shape) != 1:
        raise EtapError("%s has shape %s: it must be 1-dimensional, [batch]" % (a.name, list(a.shape)))
    _arrays.require_contiguous_1d(a)
    if a.shape[0] < 1:
        raise EtapError("%s is empty: batch must be >= 1" % a.name)


class _Cuda:
    """Device guard + torch's current stream of a device (no host synchronisation)."""

    __slots__ = ("torch", "index", "guard", "stream")

    def __init__(self, torch, index):
        self.torch = torch
        self.index = index
        self.guard = torch.cuda.device(index) if torch.cuda.current_device() != index else None
        self.stream = torch.cuda.current_stream(index).cuda_stream

    def __enter__(self):
        if self.guard is not None:
            self.guard.__enter__()
        return self

    def __exit__(self, *exc):
        if self.guard is not None:
            return self.guard.__exit__(*exc)
        return False


def _empty(kind, device, shape, dtype):
    """An uninitialised output array of `kind` on `device`; dtype one of bf16/fp16/fp32/int32."""
    if kind == "torch":
        torch = sys.modules["torch"]
        tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
               "int32": torch.int32}[dtype]
        dev = torch.device("cuda", device[1]) if device[0] == "cuda" else torch.device("cpu")
        return torch.empty(shape, dtype=tdt, device=dev)
    np = sys.modules["numpy"]
    if dtype == "bf16":
        return Bfloat16Array(np.empty(shape, dtype=np.uint16))
    return np.empty(shape, dtype={"fp16": np.float16, "fp32": np.float32, "int32": np.int32}[dtype])


def _empty_like_dtype(q_arr, shape):
    """out for q: its library, device and dtype object (keeps e.g. ml_dtypes.bfloat16)."""
    if q_arr.kind == "numpy" and not isinstance(q_arr.obj, Bfloat16Array):
        np = sys.modules["numpy"]
        return np.empty(shape, dtype=q_arr.obj.dtype)
    return _empty(q_arr.kind, q_arr.device, shape, q_arr.dtype)


def _poison(a):
    if isinstance(a, Bfloat16Array):
        a.bits.fill(0x7FC1)
    elif hasattr(a, "fill_"):
        a.fill_(float("nan"))
    else:
        a.fill(float("nan"))


def _run_plan(lib, h, shape, seqlens, plan, plan_bytes, ctx):
    stream = ctx.stream if ctx is not None else None
    status = lib.etap_plan(h, shape, seqlens.ptr, view(plan, "plan").ptr, plan_bytes, stream)
    lib.check(status, "etap_plan")


def _plan_views(plan, batch, num_workers):
    """num_splits: the plan's split_offset[batch + 1] words, a view (same memory)."""
    off = _PLAN_HEADER_WORDS + _PLAN_WORKER_WORDS * num_workers
    return plan[off:off + batch + 1]


def get_mla_metadata(cache_seqlens=None, num_q_tokens_per_head_k=None, num_heads_k=None,
                     num_heads_q=None, is_fp8_kvcache=False, topk=None, *,
                     num_heads_per_head_k=None):
    """The split-KV schedule of one decode step, for every layer of that step.

    ``get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)`` (FlashMLA's
    original interface) computes it now, from ``cache_seqlens`` (int32 ``[batch]``; a
    CUDA tensor: computed on the device on torch's current stream, without synchronising;
    a numpy array or CPU tensor: computed on the host). ``num_q_tokens_per_head_k`` is
    ``s_q * h_q // h_kv``. Returns ``(tile_scheduler_metadata, num_splits)``: the etap plan
    (int32, 1-D) and its ``split_offset[batch + 1]`` words (a view into the plan).

    ``get_mla_metadata()`` with no ``cache_seqlens`` (FlashMLA's newer interface) returns
    ``(FlashMLASchedMeta(), None)``; the first ``flash_mla_with_kvcache`` call fills it.

    ``num_heads_per_head_k`` is accepted as the keyword name FlashMLA's first release used
    for ``num_q_tokens_per_head_k``.
    """
    if num_heads_per_head_k is not None:
        if num_q_tokens_per_head_k is not None:
            raise EtapError("pass num_q_tokens_per_head_k or num_heads_per_head_k (its older "
                            "name), not both")
        num_q_tokens_per_head_k = num_heads_per_head_k
    if not _is_off(is_fp8_kvcache):
        raise _unsupported("is_fp8_kvcache=True: the FP8 KV cache is not implemented by etap yet "
                           "(bf16 and fp16 are)")
    if topk is not None:
        raise _unsupported("topk=%r: sparse attention is not implemented by etap (dense decode only)"
                           % (topk,))
    if cache_seqlens is None:
        return FlashMLASchedMeta(), None

    sl = view(cache_seqlens, "cache_seqlens")
    _check_seqlens(sl)
    rows = _require_int(num_q_tokens_per_head_k, "num_q_tokens_per_head_k")
    h_kv = _require_int(num_heads_k, "num_heads_k")
    if num_heads_q is not None:
        h_q = _require_int(num_heads_q, "num_heads_q")
        if h_q % h_kv or (rows * h_kv) % h_q:
            raise EtapError("num_heads_q (%d) must be a multiple of num_heads_k (%d) and divide "
                            "num_q_tokens_per_head_k * num_heads_k (%d)" % (h_q, h_kv, rows * h_kv))
    batch = sl.shape[0]
    if rows * h_kv > _lib.INT32_MAX:
        raise EtapError("num_q_tokens_per_head_k * num_heads_k is too large")

    # The plan depends on the lengths, the batch and the handle's worker count for the
    # shape; the worker count depends on the rows per KV head (s_q * h_q / h_kv) and h_kv,
    # which is what this shape has (as seqlen_q 1). The cache geometry is not known yet:
    # lengths are checked against the block table by etap_decode instead.
    shape = _runtime.make_shape(batch, 1, rows * h_kv, h_kv, 1, 1, _lib.INT32_MAX,
                                _lib.ETAP_DTYPE_BF16, 0)
    lib = _lib.load()
    h = _runtime.handle(sl.device)
    num_workers, plan_bytes, _ = _runtime.sizes(h, shape)
    plan = _empty(sl.kind, sl.device, (plan_bytes // 4,), "int32")
    if sl.device[0] == "cuda":
        with _Cuda(sys.modules["torch"], sl.device[1]) as ctx:
            _run_plan(lib, h, shape, sl, plan, plan_bytes, ctx)
    else:
        _run_plan(lib, h, shape, sl, plan, plan_bytes, None)
    return plan, _plan_views(plan, batch, num_workers)


def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v,
                           tile_scheduler_metadata, num_splits=None, softmax_scale=None,
                           causal=False, is_fp8_kvcache=False, indices=None, attn_sink=None,
                           extra_k_cache=None, extra_indices_in_kvcache=None, topk_length=None,
                           extra_topk_length=None, *, descale_q=None, descale_k=None,
                           workspace=None):
    """One layer of MLA decode attention (FlashMLA's dense-decode semantics).

    q: ``[b, s_q, h_q, 576]``; k_cache: ``[num_blocks, page_block_size, h_kv, 576]`` (V is
    its first 512 columns), same dtype as q (bf16 or fp16); block_table: int32
    ``[b, max_blocks_per_seq]``; cache_seqlens: int32 ``[b]``; head_dim_v: 512.
    tile_scheduler_metadata / num_splits: from ``get_mla_metadata`` (either interface).
    softmax_scale: None for ``576 ** -0.5``. causal: bottom-right aligned mask for s_q > 1.

    Returns ``(out, softmax_lse)``: ``[b, s_q, h_q, 512]`` in q's dtype and fp32
    ``[b, h_q, s_q]`` (natural log; ``+inf`` and zero output for a row that sees no key),
    as new arrays of q's library on q's device. CUDA: asynchronous on torch's current
    stream, no host synchronisation, CUDA-graph capturable.

    ``workspace`` (etap only, optional): a caller-owned uint8 buffer on the same device to
    use instead of the cached one (see docs/python.md).
    """
    if not _is_off(is_fp8_kvcache) or descale_q is not None or descale_k is not None:
        raise _unsupported("the FP8 KV cache (is_fp8_kvcache / descale_q / descale_k) is not "
                           "implemented by etap yet (bf16 and fp16 are)")
    if indices is not None or attn_sink is not None or extra_k_cache is not None or \
            extra_indices_in_kvcache is not None or topk_length is not None or \
            extra_topk_length is not None:
        raise _unsupported("sparse attention (indices, attn_sink, extra_k_cache, "
                           "extra_indices_in_kvcache, topk_length, extra_topk_length) is not "
                           "implemented by etap: dense decode only")
    if block_table is None or cache_seqlens is None:
        raise EtapError("block_table and cache_seqlens are required for dense decode")

    qa = view(q, "q")
    ka = view(k_cache, "k_cache")
    bta = view(block_table, "block_table")
    sla = view(cache_seqlens, "cache_seqlens")
    _same_place(qa, ka, bta, sla)

    # ---- dtypes ----
    if qa.dtype == "fp8_e4m3":
        raise _unsupported("q has dtype float8_e4m3fn: FP8 is reserved and not implemented by etap yet")
    _arrays.require_dtype(qa, ("bf16", "fp16"), "bfloat16 or float16")
    if ka.dtype != qa.dtype:
        raise EtapTypeError("k_cache has dtype %s but q has %s: they must be the same (etap never casts)"
                            % (ka.dtype, qa.dtype))
    _arrays.require_dtype(bta, ("int32",), "int32")

    # ---- shapes ----
    _arrays.require_ndim(qa, 4, "[batch, seq_len_q, num_heads_q, 576]")
    _arrays.require_ndim(ka, 4, "[num_blocks, page_block_size, num_heads_k, 576]")
    _arrays.require_ndim(bta, 2, "[batch, max_blocks_per_seq]")
    _check_seqlens(sla)
    b, s_q, h_q, d = qa.shape
    num_blocks, page, h_kv, dk = ka.shape
    if d != _lib.ETAP_HEAD_DIM_QK:
        raise EtapError("q has head dim %d: MLA decode needs 576 (512 latent + 64 RoPE)" % d)
    if dk != _lib.ETAP_HEAD_DIM_QK:
        raise EtapError("k_cache has head dim %d: MLA decode needs 576 (512 latent + 64 RoPE)" % dk)
    if head_dim_v != _lib.ETAP_HEAD_DIM_V:
        raise EtapError("head_dim_v is %r: MLA decode needs 512 (V is the first 512 columns of "
                        "the cache rows)" % (head_dim_v,))
    if bta.shape[0] != b:
        raise EtapError("block_table has %d rows but q has batch %d" % (bta.shape[0], b))
    if sla.shape[0] != b:
        raise EtapError("cache_seqlens has %d entries but q has batch %d" % (sla.shape[0], b))
    for what, v in (("batch", b), ("seq_len_q", s_q), ("num_heads_q", h_q), ("num_blocks", num_blocks),
                    ("page_block_size", page), ("num_heads_k", h_kv),
                    ("max_blocks_per_seq", bta.shape[1])):
        if v < 1 or v > _lib.INT32_MAX:
            raise EtapError("%s is %d: it must be in [1, %d]" % (what, v, _lib.INT32_MAX))
    if h_q % h_kv:
        raise EtapError("num_heads_q (%d) is not a multiple of num_heads_k (%d)" % (h_q, h_kv))

    # ---- strides ----
    for a in (qa, ka, bta):
        _arrays.require_last_contiguous(a)
        _arrays.require_nonnegative_strides(a)

    # ---- scale ----
    if softmax_scale is None:
        scale = _lib.ETAP_SOFTMAX_SCALE_DEFAULT
    else:
        scale = float(softmax_scale)
        if not scale > 0.0 or scale == float("inf"):
            raise EtapError("softmax_scale is %r: it must be finite and > 0 (None for 576 ** -0.5)"
                            % (softmax_scale,))
    causal_flag = 1 if (causal and s_q > 1) else 0

    lib = _lib.load()
    h = _runtime.handle(qa.device)
    dtype_code = _DTYPE_CODES[qa.dtype]
    shape = _runtime.make_shape(b, s_q, h_q, h_kv, page, num_blocks, bta.shape[1], dtype_code,
                                causal_flag)
    num_workers, plan_bytes, ws_bytes = _runtime.sizes(h, shape)
    cuda = qa.device[0] == "cuda"
    torch = sys.modules.get("torch") if cuda else None

    with (_Cuda(torch, qa.device[1]) if cuda else _NoCuda) as ctx:
        # ---- the plan ----
        meta = tile_scheduler_metadata
        if isinstance(meta, FlashMLASchedMeta):
            if num_splits is not None:
                raise EtapError("num_splits must be None when tile_scheduler_metadata is a "
                                "FlashMLASchedMeta")
            cfg = FlashMLASchedMeta.Config(b, s_q, h_q, page, h_kv, bool(causal), False, None, None, None)
            if not meta.have_initialized:
                plan = _empty(qa.kind, qa.device, (plan_bytes // 4,), "int32")
                _run_plan(lib, h, shape, sla, plan, plan_bytes, ctx)
                meta.tile_scheduler_metadata = plan
                meta.num_splits = _plan_views(plan, b, num_workers)
                meta.config = cfg
                meta.have_initialized = True
            elif meta.config != cfg:
                raise EtapError("this FlashMLASchedMeta was filled by a call with %s, this call has %s: "
                                "reuse one only across calls with the same shapes (and the same "
                                "cache_seqlens values)" % (meta.config, cfg))
            plan = meta.tile_scheduler_metadata
        elif meta is None:
            raise EtapError("tile_scheduler_metadata is None: pass what get_mla_metadata returned")
        else:
            plan = meta
        pa = view(plan, "tile_scheduler_metadata")
        _same_place(qa, pa)
        _arrays.require_dtype(pa, ("int32",), "int32 (an etap plan from get_mla_metadata)")
        if len(pa.shape) != 1:
            raise EtapError("tile_scheduler_metadata has shape %s: an etap plan is a 1-D int32 array "
                            "from etap.get_mla_metadata (FlashMLA's own metadata cannot be used)"
                            % (list(pa.shape),))
        _arrays.require_contiguous_1d(pa)
        if pa.shape[0] * 4 != plan_bytes:
            raise EtapError(
                "tile_scheduler_metadata has %d words, but this call (batch %d, %d query rows per KV "
                "head, %d KV heads) needs a plan of %d words (%d workers on this device): pass the "
                "result of get_mla_metadata(cache_seqlens, %d, %d) made for this batch on this device"
                % (pa.shape[0], b, s_q * h_q // h_kv, h_kv, plan_bytes // 4, num_workers,
                   s_q * h_q // h_kv, h_kv))
        if num_splits is not None:
            na = view(num_splits, "num_splits")
            _same_place(qa, na)
            _arrays.require_dtype(na, ("int32",), "int32")
            if tuple(na.shape) != (b + 1,):
                raise EtapError("num_splits has shape %s: it must be [batch + 1] = [%d]"
                                % (list(na.shape), b + 1))

        # ---- outputs and workspace ----
        out = _empty_like_dtype(qa, (b, s_q, h_q, _lib.ETAP_HEAD_DIM_V))
        lse = _empty(qa.kind, qa.device, (b, h_q, s_q), "fp32")
        if _runtime.poison_outputs:
            _poison(out)
            _poison(lse)
        oa = view(out, "out")
        la = view(lse, "softmax_lse")
        if workspace is not None:
            wa = view(workspace, "workspace")
            _same_place(qa, wa)
            _arrays.require_dtype(wa, ("uint8",), "uint8")
            if len(wa.shape) != 1:
                raise EtapError("workspace must be a 1-D uint8 buffer")
            _arrays.require_contiguous_1d(wa)
            if wa.shape[0] < ws_bytes:
                raise EtapError("workspace has %d bytes: this call needs %d" % (wa.shape[0], ws_bytes),
                                ETAP_ERR_WORKSPACE_TOO_SMALL)
            ws_ptr, ws_len = wa.ptr, wa.shape[0]
        elif cuda:
            ws_ptr, ws_len = _runtime.cuda_workspace(torch, qa.device[1], ctx.stream, ws_bytes)
        else:
            ws_ptr, ws_len = _runtime.cpu_workspace(ws_bytes)

        args = _lib.etap_mla_args()
        args.shape = shape
        args.q = qa.ptr
        args.q_stride_batch, args.q_stride_seq, args.q_stride_head = qa.strides[0], qa.strides[1], qa.strides[2]
        args.kv_cache = ka.ptr
        args.kv_stride_page, args.kv_stride_token, args.kv_stride_head = ka.strides[0], ka.strides[1], ka.strides[2]
        args.block_table = bta.ptr
        args.block_table_stride = bta.strides[0]
        args.cache_seqlens = sla.ptr
        args.softmax_scale = scale
        args.out = oa.ptr
        args.out_stride_batch, args.out_stride_seq, args.out_stride_head = oa.strides[0], oa.strides[1], oa.strides[2]
        args.lse = la.ptr
        status = lib.etap_decode(h, args, pa.ptr, plan_bytes, ws_ptr, ws_len,
                                 ctx.stream if cuda else None)
        lib.check(status, "etap_decode")
    return out, lse


class _NoCudaCtx:
    stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NoCuda = _NoCudaCtx()
