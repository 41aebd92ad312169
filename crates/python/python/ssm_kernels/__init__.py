"""ssm_kernels: the Mamba-1 selective scan, the Mamba-2 SSD and both decode steps,
with mamba_ssm's signatures and semantics, checked against an f64 oracle.

NumPy arrays (float32, float16) run on the CPU ports. PyTorch tensors, when torch
is installed: CPU tensors on the CPU ports, CUDA tensors on our CUDA kernels,
zero-copy on torch's current stream, differentiable through our deterministic
backward kernels (`torch.autograd.Function`). Wrong shapes, dtypes and devices
raise `ValueError` / `TypeError` naming the argument.

    from ssm_kernels import selective_scan_fn, mamba_chunk_scan_combined, selective_state_update
"""

from . import _native
from . import _impl
from ._backend import NumpyBackend

__all__ = [
    "selective_scan_fn",
    "mamba_chunk_scan_combined",
    "selective_state_update",
    "build_info",
]

build_info = _native.build_info


def _is_torch(*tensors):
    for t in tensors:
        if t is not None and type(t).__module__.startswith("torch"):
            return True
    return False


_TORCH_OPS = None


def _torch_ops():
    # Imported on first use: the package itself never imports torch.
    global _TORCH_OPS
    if _TORCH_OPS is None:
        import importlib

        _TORCH_OPS = importlib.import_module("._torch", __name__)
    return _TORCH_OPS


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, initial_states=None, cu_seqlens=None):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_fn.

    u, delta, z: (b, D, L); A: (D, N) real; B, C: (D, N), (b, N, L) or (b, G, N, L);
    D, delta_bias: (D). Returns out (b, D, L) in u's dtype, and with
    return_last_state the final state (b, D, N) float32.
    Extras (keyword-only): initial_states (b, D, N) f32, or (num_seqs, D, N) with
    cu_seqlens (num_seqs + 1, int64, batch 1) for packed variable-length input."""
    if _is_torch(u, delta, A, B, C):
        return _torch_ops().selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          return_last_state, initial_states=initial_states,
                                          cu_seqlens=cu_seqlens)
    be = NumpyBackend
    a = lambda n, t: be.asarray(n, t)  # noqa: E731
    return _impl.selective_scan(be, a("u", u), a("delta", delta), a("A", A), a("B", B), a("C", C),
                                a("D", D), a("z", z), a("delta_bias", delta_bias), delta_softplus,
                                return_last_state, a("initial_states", initial_states),
                                a("cu_seqlens", cu_seqlens))


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None,
                              dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False):
    """mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined.

    x, z: (b, L, H, P); dt: (b, L, H); A, dt_bias: (H); B, C: (b, L, G, N);
    D: (H) or (H, P); initial_states: (b, H, P, N) (or per sequence,
    (num_seqs, H, P, N), with cu_seqlens); seq_idx: (b, L); cu_seqlens:
    (num_seqs + 1). Returns out, (out, final_states), (out, varlen_states) or
    (out, final_states, varlen_states) as mamba_ssm does. `chunk_size` is
    accepted for compatibility; results do not depend on it (our kernels pick
    their own). Sequences are separated by seq_idx (the state resets where it
    changes) or, without seq_idx, by cu_seqlens."""
    if _is_torch(x, dt, A, B, C):
        return _torch_ops().mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
            dt_softplus, dt_limit, return_final_states, return_varlen_states)
    be = NumpyBackend
    a = lambda n, t: be.asarray(n, t)  # noqa: E731
    return _impl.chunk_scan_combined(
        be, a("x", x), a("dt", dt), a("A", A), a("B", B), a("C", C), chunk_size, a("D", D),
        a("z", z), a("dt_bias", dt_bias), a("initial_states", initial_states),
        a("seq_idx", seq_idx), a("cu_seqlens", cu_seqlens), dt_softplus, dt_limit,
        return_final_states, return_varlen_states)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    """mamba_ssm.ops.triton.selective_state_update.selective_state_update.

    state: (batch, dim, dstate) or (batch, nheads, dim, dstate), updated in place;
    x, dt, z: (batch, dim) or (batch, nheads, dim); A: (dim, dstate) or
    (nheads, dim, dstate); B, C: (batch, dstate) or (batch, ngroups, dstate);
    D, dt_bias: (dim) or (nheads, dim); state_batch_indices: (batch) rows of the
    state cache (negative: padding). Returns out like x."""
    if _is_torch(state, x, dt, A, B, C):
        return _torch_ops().selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                               state_batch_indices)
    be = NumpyBackend
    a = lambda n, t: be.asarray(n, t)  # noqa: E731
    return _impl.state_update(be, state, a("x", x), a("dt", dt), a("A", A), a("B", B), a("C", C),
                              a("D", D), a("z", z), a("dt_bias", dt_bias), dt_softplus,
                              a("state_batch_indices", state_batch_indices))
