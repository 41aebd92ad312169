"""Array backends: how a NumPy array or a torch tensor becomes an `(address,
length)` pair for the native module, and where the call runs.

- `NumpyBackend`: NumPy arrays on the CPU ports.
- `TorchBackend` (in `_torch.py`, loaded only when torch is imported): CPU
  tensors on the CPU ports, CUDA tensors on our CUDA kernels, zero-copy, on
  torch's current stream.

The native module trusts the addresses it is given (crates/python/src/lib.rs):
every array passed here is contiguous, of the dtype named, and referenced by the
caller until the native call returns. `contig` and `f32` return such arrays;
each call keeps them in local variables across the native call.
"""

import numpy as np

from . import _native

SEQ_DTYPES = {"float32", "float16", "bfloat16"}


class NumpyBackend:
    kind = "cpu"

    @staticmethod
    def dtype_name(name, a):
        dt = np.dtype(a.dtype)
        if dt == np.float32:
            return "float32"
        if dt == np.float16:
            return "float16"
        raise TypeError(
            f"argument `{name}`: dtype {dt} is not supported "
            "(float32 or float16 NumPy arrays; bfloat16 through torch)"
        )

    @staticmethod
    def asarray(name, a):
        if a is None:
            return None
        if not isinstance(a, np.ndarray):
            try:
                a = np.asarray(a)
            except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
                raise TypeError(f"argument `{name}`: not an array ({e})") from e
        return a

    @staticmethod
    def contig(name, a, dtype):
        """`a` as a C-contiguous array of `dtype` (a copy only when needed)."""
        if a is None:
            return None
        np_dtype = np.float16 if dtype == "float16" else np.float32
        if np.iscomplexobj(a):
            raise TypeError(f"argument `{name}`: complex values are not supported")
        return np.ascontiguousarray(a, dtype=np_dtype)

    @classmethod
    def f32(cls, name, a):
        return cls.contig(name, a, "float32")

    @staticmethod
    def i64(name, a):
        if a is None:
            return None
        if not np.issubdtype(np.asarray(a).dtype, np.integer):
            raise TypeError(f"argument `{name}`: expected an integer array, got {np.asarray(a).dtype}")
        return np.ascontiguousarray(a, dtype=np.int64)

    @staticmethod
    def host_i64(a):
        return np.ascontiguousarray(np.asarray(a), dtype=np.int64)

    @staticmethod
    def empty(shape, dtype):
        # Outputs start as NaN: an element the kernel failed to write cannot pass
        # a comparison (cheap next to the CPU port itself).
        return np.full(shape, np.nan, dtype=np.float16 if dtype == "float16" else np.float32)

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype=np.float16 if dtype == "float16" else np.float32)

    @staticmethod
    def raw(a):
        return (int(a.ctypes.data), int(a.size))

    @staticmethod
    def strides_elems(a):
        return tuple(s // a.itemsize for s in a.strides)

    @staticmethod
    def call(op, *args, tensors):
        getattr(_native, f"{op}_cpu")(*args, tensors)

    @staticmethod
    def check_same_device(**_tensors):
        return None

    @staticmethod
    def to_host(a):
        return np.asarray(a)

    @staticmethod
    def ssd_chunk(chunk_size):
        # The CPU port runs any chunk length; the result does not depend on it.
        return int(chunk_size)

    @staticmethod
    def take_rows(a, idx):
        return np.ascontiguousarray(a[np.asarray(idx)])

    @staticmethod
    def scatter_rows(dst, idx, src):
        dst[np.asarray(idx)] = src

    @staticmethod
    def add_rows(dst, idx, src):
        np.add.at(dst, np.asarray(idx), src)

    @staticmethod
    def state_f32(state):
        """The state as the kernels update it: float32, contiguous (a copy, written
        back by `state_writeback`, when the caller's is not)."""
        if not isinstance(state, np.ndarray):
            raise TypeError("argument `state`: expected a NumPy array (it is updated in place)")
        if state.dtype == np.float32 and state.flags.c_contiguous and state.flags.writeable:
            return state
        if not state.flags.writeable:
            raise ValueError("argument `state`: the array is read-only (it is updated in place)")
        return np.ascontiguousarray(state, dtype=np.float32)

    @staticmethod
    def state_writeback(state, st):
        if st is not state:
            state[...] = st


def raws(be, **tensors):
    """The dict of `(address, length)` the native functions take; absent tensors
    are left out."""
    return {k: be.raw(v) for k, v in tensors.items() if v is not None}
