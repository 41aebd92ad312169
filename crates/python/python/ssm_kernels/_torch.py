"""PyTorch tensors: CPU tensors on the CPU ports, CUDA tensors on our CUDA
kernels, zero-copy, enqueued on torch's current stream of the tensors' device.
Each function is a `torch.autograd.Function` whose backward runs our backward
kernels (deterministic: no atomics, bit-identical reruns).

Tensors are passed to the native module by address (`data_ptr()`); every
tensor passed is contiguous (made so on the device when it is not), of the
dtype named, and referenced here until the native call has enqueued its work.
Torch's caching allocator orders memory reuse on the tensor's stream, and all
our work runs on the current stream, so no synchronisation is needed. The
exceptions: `seq_idx` and the SSD's `cu_seqlens` are read on the host (the
kernels' work tables are built from them), and a varlen scan waits for its
kernel to report malformed offsets.

Outputs are allocated with `torch.empty`; `SSM_KERNELS_POISON=1` fills them with
NaN first (the GPU tests set it), so an element a kernel fails to write shows.
"""

import os

import torch

from . import _impl
from . import _library
from . import _native

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_TORCH = {v: k for k, v in _DTYPES.items()}
_POISON = os.environ.get("SSM_KERNELS_POISON", "0") == "1"


class TorchBackend:
    """The array backend of `_impl` for torch tensors on one device."""

    def __init__(self, device):
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "cpu"
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"tensors on {device} are not supported (CPU or CUDA)")

    def _tensor(self, name, t):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"argument `{name}`: expected a torch.Tensor, got {type(t).__name__}")
        if t.device != self.device:
            raise ValueError(
                f"argument `{name}`: on {t.device}, but the call runs on {self.device} "
                "(tensors are never moved between devices)"
            )
        if t.is_complex():
            raise TypeError(f"argument `{name}`: complex tensors are not supported")
        return t

    def dtype_name(self, name, t):
        try:
            return _DTYPES[t.dtype]
        except KeyError:
            raise TypeError(
                f"argument `{name}`: dtype {t.dtype} is not supported (float32, float16 or bfloat16)"
            ) from None

    def _aligned(self, t):
        # The kernels read rows with 16-byte vector loads (and the decode kernels
        # check it): a contiguous view at an odd offset of a larger tensor is
        # copied to a fresh (aligned) allocation instead of being refused.
        if self.kind == "cuda" and t.data_ptr() % 16 != 0:
            return t.clone()
        return t

    def contig(self, name, t, dtype):
        """`t` as a contiguous, 16-byte aligned tensor of `dtype` on this device,
        detached (a copy only when one of those does not hold already)."""
        if t is None:
            return None
        self._tensor(name, t)
        want = _TORCH[dtype]
        if t.dtype is not want:
            t = t.detach().to(want)
        if not t.is_contiguous():
            t = t.detach().contiguous()
        return self._aligned(t.detach() if t.requires_grad else t)

    def f32(self, name, t):
        return self.contig(name, t, "float32")

    def i64(self, name, t):
        if t is None:
            return None
        t = self._tensor(name, t).detach()
        if t.is_floating_point():
            raise TypeError(f"argument `{name}`: expected an integer tensor, got {t.dtype}")
        return self._aligned(t.to(torch.int64).contiguous())

    def to_host(self, t):
        if isinstance(t, torch.Tensor):
            return t.detach().cpu().numpy()
        return t

    def ssd_chunk(self, chunk_size):
        # CPU: the port's chunk (any length; results do not depend on it).
        # CUDA: the forward picks its own; the backward uses 64 (its default).
        return int(chunk_size) if self.kind == "cpu" else 64

    def empty(self, shape, dtype):
        if _POISON:
            return torch.full(shape, float("nan"), dtype=_TORCH[dtype], device=self.device)
        return torch.empty(shape, dtype=_TORCH[dtype], device=self.device)

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=_TORCH[dtype], device=self.device)

    @staticmethod
    def raw(t):
        return (int(t.data_ptr()), int(t.numel()))

    @staticmethod
    def strides_elems(t):
        return tuple(t.stride())

    def _idx(self, idx):
        return torch.as_tensor(idx, dtype=torch.int64, device=self.device)

    def take_rows(self, a, idx):
        return a.index_select(0, self._idx(idx)).contiguous()

    def scatter_rows(self, dst, idx, src):
        dst[self._idx(idx)] = src

    def add_rows(self, dst, idx, src):
        dst.index_add_(0, self._idx(idx), src)

    def check_same_device(self, **tensors):
        for name, t in tensors.items():
            if t is not None:
                self._tensor(name, t)

    def state_f32(self, state):
        state = self._tensor("state", state)
        if state.dtype == torch.float32 and state.is_contiguous() and (
                self.kind == "cpu" or state.data_ptr() % 16 == 0):
            return state
        return state.detach().to(torch.float32).contiguous().clone()

    @staticmethod
    def state_writeback(state, st):
        if st is not state:
            with torch.no_grad():
                state.copy_(st)

    def call(self, op, *args, tensors):
        if self.kind == "cpu":
            getattr(_native, f"{op}_cpu")(*args, tensors)
            return
        current = torch.cuda.current_device()
        index = self.device.index if self.device.index is not None else current
        stream = torch.cuda.current_stream(index).cuda_stream
        fn = getattr(_native, f"{op}_cuda")
        if index == current:
            fn(index, int(stream), *args, tensors)
        else:
            # The native side makes the device's primary context current; torch's
            # device guard puts the caller's device back afterwards.
            with torch.cuda.device(index):
                fn(index, int(stream), *args, tensors)


def _backend_of(*tensors):
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return TorchBackend(t.device)
    raise TypeError("expected torch tensors")


def _grad_like(g, t):
    """A gradient for input `t` (None when t is None or needs none), in t's dtype."""
    if g is None or t is None:
        return None
    return g.to(t.dtype) if g.dtype != t.dtype else g


# ------------------------------------------------------------------ Mamba-1 scan


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                initial_states, cu_seqlens):
        be = _backend_of(u)
        call = _impl.ScanCall(be, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                              return_last_state, initial_states, cu_seqlens)
        out, last = call.forward()
        ctx.call = call
        ctx.inputs = (u, delta, A, B, C, D, z, delta_bias, initial_states)
        ctx.return_last_state = return_last_state
        if return_last_state:
            return out, last
        return out

    @staticmethod
    def backward(ctx, d_out, d_last=None):
        call = ctx.call
        g = call.backward(d_out, d_last)
        u, delta, A, B, C, D, z, delta_bias, h0 = ctx.inputs
        grads = (
            _grad_like(g["du"], u),
            _grad_like(g["ddelta"], delta),
            _grad_like(g["dA"], A),
            _grad_like(g["dB"], B),
            _grad_like(g["dC"], C),
            _grad_like(g["dD"], D),
            _grad_like(g["dz"], z),
            _grad_like(g["ddelta_bias"], delta_bias),
            None,
            None,
            _grad_like(g["dinitial_states"], h0),
            None,
        )
        ctx.call = None
        return grads


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _compiling():
    return torch.compiler.is_compiling()


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, initial_states=None, cu_seqlens=None):
    if cu_seqlens is None and _compiling():
        return _library.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                       return_last_state, initial_states)
    if _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_states):
        return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, initial_states, cu_seqlens)
    return _impl.selective_scan(_backend_of(u), u, delta, A, B, C, D, z, delta_bias,
                                delta_softplus, return_last_state, initial_states, cu_seqlens)


# ------------------------------------------------------------------ Mamba-2 SSD


class ChunkScanCombinedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                cu_seqlens, dt_softplus, dt_limit, return_final_states, return_varlen_states):
        be = _backend_of(x)
        call = _impl.SsdCall(be, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                             seq_idx, cu_seqlens, dt_softplus, dt_limit, return_final_states,
                             return_varlen_states)
        out, final, varlen = call.forward()
        ctx.call = call
        ctx.inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        ctx.outs = (return_final_states, return_varlen_states)
        return _impl.pack_ssd(out, final, varlen, return_final_states, return_varlen_states)

    @staticmethod
    def backward(ctx, d_out, *rest):
        want_final, want_varlen = ctx.outs
        rest = list(rest)
        d_final = rest.pop(0) if want_final else None
        d_varlen = rest.pop(0) if want_varlen else None
        g = ctx.call.backward(d_out, d_final, d_varlen)
        x, dt, A, B, C, D, z, dt_bias, h0 = ctx.inputs
        ctx.call = None
        return (
            _grad_like(g["dx"], x),
            _grad_like(g["ddt"], dt),
            _grad_like(g["dA"], A),
            _grad_like(g["dB"], B),
            _grad_like(g["dC"], C),
            None,
            _grad_like(g["dD"], D),
            _grad_like(g["dz"], z),
            _grad_like(g["ddt_bias"], dt_bias),
            _grad_like(g["dinitial_states"], h0),
            None, None, None, None, None, None,
        )


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None,
                              dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False):
    if seq_idx is None and cu_seqlens is None and not return_varlen_states and _compiling():
        return _library.chunk_scan(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus,
                                   dt_limit, return_final_states)
    if _needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return ChunkScanCombinedFn.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                         initial_states, seq_idx, cu_seqlens, dt_softplus,
                                         tuple(dt_limit), return_final_states,
                                         return_varlen_states)
    return _impl.chunk_scan_combined(_backend_of(x), x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                     initial_states, seq_idx, cu_seqlens, dt_softplus, dt_limit,
                                     return_final_states, return_varlen_states)


# ------------------------------------------------------------------ decode steps


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    # Decode steps are inference: no autograd (mamba_ssm's has none either); every
    # input is detached on conversion and the state is written in place.
    return _impl.state_update(_backend_of(state), state, x, dt, A, B, C, D, z, dt_bias,
                              dt_softplus, state_batch_indices)
