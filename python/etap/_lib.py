"""Finding, loading and binding libetap (the C library) through ctypes.

Where libetap is looked for, in this order (the first that loads wins):

1. ``$ETAP_LIBRARY``: the path of a libetap shared library. When it is set it is the only
   place tried, so that a typo never silently loads some other copy.
2. The package directory: a ``libetap.so`` (or ``libetap.so.*``) copied next to this file
   before ``pip install`` (see docs/python.md).
3. The build trees of the etap checkout this package lives in (``<repo>/build*/src``),
   newest first, when the package is imported from a checkout (``python/etap``), and
   those under the current directory (``./build*/src``).
4. The system's dynamic loader (``LD_LIBRARY_PATH``, the ldconfig cache).

Nothing is loaded at import time: the first call that needs the library loads it.
"""

import ctypes
import glob
import os
import threading

from ._errors import EtapLibraryError, raise_for_status

# The version of the C API this package is written against (include/etap.h).
API_VERSION_MAJOR = 0
API_VERSION_MINOR = 1

ETAP_HEAD_DIM_QK = 576
ETAP_HEAD_DIM_V = 512
ETAP_SOFTMAX_SCALE_DEFAULT = 0.0

ETAP_DTYPE_BF16 = 0
ETAP_DTYPE_FP16 = 1
ETAP_DTYPE_FP8_E4M3 = 2

ETAP_BACKEND_AUTO = 0
ETAP_BACKEND_CPU = 1
ETAP_BACKEND_CUDA = 2

INT32_MAX = 2**31 - 1


class etap_options(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_int), ("device", ctypes.c_int), ("num_threads", ctypes.c_int)]


class etap_mla_shape(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int32),
        ("seqlen_q", ctypes.c_int32),
        ("num_heads_q", ctypes.c_int32),
        ("num_heads_kv", ctypes.c_int32),
        ("head_dim_qk", ctypes.c_int32),
        ("head_dim_v", ctypes.c_int32),
        ("page_size", ctypes.c_int32),
        ("num_pages", ctypes.c_int32),
        ("max_pages_per_seq", ctypes.c_int32),
        ("dtype", ctypes.c_int),
        ("causal", ctypes.c_int32),
    ]


class etap_mla_args(ctypes.Structure):
    _fields_ = [
        ("shape", etap_mla_shape),
        ("q", ctypes.c_void_p),
        ("q_stride_batch", ctypes.c_int64),
        ("q_stride_seq", ctypes.c_int64),
        ("q_stride_head", ctypes.c_int64),
        ("kv_cache", ctypes.c_void_p),
        ("kv_stride_page", ctypes.c_int64),
        ("kv_stride_token", ctypes.c_int64),
        ("kv_stride_head", ctypes.c_int64),
        ("block_table", ctypes.c_void_p),
        ("block_table_stride", ctypes.c_int64),
        ("cache_seqlens", ctypes.c_void_p),
        ("softmax_scale", ctypes.c_float),
        ("out", ctypes.c_void_p),
        ("out_stride_batch", ctypes.c_int64),
        ("out_stride_seq", ctypes.c_int64),
        ("out_stride_head", ctypes.c_int64),
        ("lse", ctypes.c_void_p),
    ]


_P = ctypes.POINTER
_c_handle = ctypes.c_void_p
_c_status = ctypes.c_int

# name: (restype, argtypes)
_SIGNATURES = {
    "etap_version": (ctypes.c_int, []),
    "etap_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "etap_last_error_message": (ctypes.c_char_p, []),
    "etap_backend_built": (ctypes.c_int, [ctypes.c_int]),
    "etap_create": (_c_status, [_P(_c_handle), _P(etap_options)]),
    "etap_destroy": (_c_status, [_c_handle]),
    "etap_get_backend": (_c_status, [_c_handle, _P(ctypes.c_int)]),
    "etap_get_num_workers": (_c_status, [_c_handle, _P(etap_mla_shape), _P(ctypes.c_int32)]),
    "etap_plan_size": (_c_status, [_c_handle, _P(etap_mla_shape), _P(ctypes.c_size_t)]),
    "etap_plan": (_c_status, [_c_handle, _P(etap_mla_shape), ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_size_t, ctypes.c_void_p]),
    "etap_plan_check": (_c_status, [_c_handle, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]),
    "etap_workspace_size": (_c_status, [_c_handle, _P(etap_mla_shape), _P(ctypes.c_size_t)]),
    "etap_decode": (_c_status, [_c_handle, _P(etap_mla_args), ctypes.c_void_p, ctypes.c_size_t,
                                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]),
}


class _Attempt:
    __slots__ = ("where", "path", "reason")

    def __init__(self, where, path, reason):
        self.where, self.path, self.reason = where, path, reason

    def __repr__(self):
        return "%s: %s: %s" % (self.where, self.path, self.reason)


class Library:
    """The loaded libetap: the ctypes handle, where it came from, and typed functions."""

    def __init__(self, cdll, path, source, attempts):
        self.cdll = cdll
        self.path = path
        self.source = source
        self.attempts = attempts
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(cdll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        self.version = cdll.etap_version()

    def last_error(self):
        msg = self.etap_last_error_message()
        return msg.decode("utf-8", "replace") if msg else ""

    def status_string(self, status):
        s = self.etap_status_string(status)
        return s.decode("utf-8", "replace") if s else "unknown status"

    def check(self, status, what):
        """Raises EtapError for a failing status, with the library's message."""
        if status != 0:
            raise_for_status(status, "%s failed: %s (%s)"
                             % (what, self.last_error() or "no message", self.status_string(status)))

    def backend_built(self, backend):
        return bool(self.etap_backend_built(backend))


_lock = threading.Lock()
_library = None  # searched again after a failure, so that e.g. ETAP_LIBRARY can be fixed


def _package_dir():
    return os.path.dirname(os.path.abspath(__file__))


def _repo_root():
    """The etap checkout this package is imported from, or None (e.g. site-packages)."""
    root = os.path.dirname(os.path.dirname(_package_dir()))
    if os.path.isfile(os.path.join(root, "include", "etap.h")) and \
            os.path.isfile(os.path.join(root, "CMakeLists.txt")):
        return root
    return None


def _is_sanitizer_build(lib_path):
    """True for a libetap built with ETAP_SANITIZE: loading it into an uninstrumented
    Python makes the AddressSanitizer runtime abort the process (no exception to catch)."""
    cache = os.path.join(os.path.dirname(os.path.dirname(lib_path)), "CMakeCache.txt")
    try:
        with open(cache) as f:
            return any(line.strip() == "ETAP_SANITIZE:BOOL=ON" for line in f)
    except OSError:
        return False


def _build_tree_libs(root):
    found = [p for p in glob.glob(os.path.join(root, "build*", "src", "libetap.so"))
             if not _is_sanitizer_build(p)]

    def mtime(p):
        try:
            return os.path.getmtime(p)
        except OSError:
            return 0.0

    return sorted(found, key=lambda p: (-mtime(p), p))


def candidates():
    """[(where, path_or_name)] in search order; where == 'ETAP_LIBRARY' means exclusive."""
    env = os.environ.get("ETAP_LIBRARY")
    if env:
        return [("ETAP_LIBRARY", env)]
    out = []
    pkg = _package_dir()
    pkg_libs = sorted(glob.glob(os.path.join(pkg, "libetap.so")) +
                      glob.glob(os.path.join(pkg, "libetap.so.*")))
    if pkg_libs:
        out += [("package directory", p) for p in pkg_libs]
    else:
        out.append(("package directory", os.path.join(pkg, "libetap.so")))
    root = _repo_root()
    seen = set()
    if root is not None:
        libs = _build_tree_libs(root)
        if libs:
            out += [("build tree of this checkout", p) for p in libs]
            seen.update(os.path.realpath(p) for p in libs)
        else:
            out.append(("build tree of this checkout", os.path.join(root, "build*", "src", "libetap.so")))
    else:
        out.append(("build tree of this checkout",
                    "(none: the package is not inside an etap checkout, e.g. it is installed)"))
    cwd = os.getcwd()
    libs = [p for p in _build_tree_libs(cwd) if os.path.realpath(p) not in seen]
    if libs:
        out += [("build tree under the current directory", p) for p in libs]
    elif root is None or os.path.realpath(cwd) != os.path.realpath(root):
        out.append(("build tree under the current directory", os.path.join(cwd, "build*", "src", "libetap.so")))
    out.append(("system loader", "libetap.so.0"))
    out.append(("system loader", "libetap.so"))
    return out


def _try_load(where, path, attempts):
    if path.startswith("(none"):
        attempts.append(_Attempt(where, path, "skipped"))
        return None
    is_name = os.sep not in path
    if not is_name and not os.path.exists(path):
        attempts.append(_Attempt(where, path, "does not exist"))
        return None
    try:
        cdll = ctypes.CDLL(path)
    except OSError as e:
        attempts.append(_Attempt(where, path, "cannot be loaded: %s" % e))
        return None
    missing = [n for n in _SIGNATURES if not hasattr(cdll, n)]
    if missing:
        attempts.append(_Attempt(where, path, "is not libetap (missing %s)" % ", ".join(missing)))
        return None
    version = cdll.etap_version()
    major, minor = version // 10000, (version // 100) % 100
    if major != API_VERSION_MAJOR or (major == 0 and minor != API_VERSION_MINOR) or \
            (major > 0 and minor < API_VERSION_MINOR):
        attempts.append(_Attempt(where, path, "has C API version %d.%d.%d; this package needs %d.%d"
                                 % (major, minor, version % 100, API_VERSION_MAJOR, API_VERSION_MINOR)))
        return None
    if is_name:
        # Report the file the loader actually picked.
        try:
            real = _loaded_path_of(cdll)
        except Exception:  # pragma: no cover - best effort only
            real = None
        path = real or path
    attempts.append(_Attempt(where, path, "loaded"))
    return Library(cdll, os.path.abspath(path) if not is_name else path, where, attempts)


def _loaded_path_of(cdll):
    """The path of an already loaded shared object, from /proc/self/maps (Linux)."""
    addr = ctypes.cast(cdll.etap_version, ctypes.c_void_p).value
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi and len(parts) >= 6:
                return parts[5]
    return None


def load():
    """The loaded Library; searches on first use. Raises EtapLibraryError listing every
    place looked at and why each failed."""
    global _library
    lib = _library
    if lib is not None:
        return lib
    with _lock:
        if _library is not None:
            return _library
        attempts = []
        for where, path in candidates():
            lib = _try_load(where, path, attempts)
            if lib is not None:
                _library = lib
                return lib
        lines = ["libetap could not be loaded. Places tried, in order:"]
        lines += ["  - %s: %s: %s" % (a.where, a.path, a.reason) for a in attempts]
        if os.environ.get("ETAP_LIBRARY"):
            lines.append("ETAP_LIBRARY is set, so no other place was tried.")
        lines.append("Build it (cmake -S . -B build && cmake --build build) and set "
                     "ETAP_LIBRARY=/path/to/build/src/libetap.so, or copy libetap.so into the "
                     "installed etap package directory (see docs/python.md).")
        raise EtapLibraryError("\n".join(lines))

