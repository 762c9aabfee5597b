"""Handles (one per backend and device), per-shape sizes, and workspaces.

Handles. ``etap_create`` is called once per (backend, device) and the handle is kept for
the life of the process: a plan is only valid with the handle (the worker count) it was
made with, so every call for a device must use the same one. The CPU handle uses
``$ETAP_NUM_THREADS`` threads when set (read when the CPU handle is first created), else
all online processors.

Workspaces (the scratch ``etap_decode`` needs; see docs/python.md):
  * CUDA: one ``torch.uint8`` buffer per (device, stream) -- a stream's calls run one
    after another, so they may share one; separate streams get separate buffers. A buffer
    is allocated with ``torch.empty`` (graph-capture safe: inside a capture it comes from
    the graph's memory pool) and replaced by a larger one when a call needs more. A buffer
    that was ever used while a CUDA graph was being captured is never freed (captured
    graphs keep its address), even after it is replaced; ``clear_workspace_cache()``
    forgets them all, and may be called only when no such graph will be replayed again.
  * CPU: one anonymous mmap per Python thread (``etap_decode`` on the CPU is synchronous,
    and ctypes releases the GIL, so threads must not share one), grown as needed.
A caller may pass its own buffer instead (``workspace=`` of flash_mla_with_kvcache).
"""

import ctypes
import mmap
import os
import threading

from ._errors import EtapError
from . import _lib

# Debugging aid (tests turn it on): fill out/lse with NaN before etap_decode writes them,
# so that an element the library failed to write shows up as NaN. ETAP_POISON_OUTPUTS=1.
poison_outputs = os.environ.get("ETAP_POISON_OUTPUTS", "") not in ("", "0")

_lock = threading.Lock()
_handles = {}  # (backend, device) -> handle (c_void_p value)
_sizes = {}    # (handle, shape tuple) -> (num_workers, plan_bytes, workspace_bytes)


def _cpu_threads():
    v = os.environ.get("ETAP_NUM_THREADS", "").strip()
    if not v:
        return 0
    try:
        n = int(v)
    except ValueError:
        raise EtapError("ETAP_NUM_THREADS is %r: it must be an integer (0 = all processors)" % v)
    return n


def handle(device):
    """The cached handle for a device: ("cpu", -1) or ("cuda", index)."""
    h = _handles.get(device)
    if h is not None:
        return h
    lib = _lib.load()
    with _lock:
        h = _handles.get(device)
        if h is not None:
            return h
        opts = _lib.etap_options()
        if device[0] == "cuda":
            opts.backend = _lib.ETAP_BACKEND_CUDA
            opts.device = device[1]
            opts.num_threads = 0
            what = "etap_create(CUDA backend, device %d)" % device[1]
        else:
            opts.backend = _lib.ETAP_BACKEND_CPU
            opts.device = 0
            opts.num_threads = _cpu_threads()
            what = "etap_create(CPU backend)"
        out = ctypes.c_void_p()
        lib.check(lib.etap_create(ctypes.byref(out), ctypes.byref(opts)), what)
        _handles[device] = out.value
        return out.value


def make_shape(batch, seqlen_q, num_heads_q, num_heads_kv, page_size, num_pages,
               max_pages_per_seq, dtype, causal):
    s = _lib.etap_mla_shape()
    s.batch = batch
    s.seqlen_q = seqlen_q
    s.num_heads_q = num_heads_q
    s.num_heads_kv = num_heads_kv
    s.head_dim_qk = _lib.ETAP_HEAD_DIM_QK
    s.head_dim_v = _lib.ETAP_HEAD_DIM_V
    s.page_size = page_size
    s.num_pages = num_pages
    s.max_pages_per_seq = max_pages_per_seq
    s.dtype = dtype
    s.causal = causal
    return s


def shape_key(s):
    return (s.batch, s.seqlen_q, s.num_heads_q, s.num_heads_kv, s.page_size, s.num_pages,
            s.max_pages_per_seq, s.dtype, s.causal)


def sizes(h, shape):
    """(num_workers, plan_bytes, workspace_bytes) for a handle and an etap_mla_shape."""
    key = (h, shape_key(shape))
    v = _sizes.get(key)
    if v is not None:
        return v
    lib = _lib.load()
    nw = ctypes.c_int32()
    pb = ctypes.c_size_t()
    wb = ctypes.c_size_t()
    ref = ctypes.byref(shape)
    lib.check(lib.etap_get_num_workers(h, ref, ctypes.byref(nw)), "etap_get_num_workers")
    lib.check(lib.etap_plan_size(h, ref, ctypes.byref(pb)), "etap_plan_size")
    lib.check(lib.etap_workspace_size(h, ref, ctypes.byref(wb)), "etap_workspace_size")
    v = (nw.value, pb.value, wb.value)
    if len(_sizes) > 4096:
        _sizes.clear()
    _sizes[key] = v
    return v


# ---- CUDA workspaces ---------------------------------------------------------------------

class _CudaBuffer:
    __slots__ = ("tensor", "nbytes", "captured")

    def __init__(self, tensor, nbytes):
        self.tensor, self.nbytes, self.captured = tensor, nbytes, False


_cuda_ws = {}       # (device index, stream pointer) -> _CudaBuffer
_cuda_retired = []  # buffers replaced after being used in a graph capture: kept alive

_MIB = 1 << 20


def cuda_workspace(torch, device_index, stream_ptr, need):
    """(pointer, bytes) of a workspace of >= need bytes for this device and stream."""
    if need == 0:
        return 0, 0
    key = (device_index, stream_ptr)
    buf = _cuda_ws.get(key)
    capturing = torch.cuda.is_current_stream_capturing()
    if buf is None or buf.nbytes < need:
        nbytes = (need + _MIB - 1) // _MIB * _MIB
        t = torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", device_index))
        with _lock:
            old = _cuda_ws.get(key)
            if old is not None and old.captured:
                _cuda_retired.append(old)
            buf = _CudaBuffer(t, nbytes)
            _cuda_ws[key] = buf
    if capturing:
        buf.captured = True
    return buf.tensor.data_ptr(), buf.nbytes


# ---- CPU workspaces ----------------------------------------------------------------------

_tls = threading.local()


def cpu_workspace(need):
    """(pointer, bytes) of this thread's host workspace of >= need bytes (page aligned)."""
    if need == 0:
        return 0, 0
    m = getattr(_tls, "mm", None)
    if m is None or len(m) < need:
        size = (need + _MIB - 1) // _MIB * _MIB
        m = mmap.mmap(-1, size)
        _tls.mm = m
        _tls.ptr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    return _tls.ptr, len(m)


def clear_workspace_cache():
    """Frees every cached workspace (CUDA buffers of all devices and streams, including
    those kept for captured CUDA graphs, and this thread's CPU buffer). Only call it when
    no CUDA graph that captured an etap call will be replayed again."""
    with _lock:
        _cuda_ws.clear()
        del _cuda_retired[:]
    _tls.__dict__.pop("ptr", None)
    m = _tls.__dict__.pop("mm", None)
    if m is not None:
        try:
            m.close()
        except BufferError:  # a ctypes view still refers to it: let the GC free it
            pass
