"""etap: MLA decode attention (DeepSeek-V3/R1) over libetap, with FlashMLA's decode API.

Usage (the same code as with FlashMLA; only the import differs)::

    from etap import get_mla_metadata, flash_mla_with_kvcache
    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                      tile_scheduler_metadata, num_splits, causal=True)

torch CUDA tensors run on etap's CUDA backend (torch's current stream, no host
synchronisation, CUDA-graph capturable); numpy arrays and CPU torch tensors run on the CPU
backend. The package is pure Python (ctypes); libetap itself is found as described in
``etap._lib`` and docs/python.md, and ``etap.library_path()`` says which one was loaded.
Importing etap imports neither torch nor numpy, and loads no library.
"""

from ._errors import (
    EtapError,
    EtapTypeError,
    EtapLibraryError,
    ETAP_OK,
    ETAP_ERR_INVALID_ARGUMENT,
    ETAP_ERR_UNSUPPORTED,
    ETAP_ERR_WORKSPACE_TOO_SMALL,
    ETAP_ERR_NO_DEVICE,
    ETAP_ERR_CUDA,
    ETAP_ERR_OUT_OF_MEMORY,
    ETAP_ERR_INTERNAL,
    ETAP_ERR_LIBRARY_NOT_FOUND,
)
from ._lib import ETAP_HEAD_DIM_QK, ETAP_HEAD_DIM_V, ETAP_SOFTMAX_SCALE_DEFAULT
from ._arrays import Bfloat16Array
from ._runtime import clear_workspace_cache
from .flash_mla_interface import FlashMLASchedMeta, get_mla_metadata, flash_mla_with_kvcache

__version__ = "0.1.0"

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "FlashMLASchedMeta",
    "Bfloat16Array",
    "EtapError",
    "EtapTypeError",
    "EtapLibraryError",
    "library_path",
    "library_info",
    "cuda_available",
    "clear_workspace_cache",
    "ETAP_HEAD_DIM_QK",
    "ETAP_HEAD_DIM_V",
    "ETAP_SOFTMAX_SCALE_DEFAULT",
    "ETAP_OK",
    "ETAP_ERR_INVALID_ARGUMENT",
    "ETAP_ERR_UNSUPPORTED",
    "ETAP_ERR_WORKSPACE_TOO_SMALL",
    "ETAP_ERR_NO_DEVICE",
    "ETAP_ERR_CUDA",
    "ETAP_ERR_OUT_OF_MEMORY",
    "ETAP_ERR_INTERNAL",
    "ETAP_ERR_LIBRARY_NOT_FOUND",
]


def library_path():
    """The path of the libetap that is (or, on this first call, gets) loaded. Raises
    EtapLibraryError listing every place tried when none loads."""
    from . import _lib

    return _lib.load().path


def library_info():
    """A dict: path, source (which search step found it), version (C API, e.g. '0.1.0'),
    backends built ('cpu', 'cuda'), and the places tried before it (list of str)."""
    from . import _lib

    lib = _lib.load()
    v = lib.version
    built = [name for name, code in (("cpu", _lib.ETAP_BACKEND_CPU), ("cuda", _lib.ETAP_BACKEND_CUDA))
             if lib.backend_built(code)]
    return {
        "path": lib.path,
        "source": lib.source,
        "version": "%d.%d.%d" % (v // 10000, (v // 100) % 100, v % 100),
        "backends": built,
        "search": [repr(a) for a in lib.attempts],
    }


def cuda_available():
    """True when the loaded libetap has its CUDA backend built in (says nothing about GPUs)."""
    from . import _lib

    return _lib.load().backend_built(_lib.ETAP_BACKEND_CUDA)
