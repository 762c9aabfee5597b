"""Uniform, checked views of numpy arrays and torch tensors (no copies, no casts).

numpy and torch are never imported here: an object can only be a numpy array or a torch
tensor if the caller already imported that library, so ``sys.modules`` is consulted.
"""

import sys

from ._errors import EtapError, EtapTypeError

HOST = ("cpu", -1)


class Bfloat16Array:
    """A numpy ``uint16`` array whose elements are bfloat16 bit patterns.

    numpy has no bfloat16 dtype, so a bf16 q / k_cache is passed on the numpy path as
    ``etap.Bfloat16Array(bits)``; ``out`` then comes back as a Bfloat16Array too.
    (numpy arrays whose dtype is named ``bfloat16``, e.g. ``ml_dtypes.bfloat16``, are
    accepted directly as well.) torch users pass ``torch.bfloat16`` tensors instead.
    """

    __slots__ = ("bits",)

    def __init__(self, bits):
        np = sys.modules.get("numpy")
        if np is None or not isinstance(bits, np.ndarray):
            raise EtapTypeError("Bfloat16Array wraps a numpy uint16 array, got %s" % type(bits).__name__)
        if bits.dtype != np.uint16:
            raise EtapTypeError("Bfloat16Array wraps a numpy uint16 array (bf16 bit patterns), "
                                "got dtype %s" % bits.dtype)
        self.bits = bits

    @property
    def shape(self):
        return self.bits.shape

    @property
    def ndim(self):
        return self.bits.ndim

    def to_float32(self):
        """The values as a new float32 numpy array (exact)."""
        np = sys.modules["numpy"]
        return (self.bits.astype(np.uint32) << 16).view(np.float32)

    @staticmethod
    def from_float32(values):
        """Rounds float32 values to bfloat16 (to nearest even; NaN stays NaN)."""
        import numpy as np

        x = np.ascontiguousarray(values, dtype=np.float32)
        u = x.view(np.uint32).astype(np.uint64)
        rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        nan = np.isnan(x)
        if nan.any():
            rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
        return Bfloat16Array(rounded)

    def __repr__(self):
        return "Bfloat16Array(shape=%s)" % (self.bits.shape,)


class Arr:
    """A checked view: library, device, dtype name, shape and strides in elements."""

    __slots__ = ("obj", "name", "kind", "device", "dtype", "shape", "strides", "ptr", "itemsize")

    def __repr__(self):
        return "<%s %s %s %s %s>" % (self.name, self.kind, self.device, self.dtype, self.shape)


_NUMPY_DTYPES = {}


def _numpy_dtype_name(np, dt):
    name = _NUMPY_DTYPES.get(dt)
    if name is not None:
        return name
    if dt.name == "bfloat16":
        name = "bf16"
    elif not dt.isnative:
        name = "%s (non-native byte order)" % dt.str
    elif dt == np.float16:
        name = "fp16"
    elif dt == np.int32:
        name = "int32"
    elif dt == np.uint8:
        name = "uint8"
    else:
        name = dt.name
    if len(_NUMPY_DTYPES) < 256:
        _NUMPY_DTYPES[dt] = name
    return name


_TORCH_DTYPES = None


def _torch_dtype_name(torch, dt):
    global _TORCH_DTYPES
    if _TORCH_DTYPES is None:
        names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "int32", torch.uint8: "uint8"}
        fp8 = getattr(torch, "float8_e4m3fn", None)
        if fp8 is not None:
            names[fp8] = "fp8_e4m3"
        _TORCH_DTYPES = names
    return _TORCH_DTYPES.get(dt, str(dt).replace("torch.", ""))


def view(x, name):
    """An Arr for a numpy array, a Bfloat16Array or a torch tensor; EtapTypeError otherwise."""
    a = Arr()
    a.obj = x
    a.name = name
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise EtapTypeError("%s is a %s tensor: only dense (strided) tensors are supported"
                                % (name, x.layout))
        dev = x.device
        if dev.type == "cuda":
            a.device = ("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        elif dev.type == "cpu":
            a.device = HOST
        else:
            raise EtapError("%s is on device %s: etap runs on CUDA and CPU tensors only" % (name, dev))
        if x.is_neg() or x.is_conj():
            raise EtapError("%s is a lazily negated/conjugated view: materialise it first "
                            "(etap does not copy)" % name)
        a.kind = "torch"
        a.dtype = _torch_dtype_name(torch, x.dtype)
        a.shape = tuple(x.shape)
        a.strides = tuple(x.stride())
        a.itemsize = x.element_size()
        a.ptr = x.data_ptr()
        if a.ptr % a.itemsize:
            raise EtapError("%s is not aligned to its element size" % name)
        return a
    np = sys.modules.get("numpy")
    is_bf16_bits = isinstance(x, Bfloat16Array)
    arr = x.bits if is_bf16_bits else x
    if np is not None and isinstance(arr, np.ndarray):
        a.kind = "numpy"
        a.device = HOST
        a.dtype = "bf16" if is_bf16_bits else _numpy_dtype_name(np, arr.dtype)
        a.shape = arr.shape
        a.itemsize = arr.itemsize
        if not arr.flags.aligned:
            raise EtapError("%s is not aligned to its element size" % name)
        strides = []
        for s in arr.strides:
            if s % arr.itemsize:
                raise EtapError("%s has a stride of %d bytes, not a multiple of its element size %d"
                                % (name, s, arr.itemsize))
            strides.append(s // arr.itemsize)
        a.strides = tuple(strides)
        a.ptr = arr.ctypes.data
        return a
    raise EtapTypeError("%s must be a numpy array or a torch tensor, got %s"
                        % (name, type(x).__module__ + "." + type(x).__name__))


def require_dtype(a, allowed, what):
    if a.dtype not in allowed:
        raise EtapTypeError("%s has dtype %s: it must be %s (etap never casts)" % (a.name, a.dtype, what))


def require_ndim(a, ndim, layout):
    if len(a.shape) != ndim:
        raise EtapError("%s has shape %s: it must be %d-dimensional, %s"
                        % (a.name, list(a.shape), ndim, layout))


def require_last_contiguous(a):
    if a.shape and a.shape[-1] > 1 and a.strides[-1] != 1:
        raise EtapError("%s has a last-dimension stride of %d elements: the last dimension must be "
                        "contiguous (stride 1); etap does not copy" % (a.name, a.strides[-1]))


def require_contiguous_1d(a):
    if len(a.shape) == 1 and a.shape[0] > 1 and a.strides[0] != 1:
        raise EtapError("%s has stride %d: it must be contiguous (stride 1); etap does not copy"
                        % (a.name, a.strides[0]))


def require_nonnegative_strides(a):
    for d, s in enumerate(a.strides):
        if s < 0:
            raise EtapError("%s has a negative stride (%d elements) in dimension %d: not supported"
                            % (a.name, s, d))
